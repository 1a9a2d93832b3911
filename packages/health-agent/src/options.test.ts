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
    // Both, agreeing: fine.
    expect(
      resolveAgentOptions({ backendId: 'b', cron: '*/5 * * * * *', intervalMs: 5000 }).intervalMs,
    ).toBe(5000);
  });

  describe('an uneven cron schedule', () => {
    afterEach(() => jest.useRealTimers());
    it.each(['00:00:02', '00:00:05', '00:00:47', '00:00:59', '23:59:55'])(
      'reports its longest gap, started at %s, and bounds a sample by its shortest',
      (start) => {
        jest.useFakeTimers({ now: new Date(`2026-12-06T${start}.000Z`) });
        // Runs at :00 and :10: gaps of 10 s and 50 s. From the next two runs it said 50 s
        // started at :00-:09 and 10 s at :10-:59; gateways then judged it stale for 40 s.
        const o = resolveAgentOptions({
          backendId: 'b',
          cron: '0,10 * * * * *',
          probe: { url: 'http://127.0.0.1/healthz', timeoutMs: 60_000 },
        });
        expect(o.intervalMs).toBe(50_000);
        expect(o.probe?.timeoutMs).toBe(9_000);
        // 7 s gaps, and 4 s across the minute.
        expect(resolveAgentOptions({ backendId: 'b', cron: '*/7 * * * * *' }).intervalMs).toBe(
          7_000,
        );
      },
    );
  });

  it('refuses an interval that contradicts the cron schedule: reports would claim the wrong one', () => {
    // Reports every 5 s that said 1 s looked stale to gateways 40% of the time.
    expect(() =>
      resolveAgentOptions({ backendId: 'b', cron: '*/5 * * * * *', intervalMs: 1000 }),
    ).toThrow(expect.objectContaining({ code: 'LW_AGENT_INVALID_OPTION', option: 'intervalMs' }));
  });

  it('gives the probe and an HTTP queue source at most 90% of the interval, so a hung app cannot skip a report', () => {
    const o = resolveAgentOptions({
      backendId: 'b',
      intervalMs: 1000,
      probe: { url: 'http://127.0.0.1:1/healthz', timeoutMs: 30_000 },
      queue: { source: 'tracker', url: 'http://127.0.0.1:1/stats', timeoutMs: 5000 },
    });
    expect(o.probe?.timeoutMs).toBe(900);
    expect(o.queue).toMatchObject({ timeoutMs: 900 });
    // Shorter ones are kept as given.
    const short = resolveAgentOptions({
      backendId: 'b',
      intervalMs: 5000,
      probe: { url: 'http://127.0.0.1:1/healthz', timeoutMs: 300 },
    });
    expect(short.probe?.timeoutMs).toBe(300);
  });

  it.each<[string, Partial<AgentOptions>]>([
    ['backendId', { backendId: 'a/b' }],
    ['prefix', { prefix: 'a/#' }],
    ['serviceName', { serviceName: 'a/b' }],
    ['broker.url', { broker: { url: 'http://x' } }],
    ['broker.url', { broker: { url: 'not a url' } }],
    ['broker.cert', { broker: { url: 'mqtts://x', cert: 'PEM' } }],
    // TLS options beside a clear-text URL were ignored (the password went in clear text).
    ['broker.ca', { broker: { url: 'mqtt://x', ca: 'PEM' } }],
    ['broker.rejectUnauthorized', { broker: { url: 'ws://x', rejectUnauthorized: true } }],
    // A file name for its contents: an empty trust store, found at the connection.
    ['broker.ca', { broker: { url: 'mqtts://x', ca: '/etc/ssl/ca.pem' } }],
    // MQTT 3.1.1 sends no password without a username: the broker closed the connection.
    ['broker.password', { broker: { url: 'mqtt://x', password: 'p' } }],
    ['broker.password', { broker: { url: 'mqtt://:p@x', password: 'p' } }],
    // mqtt.js takes the URL's clientId over the agent's: two agents from one URL collide.
    ['broker.url', { broker: { url: 'mqtt://x?clientId=a' } }],
    ['intervalMs', { intervalMs: 50 }],
    // Past 2^31 - 1 ms Node fires the timer after 1 ms: a reconnect every millisecond.
    ['broker.reconnectPeriodMs', { broker: { url: 'mqtt://x', reconnectPeriodMs: 2 ** 31 } }],
    ['cron', { cron: 'every second' }],
    ['jitterMs', { jitterMs: -1 }],
    ['service', { service: { pid: 1, pidFile: '/run/x.pid' } }],
    ['queue.url', { queue: { source: 'tracker', url: 'ftp://x' } }],
    ['queue.port', { queue: { source: 'kernel', port: 70000 } }],
    [
      'queue.gauge',
      { queue: { source: 'prometheus', url: 'http://x/metrics', gauge: 'bad-name' } },
    ],
    [
      'queue.field',
      { queue: { source: 'prometheus', url: 'http://x/', gauge: 'g', field: 'depth' as never } },
    ],
    [
      'queue.maxBytes',
      { queue: { source: 'prometheus', url: 'http://x/', gauge: 'g', maxBytes: 1 } },
    ],
    ['probe.url', { probe: { url: '/healthz' } }],
    ['probe.expectStatus', { probe: { url: 'http://x/', expectStatus: [] } }],
    ['thresholds.cpuUtilization', { thresholds: { cpuUtilization: 1.5 } }],
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
    expect((err as AgentError).message.startsWith(`LW_AGENT_INVALID_OPTION: ${name}: `)).toBe(true);
    expect((err as AgentError).option).toBe(name);
  });

  it('takes a password with the user in the broker URL (mqtt.js sends it as the username)', () => {
    const o = resolveAgentOptions({
      backendId: 'b',
      broker: { url: 'mqtt://alice@x:1883', password: 'p' },
    });
    expect(o.broker?.password).toBe('p');
  });

  it.each(['mqtt://', 'mqtt:///', 'mqtts://', 'tcp://', 'mqtt:broker.internal:1883'])(
    'refuses the broker URL %j: it has no host, and mqtt.js connected to localhost:1883',
    (url) => {
      expect(() => resolveAgentOptions({ backendId: 'b', broker: { url } })).toThrow(
        `LW_AGENT_INVALID_OPTION: broker.url: has no host: "${url}"`,
      );
    },
  );

  it('never shows the password of a broker URL that does not parse', () => {
    expect(() =>
      resolveAgentOptions({ backendId: 'b', broker: { url: 'mqtt://u:S3CRET@host:99999' } }),
    ).toThrow('is not a URL: "mqtt://***@host:99999"');
  });

  it.each<[unknown, string]>([
    [{ qeue: {}, intervalMS: 5 }, 'unknown option qeue (did you mean queue?)'],
    [{ intervalMS: 5 }, 'unknown option intervalMS (did you mean intervalMs?)'],
    [
      { queue: { source: 'kernel', prot: 80 } },
      'unknown option queue.prot (did you mean queue.port?)',
    ],
    [
      { queue: { source: 'tracker', url: 'http://x/', timeoutMS: 5 } },
      'unknown option queue.timeoutMS (did you mean queue.timeoutMs?)',
    ],
    [
      { probe: { url: 'http://x/', expectStatuses: [200] } },
      'unknown option probe.expectStatuses (did you mean probe.expectStatus?)',
    ],
    [
      { thresholds: { cpuUtilisation: 0.5 } },
      'unknown option thresholds.cpuUtilisation (did you mean thresholds.cpuUtilization?)',
    ],
    [
      { service: { pidfile: '/run/x.pid' } },
      'unknown option service.pidfile (did you mean service.pidFile?)',
    ],
    [
      { broker: { url: 'mqtt://x', keepaliveSec: 5 } },
      'unknown option broker.keepaliveSec (did you mean broker.keepaliveS?)',
    ],
    [{ cgroup: { rot: '/x' } }, 'unknown option cgroup.rot (did you mean cgroup.root?)'],
    [{ totallyDifferent: 1 }, 'unknown option totallyDifferent'],
  ])(
    'rejects an unknown key at any depth, with its path and the nearest known key: %j',
    (extra, text) => {
      let err: unknown;
      try {
        resolveAgentOptions({ backendId: 'b', ...(extra as object) } as AgentOptions);
      } catch (e) {
        err = e;
      }
      expect(err).toBeInstanceOf(AgentError);
      expect((err as AgentError).code).toBe('LW_AGENT_INVALID_OPTION');
      expect((err as AgentError).message).toBe(`LW_AGENT_INVALID_OPTION: ${text}`);
    },
  );

  it('refuses an advertiseUrl that names its host: gateways admit IP literals only', () => {
    const signingKey = { keyId: 'k', secret: Buffer.alloc(32, 1) };
    expect(() =>
      resolveAgentOptions({
        backendId: 'b',
        signingKey,
        advertiseUrl: 'http://app.internal:8080',
      }),
    ).toThrow('advertiseUrl: must name its host by IP address');
    // Port 0: no server listens there, and gateways refuse the registration.
    expect(() =>
      resolveAgentOptions({ backendId: 'b', signingKey, advertiseUrl: 'http://10.0.0.5:0' }),
    ).toThrow('advertiseUrl: must not name port 0');
    // What every gateway refuses whatever its ranges: the agent ran, and every report of its
    // backend was dropped as unknown (a review of discovery; HOST=0.0.0.0 copied).
    const refused: [string, string][] = [
      ['http://0.0.0.0:3000', 'not an unspecified one'],
      ['http://[::]:3000', 'not an unspecified one'],
      ['http://[::ffff:10.0.0.5]:3000', 'not IPv4-mapped'],
      ['http://10.0.0.5:3000/?x=1', 'query or a fragment'],
      ['http://10.0.0.5:3000/#f', 'query or a fragment'],
    ];
    for (const [url, why] of refused) {
      expect(() => resolveAgentOptions({ backendId: 'b', signingKey, advertiseUrl: url })).toThrow(
        why,
      );
    }
    for (const url of ['http://10.0.0.5:8080', 'http://[fd00::5]:8080']) {
      expect(
        resolveAgentOptions({ backendId: 'b', signingKey, advertiseUrl: url }).advertiseUrl,
      ).toBe(url);
    }
  });

  it('names the library path, never a CLI name, in a library error', () => {
    expect(() =>
      resolveAgentOptions({ backendId: 'b', queue: { source: 'kernel', port: 0 } }),
    ).toThrow('LW_AGENT_INVALID_OPTION: queue.port: must be an integer from 1 to 65535, got 0');
    expect(() =>
      resolveAgentOptions({ backendId: 'b', queue: { source: 'kafka' } as never }),
    ).toThrow('queue.source: must be tracker, kernel or prometheus, got "kafka"');
    expect(() => resolveAgentOptions({ backendId: 'b', cgroup: 5 as never })).toThrow(
      'cgroup: must be a boolean or an object, got 5',
    );
  });
});
