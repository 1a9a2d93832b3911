import { AgentError } from './errors';
import { resolveAgentOptions, type AgentOptions } from './options';

describe('resolveAgentOptions', () => {
  it('applies defaults', () => {
    const o = resolveAgentOptions({ backendId: 'b', random: () => 0.5 });
    expect(o).toMatchObject({
      prefix: 'loadwise',
      intervalMs: 1000,
      offsetMs: 500,
      hostSource: 'proc',
      cgroup: { root: '/sys/fs/cgroup' },
      procRoot: '/proc',
      drainGraceMs: 2000,
      early: { rise: 2, minGapMs: 300 },
      thresholds: { cpuUtilization: 0.9, memoryUtilization: 0.9, queueFull: true },
    });
  });

  it('turns early reports off with earlyRise 0', () => {
    expect(resolveAgentOptions({ backendId: 'b', earlyRise: 0 }).early).toBeUndefined();
    expect(resolveAgentOptions({ backendId: 'b', earlyRise: 4, earlyMinGapMs: 20 }).early).toEqual({
      rise: 4,
      minGapMs: 20,
    });
  });

  it("puts the gateway service's topics under <prefix>/<serviceName>", () => {
    expect(resolveAgentOptions({ backendId: 'b', serviceName: 'users' }).prefix).toBe(
      'loadwise/users',
    );
    expect(
      resolveAgentOptions({ backendId: 'b', prefix: 'acme', serviceName: 'orders' }).prefix,
    ).toBe('acme/orders');
  });

  it('derives the reported interval from a cron expression', () => {
    expect(resolveAgentOptions({ backendId: 'b', cron: '*/5 * * * * *' }).intervalMs).toBe(5000);
    expect(resolveAgentOptions({ backendId: 'b', cron: '0 * * * * *' }).intervalMs).toBe(60000);
  });

  it.each<[string, Partial<AgentOptions>]>([
    ['backendId', { backendId: 'a/b' }],
    ['prefix', { prefix: 'a/#' }],
    ['serviceName', { serviceName: 'a/b' }],
    ['broker', { broker: { url: 'http://x' } }],
    ['broker', { broker: { url: 'not a url' } }],
    ['cert', { broker: { url: 'mqtts://x', cert: 'PEM' } }],
    ['intervalMs', { intervalMs: 50 }],
    ['cron', { cron: 'every second' }],
    ['jitterMs', { jitterMs: -1 }],
    ['servicePid', { service: { pid: 1, pidFile: '/run/x.pid' } }],
    ['trackerUrl', { queue: { source: 'tracker', url: 'ftp://x' } }],
    ['kernelPort', { queue: { source: 'kernel', port: 70000 } }],
    [
      'prometheusGauge',
      { queue: { source: 'prometheus', url: 'http://x/metrics', gauge: 'bad-name' } },
    ],
    [
      'prometheusField',
      { queue: { source: 'prometheus', url: 'http://x/', gauge: 'g', field: 'depth' as never } },
    ],
    ['probeUrl', { probe: { url: '/healthz' } }],
    ['probeExpectStatus', { probe: { url: 'http://x/', expectStatus: [] } }],
    ['cpuThreshold', { thresholds: { cpuUtilization: 1.5 } }],
    ['hostSource', { hostSource: 'wmi' as never }],
    ['concurrencyLimit', { concurrencyLimit: 0 }],
    ['drainGraceMs', { drainGraceMs: 1.5 }],
    ['earlyRise', { earlyRise: -1 }],
    ['earlyRise', { earlyRise: 1.5 }],
    ['earlyMinGapMs', { earlyMinGapMs: 5 }],
    ['earlyMinGapMs', { earlyMinGapMs: 60_001 }],
    ['signingKey', { signingKey: { keyId: 'k', secret: Buffer.alloc(4) } }],
  ])('rejects a bad %s', (name, bad) => {
    let err: unknown;
    try {
      resolveAgentOptions({ backendId: 'b', ...bad } as AgentOptions);
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(AgentError);
    expect((err as AgentError).code).toBe('LW_AGENT_INVALID_OPTION');
    expect((err as AgentError).message).toMatch(new RegExp(`^LW_AGENT_INVALID_OPTION: ${name}: `));
  });
});
