import { DEFAULT_THRESHOLDS, healthVerdict } from './verdict';

const host = (cpu: number, mem: number) => ({
  cpuUtilization: cpu,
  memoryUtilization: mem,
  memoryAvailableBytes: 1,
});

describe('healthVerdict', () => {
  it.each([
    ['all fine', { host: host(0.2, 0.3) }, undefined, [], undefined, 'up', undefined],
    [
      'host CPU at the threshold',
      { host: host(0.9, 0.3) },
      undefined,
      [],
      undefined,
      'degraded',
      'host CPU 90%',
    ],
    [
      'host memory',
      { host: host(0.1, 0.95) },
      undefined,
      [],
      undefined,
      'degraded',
      'host memory 95%',
    ],
    [
      'cgroup memory',
      { host: host(0.1, 0.1), cgroup: { memoryUtilization: 0.92 } },
      undefined,
      [],
      undefined,
      'degraded',
      'cgroup memory 92%',
    ],
    [
      'queue full',
      { host: host(0.1, 0.1), queue: { queued: 8, source: {} } },
      undefined,
      [],
      8,
      'degraded',
      'request queue full (8)',
    ],
    [
      'queue not full',
      { host: host(0.1, 0.1), queue: { queued: 7, source: {} } },
      undefined,
      [],
      8,
      'up',
      undefined,
    ],
    [
      'probe fails',
      { host: host(0.99, 0.99) },
      { ok: false, status: 500, latencyMs: 3, reason: 'probe answered 500' },
      [],
      undefined,
      'down',
      'probe answered 500',
    ],
    [
      'process gone',
      { host: host(0.1, 0.1) },
      { ok: true, status: 200 },
      ['process 7 is not running'],
      undefined,
      'down',
      'process 7 is not running',
    ],
  ] as const)('%s', (_name, m, probe, down, maxQueue, verdict, reason) => {
    const r = healthVerdict(m, DEFAULT_THRESHOLDS, probe, down, maxQueue);
    expect(r.verdict).toBe(verdict);
    expect(r.reason).toBe(reason);
  });

  it('names what made the verdict degraded (health.causes), each cause once', () => {
    const v = (m: Parameters<typeof healthVerdict>[0], maxQueue?: number) =>
      healthVerdict(m, DEFAULT_THRESHOLDS, undefined, [], maxQueue);
    expect(v({ host: host(0.95, 0.1), cgroup: { cpuUtilization: 1 } })).toEqual({
      verdict: 'degraded',
      reason: 'host CPU 95%; cgroup CPU 100%',
      causes: ['cpu'],
    });
    expect(
      v(
        {
          host: host(0.1, 0.95),
          cgroup: { cpuUtilization: 0.92 },
          queue: { queued: 8, source: {} },
        },
        8,
      ).causes,
    ).toEqual(['cpu', 'memory', 'queue']);
    expect(v({ host: host(0.1, 0.1) }).causes).toBeUndefined();
  });

  it("takes a tracker's maxQueue only as a count: 0.5 or true is no bound", () => {
    const m = { host: host(0.1, 0.1), queue: { queued: 1, source: {} } };
    for (const bad of [0.5, true, '1', -1, Number.NaN, 1e300])
      expect(healthVerdict(m, DEFAULT_THRESHOLDS, undefined, [], bad as number).verdict).toBe('up');
    expect(healthVerdict(m, DEFAULT_THRESHOLDS, undefined, [], 1).verdict).toBe('degraded');
  });

  it('carries probe status and latency, and cuts reasons to 200 characters', () => {
    const r = healthVerdict(
      { host: host(0, 0) },
      DEFAULT_THRESHOLDS,
      { ok: true, status: 204, latencyMs: 1.5 },
      [],
      undefined,
    );
    expect(r).toEqual({ verdict: 'up', probeStatus: 204, probeLatencyMs: 1.5 });
    const long = healthVerdict(
      { host: host(0, 0) },
      DEFAULT_THRESHOLDS,
      undefined,
      ['x'.repeat(500)],
      undefined,
    );
    expect(long.reason).toHaveLength(200);
  });
});
