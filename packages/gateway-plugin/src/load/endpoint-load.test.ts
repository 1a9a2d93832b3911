import type { MetricsReport } from '@loadwise/protocol';
import { GatewayError } from '../errors';
import { COHORT_CLAIM_RATIO } from './capacity';
import { createLoadCohort } from './cohort';
import { createEndpointLoad, expectedExcess } from './endpoint-load';
import { MIN_LOCAL_SAMPLES } from './service-time';
import {
  DEFAULT_LATENCY_MS,
  DEFAULT_UTILIZATION_WEIGHT,
  MAX_EXPECTED_WAIT_MS,
  resolveLoadOptions,
} from './load-options';

type ReportPatch = Omit<Partial<MetricsReport>, 'host' | 'health'> & {
  host?: Partial<MetricsReport['host']>;
  health?: Partial<MetricsReport['health']>;
};

/** A valid report with an idle backend; tests patch what they need. */
function report(patch: ReportPatch = {}): MetricsReport {
  const { host, health, ...rest } = patch;
  return {
    v: 1,
    kind: 'metrics',
    backendId: 'b1',
    epochMs: 1,
    seq: 1,
    ts: 0,
    intervalMs: 1000,
    state: 'online',
    host: { cpuUtilization: 0.2, memoryUtilization: 0.3, memoryAvailableBytes: 1e9, ...host },
    health: { verdict: 'up', ...health },
    ...rest,
  };
}

/** Runs `n` requests of `latencyMs` each, one after the other, ending at `t`. */
function serve(load: ReturnType<typeof createEndpointLoad>, t: number, latencyMs: number, n = 1) {
  for (let i = 0; i < n; i++) {
    load.onRequestStart(t);
    load.onRequestEnd(t, latencyMs, true);
  }
}

/** The CPU pressure penalty as it was by default until 2026-12-02 (now off by default). */
const PENALTY_ON = { cpuPressurePenalty: 1 };
describe('createEndpointLoad: no data', () => {
  it('scores a backend with no data at the neutral default, never zero', () => {
    const load = createEndpointLoad();
    expect(load.latencyMs(0)).toBeUndefined();
    expect(load.expectedWaitMs(0)).toBe(DEFAULT_LATENCY_MS);
    expect(load.snapshot(0).serviceTimeSource).toBe('default');
  });

  it('uses the mean service time of the cohort for a newcomer (architecture.md rule 2: no data must not look free)', () => {
    const cohort = createLoadCohort();
    const a = createEndpointLoad({ cohort });
    const b = createEndpointLoad({ cohort });
    const fresh = createEndpointLoad({ cohort });
    serve(a, 0, 10);
    serve(b, 0, 30);
    expect(cohort.meanServiceTimeMs()).toBe(20);
    expect(fresh.snapshot(0).serviceTimeSource).toBe('cohort');
    expect(fresh.expectedWaitMs(0)).toBeCloseTo(20, 6);
    b.dispose();
    expect(cohort.meanServiceTimeMs()).toBe(10);
  });

  it("counts a reported latency in the cohort's mean only up to COHORT_CLAIM_RATIO × the fastest answer seen, and not before one", () => {
    const cohort = createLoadCohort();
    const loads = [0, 1, 2].map(() => createEndpointLoad({ cohort, serviceDecayMs: 1000 }));
    const latency = (ms: number) => report({ traffic: { rps: 10, latencyMeanMs: ms } });
    // Nothing seen from any: the reports say nothing of the mean, the neutral estimate of
    // every backend without data (one agent's claim of an hour made each of them look slow).
    for (const l of loads) l.onReport(latency(50), 0);
    expect(cohort.meanServiceTimeMs()).toBeUndefined();
    for (const l of loads) serve(l, 0, 50);
    expect(cohort.meanServiceTimeMs()).toBeCloseTo(50, 6);
    // The local figures older than 3 × serviceDecayMs: a report speaks for its backend, a
    // claim of 1e300 (the digest caps it at the hour) as 4 × the 50 ms seen.
    loads[0]!.onReport(latency(1e300), 5000);
    expect(cohort.meanServiceTimeMs()).toBeCloseTo((COHORT_CLAIM_RATIO * 50 + 50 + 50) / 3, 6);
    // Back to 50: the others' figures were lost to rounding beside 1e300 (the mean stayed 16.7).
    loads[0]!.onReport(latency(50), 6000);
    expect(cohort.meanServiceTimeMs()).toBeCloseTo(50, 6);
    expect(MAX_EXPECTED_WAIT_MS).toBeLessThan(1e300);
  });

  it('bounds a report by the service time measured, itself at most 4 × the fastest answer: one slow answer lifts no claim', () => {
    const cohort = createLoadCohort();
    const loads = [0, 1, 2].map(() => createEndpointLoad({ cohort, serviceDecayMs: 1000 }));
    const claim = (l: (typeof loads)[number], ms: number, t: number) =>
      l.onReport(report({ traffic: { rps: 10, latencyMeanMs: ms } }), t);
    // Honest, 100 ms answers and one 2 ms cache hit: counted as 4 × min(100, 4 × 2) = 32,
    // not 8 (4 × the fastest answer alone).
    serve(loads[0]!, 0, 2);
    for (let t = 10; t <= 1000; t += 10) serve(loads[0]!, t, 100);
    claim(loads[0]!, 100, 5000);
    // The other two answer 10 ms for 10 s; one of them answers once in 30 s after a quiet
    // spell, then its agent claims an hour: that answer may not lift the bound (it did to 104 s).
    for (let t = 0; t <= 10_000; t += 10) {
      serve(loads[1]!, t, 10);
      serve(loads[2]!, t, 10);
    }
    serve(loads[2]!, 12_000, 30_000);
    claim(loads[2]!, 3.6e6, 20_000);
    expect(cohort.meanServiceTimeMs()).toBeCloseTo((32 + 10 + COHORT_CLAIM_RATIO * 4 * 10) / 3, 0);
  });

  it('rejects a cohort that createLoadCohort did not make', () => {
    expect(() => createEndpointLoad({ cohort: { size: 0 } as never })).toThrow(GatewayError);
  });
});

describe('createEndpointLoad: local signals', () => {
  it('counts in-flight and never goes below zero', () => {
    const load = createEndpointLoad();
    load.onRequestStart(0);
    load.onRequestStart(0);
    expect(load.inFlight).toBe(2);
    load.onRequestEnd(1, 5, true);
    load.onRequestEnd(1, 5, true);
    load.onRequestEnd(1, 5, true);
    expect(load.inFlight).toBe(0);
  });

  it('Peak EWMA: a peak counts at once, then fades towards the windowed minimum', () => {
    const load = createEndpointLoad({ decayMs: 1000 });
    serve(load, 0, 10);
    serve(load, 100, 200);
    expect(load.latencyMs(100)).toBe(200);
    // One decay time later the excess over the 10 ms floor has shrunk by e.
    expect(load.latencyMs(1100)).toBeCloseTo(10 + 190 / Math.E, 6);
    expect(load.latencyMs(1_000_000)).toBeCloseTo(10, 6);
  });

  it('learns capacity from concurrency served at the base latency, and queues beyond it', () => {
    const load = createEndpointLoad();
    // 4 requests overlap and each finishes at the minimum latency: 4 slots exist.
    for (let i = 0; i < 4; i++) load.onRequestStart(0);
    for (let i = 0; i < 4; i++) load.onRequestEnd(10, 10, true);
    const s = load.snapshot(10);
    expect(s.capacitySource).toBe('learned');
    expect(s.capacity).toBe(4);
    // 3 in flight: a slot is free, wait = s × (1 + β × 3/4).
    for (let i = 0; i < 3; i++) load.onRequestStart(10);
    expect(load.expectedWaitMs(10)).toBeCloseTo(10 * (1 + (DEFAULT_UTILIZATION_WEIGHT * 3) / 4), 6);
    // 7 in flight: 4 ahead in the queue at 4 per service time.
    for (let i = 0; i < 4; i++) load.onRequestStart(10);
    expect(load.expectedWaitMs(10)).toBeCloseTo(10 * (1 + 4 / 4 + DEFAULT_UTILIZATION_WEIGHT), 6);
  });

  it('capacity samples at saturation: n × minLatency / latency', () => {
    const load = createEndpointLoad();
    serve(load, 0, 10);
    // 8 in flight but each took 20 ms where 10 ms is possible: about 4 slots.
    for (let i = 0; i < 8; i++) load.onRequestStart(1);
    load.onRequestEnd(20, 20, true);
    expect(load.snapshot(20).capacity).toBe(4);
  });

  it('the cohort prior lifts a learned lower bound, but not a capacity measured under queueing', () => {
    const cohort = createLoadCohort();
    const big = createEndpointLoad({ cohort });
    for (let i = 0; i < 8; i++) big.onRequestStart(0);
    for (let i = 0; i < 8; i++) big.onRequestEnd(10, 10, true);
    // A backend that only ever saw one request at a time borrows the cohort's 8 slots...
    const quiet = createEndpointLoad({ cohort });
    serve(quiet, 0, 10);
    expect(quiet.snapshot(10)).toMatchObject({ capacity: 8, capacitySource: 'cohort' });
    // ...a backend seen queueing (4 in flight at twice its base latency: 2 slots) does not.
    const small = createEndpointLoad({ cohort });
    serve(small, 0, 10);
    for (let i = 0; i < 4; i++) small.onRequestStart(1);
    small.onRequestEnd(20, 20, true);
    expect(small.snapshot(20)).toMatchObject({ capacity: 2, capacitySource: 'learned' });
  });

  it('a fast failure does not make a backend look fast (no black hole)', () => {
    const load = createEndpointLoad();
    serve(load, 0, 50);
    for (let i = 0; i < 20; i++) {
      load.onRequestStart(1);
      load.onRequestEnd(1, 1, false);
    }
    expect(load.latencyMs(1)).toBeGreaterThanOrEqual(49);
    // A first response that fails fast does not set a fast estimate either.
    const fresh = createEndpointLoad();
    fresh.onRequestStart(0);
    fresh.onRequestEnd(0, 1, false);
    expect(fresh.latencyMs(0)).toBe(DEFAULT_LATENCY_MS);
    // A slow failure (a timeout) counts as a peak.
    load.onRequestStart(2);
    load.onRequestEnd(2, 5000, false);
    expect(load.latencyMs(2)).toBe(5000);
  });

  it('errors inflate the wait, bounded, and are forgotten without traffic', () => {
    const load = createEndpointLoad({ decayMs: 1000 });
    serve(load, 0, 10);
    const healthy = load.expectedWaitMs(0);
    for (let i = 0; i < 50; i++) {
      load.onRequestStart(0);
      load.onRequestEnd(0, 10, false);
    }
    expect(load.expectedWaitMs(0)).toBeGreaterThan(healthy * 4);
    expect(load.expectedWaitMs(0)).toBeLessThanOrEqual(healthy * 5);
    expect(load.expectedWaitMs(100_000)).toBeCloseTo(10, 3);
  });
});

describe('createEndpointLoad: overloaded answers (503 + Retry-After)', () => {
  const overloaded = (load: ReturnType<typeof createEndpointLoad>, t: number, n: number) => {
    for (let i = 0; i < n; i++) {
      load.onRequestStart(t);
      load.onRequestEnd(t, 1, true, true);
    }
  };

  it('lower the share through a bounded penalty, not through the error rate', () => {
    const load = createEndpointLoad();
    serve(load, 0, 10);
    const healthy = load.expectedWaitMs(0);
    overloaded(load, 0, 50);
    const snap = load.snapshot(0);
    // 50 in a row: the EWMA (alpha 0.1) is at 1 - 0.9^50 ≈ 0.995, the factor at 1 + 4 × that.
    expect(snap.overload).toBeCloseTo(1 - 0.9 ** 50, 6);
    expect(snap.penaltyFactor).toBeCloseTo(1 + 4 * (1 - 0.9 ** 50), 6);
    expect(load.expectedWaitMs(0)).toBeGreaterThan(healthy * 4);
    expect(load.expectedWaitMs(0)).toBeLessThanOrEqual(healthy * 5);
    // Not errors: one failure now brings the error rate to 0.1, not to 1 - 0.9^51.
    load.onRequestStart(0);
    load.onRequestEnd(0, 10, false);
    const overloadAfter = (1 - 0.9 ** 50) * 0.9;
    expect(load.snapshot(0).penaltyFactor).toBeCloseTo((1 + 4 * 0.1) * (1 + 4 * overloadAfter), 6);
  });

  it('fast rejections do not make the backend look fast', () => {
    const load = createEndpointLoad();
    serve(load, 0, 40);
    overloaded(load, 1, 20);
    expect(load.latencyMs(1)).toBeGreaterThanOrEqual(39);
    expect(load.snapshot(1).serviceTimeMs).toBeGreaterThanOrEqual(39);
  });

  it('fade with answers that are not overloaded, and with time (overloadDecayMs)', () => {
    const load = createEndpointLoad({ overloadDecayMs: 1000 });
    overloaded(load, 0, 30);
    const peak = load.snapshot(0).overload;
    serve(load, 0, 10, 10);
    expect(load.snapshot(0).overload).toBeCloseTo(peak * 0.9 ** 10, 9);
    expect(load.snapshot(1000).overload).toBeCloseTo(peak * 0.9 ** 10 * Math.exp(-1), 9);
    expect(load.snapshot(60_000).penaltyFactor).toBeCloseTo(1, 6);
  });

  it('capped by maxPenaltyFactor together with the other penalties', () => {
    const load = createEndpointLoad({ overloadPenalty: 100, maxPenaltyFactor: 3 });
    overloaded(load, 0, 30);
    expect(load.snapshot(0).penaltyFactor).toBe(3);
  });

  it('admit() forgets them: a restarted backend starts clean', () => {
    const load = createEndpointLoad();
    overloaded(load, 0, 30);
    load.admit(0);
    expect(load.snapshot(0).overload).toBe(0);
  });

  it.each([
    { queue: { inFlight: 4, queued: 3 }, limit: 4, saturated: true },
    { queue: { inFlight: 4, queued: 0 }, limit: 4, saturated: false }, // busy, nobody waiting
    { queue: { inFlight: 2, queued: 3 }, limit: 4, saturated: false }, // slots free: not full
    { queue: { inFlight: 8, acceptBacklog: 5 }, limit: undefined, saturated: true },
    { queue: undefined, limit: 4, saturated: false },
  ])('reportSaturated: queue $queue, limit $limit → $saturated', ({ queue, limit, saturated }) => {
    const load = createEndpointLoad();
    load.onReport(
      report({
        ...(queue ? { queue: { ...queue, source: {} } } : {}),
        ...(limit !== undefined ? { concurrencyLimit: limit } : {}),
      }),
      0,
    );
    expect(load.reportSaturated(0)).toBe(saturated);
    // Only while the report is fresh.
    expect(load.reportSaturated(60_000)).toBe(false);
  });
});

describe('createEndpointLoad: refused answers (a 429 that is not overload)', () => {
  it('never lower the service time, and count as neither error nor overload', () => {
    const load = createEndpointLoad();
    serve(load, 0, 40);
    const before = load.snapshot(0);
    // One every 100 ms for 3 s: three times the service time's time constant (1 s).
    let t = 1;
    for (let i = 0; i < 30; i++, t += 100) {
      load.onRequestStart(t);
      load.onRequestEnd(t, 1, true, false, true);
    }
    const after = load.snapshot(t);
    // Timed as successes, such answers of 1 ms took the estimate to a few ms: the backend
    // refusing work looked the quickest of the fleet.
    expect(load.latencyMs(t)).toBeGreaterThanOrEqual(39);
    expect(after.serviceTimeMs).toBeGreaterThanOrEqual(39);
    expect(after.penaltyFactor).toBe(before.penaltyFactor);
    expect(after.overload).toBe(0);
    expect(load.inFlight).toBe(0);
  });
});

describe('createEndpointLoad: the agent report', () => {
  it('detects hidden load: what the agent sees minus what this gateway had in flight', () => {
    const load = createEndpointLoad({ defaultCapacity: 4 });
    serve(load, 0, 10);
    load.onRequestStart(0);
    load.onRequestStart(0);
    load.onReport(
      report({ queue: { inFlight: 4, queued: 6, source: {} }, concurrencyLimit: 4 }),
      0,
    );
    const s = load.snapshot(0);
    expect(s.hiddenInFlight).toBe(8);
    // 2 local + 8 hidden outstanding, 4 slots: 7 ahead in the queue, and a little more
    // for the hidden count's spread (0 or 1 hidden would have left a free slot).
    const ahead = expectedExcess(2 + 1 - 4, 8);
    expect(ahead).toBeCloseTo(7 + Math.exp(-8), 9);
    expect(s.expectedWaitMs).toBeCloseTo(10 * (1 + ahead / 4 + DEFAULT_UTILIZATION_WEIGHT), 6);
    // Local requests finishing after the report do not reduce the hidden part.
    load.onRequestEnd(1, 10, true);
    expect(load.snapshot(1).hiddenInFlight).toBe(8);
  });

  it("without traffic figures (a gauge agent), a lone gateway's own requests are not hidden load", () => {
    // The agent's instantaneous outstanding, sampled once a second, against this gateway's
    // in-flight at the same instant: equal, so nothing is hidden. Averaging the snapshots and
    // subtracting this gateway's mean over the interval instead made a phantom: here 3 requests
    // sent 10 ms before the report (a mean of 0.03 over the second) left 1.47 hidden requests
    // for the whole interval (one slot: a new request looked 1.5 service times later).
    const load = createEndpointLoad({ defaultLatencyMs: 10 });
    const queue = (inFlight: number) => ({ inFlight, source: {} });
    load.onReport(report({ queue: queue(0), concurrencyLimit: 1 }), 0);
    for (let i = 0; i < 3; i++) load.onRequestStart(990);
    load.onReport(report({ queue: queue(3), concurrencyLimit: 1 }), 1000);
    for (let i = 0; i < 3; i++) load.onRequestEnd(1010, 20, true);
    expect(load.snapshot(1900).hiddenInFlight).toBe(0);
    // Another sender's requests still count: the agent sees 4 where this gateway has 1, twice.
    for (const t of [2000, 3000]) {
      load.onRequestStart(t);
      load.onReport(report({ queue: queue(4), concurrencyLimit: 1 }), t);
      load.onRequestEnd(t + 10, 10, true);
    }
    // The mean of the excess is 0 → 3 → 3 with α 0.5: 1.5 after one report, 2.25 after two.
    expect(load.snapshot(3900).hiddenInFlight).toBeCloseTo(2.25, 6);
  });

  it('takes the report over a local figure of fewer than MIN_LOCAL_SAMPLES samples', () => {
    // One cheap request (the `/healthz` that checked the gateway was up, passed through) set
    // a 10 ms backend's figure to 2 ms over its agent's report of all its requests, for the
    // 30 s of localFreshMs: at a cold start it drew 15 of the first 32 requests in flight.
    const load = createEndpointLoad();
    load.onReport(report({ traffic: { rps: 100, latencyMeanMs: 10 } }), 0);
    serve(load, 0, 2);
    expect(load.snapshot(0).serviceTimeSource).toBe('reported');
    expect(load.snapshot(0).serviceTimeMs).toBe(10);
    serve(load, 0, 2, MIN_LOCAL_SAMPLES - 2);
    expect(load.snapshot(0).serviceTimeSource).toBe('reported');
    // Enough of its own: the gateway's measure speaks.
    serve(load, 0, 2);
    expect(load.snapshot(0).serviceTimeSource).toBe('local');
    expect(load.snapshot(0).serviceTimeMs).toBeCloseTo(2, 6);
    // After a lull (the figure's weight on those samples long gone) one sample is one sample
    // again: the report speaks until the new run of samples reaches MIN_LOCAL_SAMPLES.
    load.onReport(report({ traffic: { rps: 100, latencyMeanMs: 10 } }), 20_000);
    serve(load, 20_000, 2);
    expect(load.snapshot(20_000).serviceTimeSource).toBe('reported');
  });

  it('takes a local figure slower than the report however few its samples', () => {
    // An agent reporting a tenth of the latency: nine 500 ms answers were held at its 10 ms.
    const load = createEndpointLoad();
    load.onReport(report({ traffic: { rps: 100, latencyMeanMs: 10 } }), 0);
    serve(load, 0, 500);
    expect(load.snapshot(0).serviceTimeSource).toBe('local');
    expect(load.snapshot(0).serviceTimeMs).toBe(500);
  });

  it("hidden load from Little's law when the agent has traffic but no queue figures", () => {
    const load = createEndpointLoad();
    load.onReport(report({ traffic: { rps: 500, latencyMeanMs: 20 } }), 0);
    expect(load.snapshot(0).hiddenInFlight).toBe(10);
    expect(load.snapshot(0).serviceTimeSource).toBe('reported');
  });

  it('reads the capacity off a queue: with requests queued, in-flight fills every slot', () => {
    const load = createEndpointLoad();
    load.onReport(report({ queue: { inFlight: 6, queued: 3, source: {} } }), 0);
    expect(load.snapshot(0)).toMatchObject({ capacity: 6, capacitySource: 'reported' });
  });

  it('derives freshness from the report interval (3×), bounded both ways', () => {
    const cases = [
      { intervalMs: 1000, staleAfterMs: 3000 },
      { intervalMs: 100, staleAfterMs: 1000 },
      { intervalMs: 60_000, staleAfterMs: 30_000 },
    ];
    for (const c of cases) {
      const load = createEndpointLoad();
      load.onReport(report({ intervalMs: c.intervalMs }), 0);
      expect(load.hasFreshReport(c.staleAfterMs)).toBe(true);
      expect(load.hasFreshReport(c.staleAfterMs + 1)).toBe(false);
    }
    const fixed = createEndpointLoad({ staleAfterMs: 500 });
    fixed.onReport(report({ intervalMs: 1000 }), 0);
    expect(fixed.hasFreshReport(501)).toBe(false);
  });

  it('a stale report stops counting: local signals only, the backend does not vanish', () => {
    const load = createEndpointLoad();
    serve(load, 0, 10);
    load.onReport(
      report({
        queue: { inFlight: 50, queued: 50, source: {} },
        host: { cpuUtilization: 1 },
        health: { verdict: 'degraded' },
      }),
      0,
    );
    // 100 outstanding on 50 slots (queued > 0: in-flight is the capacity). CPU and the
    // degraded verdict weigh with this gateway's share of the traffic, here 0: all 100
    // requests are other clients' and already count as hidden load.
    expect(load.expectedWaitMs(3000)).toBeCloseTo(
      10 * (1 + 51 / 50 + DEFAULT_UTILIZATION_WEIGHT),
      6,
    );
    expect(load.reportVerdict(3000)).toBe('degraded');
    // Stale: local signals only (nothing in flight here), 10 ms service time.
    expect(load.expectedWaitMs(3001)).toBeCloseTo(10, 6);
    expect(load.snapshot(3001)).toMatchObject({
      hiddenInFlight: 0,
      freshReport: false,
      penaltyFactor: 1,
    });
    expect(load.reportAgeMs(3001)).toBe(3001);
    expect(load.reportVerdict(3001)).toBeUndefined();
    expect(load.reportState(3001)).toBeUndefined();
  });

  it.each([
    { name: 'CPU at 100%, by default (off)', patch: { host: { cpuUtilization: 1 } }, factor: 1 },
    { name: 'CPU at 100%', patch: { host: { cpuUtilization: 1 } }, factor: 2, load: PENALTY_ON },
    {
      name: 'CPU below threshold',
      patch: { host: { cpuUtilization: 0.8 } },
      factor: 1,
      load: PENALTY_ON,
    },
    {
      name: 'cgroup CPU at 100%',
      patch: { cgroup: { cpuUtilization: 1 } },
      factor: 2,
      load: PENALTY_ON,
    },
    { name: 'memory at 100%', patch: { host: { memoryUtilization: 1 } }, factor: 3 },
    { name: 'verdict degraded', patch: { health: { verdict: 'degraded' as const } }, factor: 2 },
    { name: 'verdict down', patch: { health: { verdict: 'down' as const } }, factor: 8 },
    { name: 'draining', patch: { state: 'draining' as const }, factor: 8 },
    {
      name: 'everything at once stays bounded',
      patch: {
        host: { cpuUtilization: 1, memoryUtilization: 1 },
        health: { verdict: 'degraded' as const },
        traffic: { errorRate: 1 },
      },
      factor: 8,
    },
  ])('penalty: $name → ×$factor', ({ patch, factor, load: opts }) => {
    const load = createEndpointLoad(opts);
    load.onReport(report(patch as ReportPatch), 0);
    expect(load.snapshot(0).penaltyFactor).toBeCloseTo(factor, 6);
  });

  it("global penalties weigh with this gateway's share of the traffic (G gateways react as one)", () => {
    const cases = [
      { localInFlight: 8, factor: 2 }, // all the traffic is ours: the full ×2
      { localInFlight: 2, factor: 1.25 }, // a quarter: a quarter of the extra
      { localInFlight: 0, factor: 1 },
    ];
    for (const c of cases) {
      const load = createEndpointLoad(PENALTY_ON);
      load.onReport(report({ queue: { inFlight: 0, source: {} } }), 0); // starts the interval
      for (let i = 0; i < c.localInFlight; i++) load.onRequestStart(0);
      // Over the interval the agent saw 8 requests on average (Little: 400 rps × 20 ms).
      load.onReport(
        report({
          host: { cpuUtilization: 1 },
          queue: { inFlight: 8, source: {} },
          traffic: { rps: 400, latencyMeanMs: 20 },
        }),
        1000,
      );
      expect(load.snapshot(1000).penaltyFactor).toBeCloseTo(c.factor, 6);
    }
  });

  it("hidden load from other gateways follows this gateway's in-flight at once (cohort ratio)", () => {
    const cohort = createLoadCohort();
    const loads = [0, 1, 2].map(() => createEndpointLoad({ cohort }));
    // Every backend: this gateway kept 1 request on average, the agent saw 3 (two other gateways).
    for (const l of loads) {
      l.onReport(report({ queue: { inFlight: 0, source: {} } }), 0);
      l.onRequestStart(0);
      l.onReport(
        report({ queue: { inFlight: 3, source: {} }, traffic: { rps: 300, latencyMeanMs: 10 } }),
        1000,
      );
    }
    const l0 = loads[0]!;
    // Two others per one of ours; once the snapshot has drained (tens of ms), hidden = 2 × ours.
    expect(l0.snapshot(2000).hiddenInFlight).toBeCloseTo(2, 6);
    l0.onRequestStart(2000);
    l0.onRequestStart(2000);
    expect(l0.snapshot(2000).hiddenInFlight).toBeCloseTo(6, 6);
    // A batch job on one backend (the agent sees 10 more there) is held as extra; the ratio,
    // a median over backends, does not move.
    loads[2]!.onReport(
      report({ queue: { inFlight: 13, source: {} }, traffic: { rps: 1300, latencyMeanMs: 10 } }),
      2000,
    );
    expect(loads[2]!.snapshot(3000).hiddenInFlight).toBeCloseTo(12, 6);
    expect(l0.snapshot(3000).hiddenInFlight).toBeCloseTo(6, 6);
  });

  it('exposes the fresh verdict and state for the balancer', () => {
    const load = createEndpointLoad();
    expect(load.reportVerdict(0)).toBeUndefined();
    load.onReport(report({ health: { verdict: 'down' }, state: 'draining' }), 0);
    expect(load.reportVerdict(0)).toBe('down');
    expect(load.reportState(0)).toBe('draining');
  });
});

describe('createEndpointLoad: edge cases never leak NaN or Infinity', () => {
  const cases: Array<{ name: string; setup: (l: ReturnType<typeof createEndpointLoad>) => void }> =
    [
      { name: 'zero latency', setup: (l) => serve(l, 0, 0, 3) },
      { name: 'negative latency', setup: (l) => serve(l, 0, -5) },
      { name: 'NaN latency', setup: (l) => serve(l, 0, NaN) },
      { name: 'infinite latency', setup: (l) => serve(l, 0, Infinity) },
      {
        name: 'zero capacity reported',
        setup: (l) =>
          l.onReport(report({ concurrencyLimit: 0, queue: { inFlight: 0, source: {} } }), 0),
      },
      {
        name: 'huge queue',
        setup: (l) =>
          l.onReport(report({ queue: { inFlight: 1e15, queued: 1e300, source: {} } }), 0),
      },
      {
        name: 'NaN and negative figures',
        setup: (l) =>
          l.onReport(
            report({
              queue: { inFlight: NaN, queued: -3, source: {} },
              concurrencyLimit: NaN,
              traffic: { rps: Infinity, latencyMeanMs: NaN, errorRate: -1 },
              host: { cpuUtilization: NaN, memoryUtilization: 7 },
            }),
            0,
          ),
      },
      {
        name: 'missing optional sections',
        setup: (l) =>
          l.onReport(
            { ...report(), host: undefined, health: undefined } as unknown as MetricsReport,
            0,
          ),
      },
      { name: 'zero interval', setup: (l) => l.onReport(report({ intervalMs: 0 }), 0) },
      { name: 'end without start', setup: (l) => l.onRequestEnd(0, 10, true) },
    ];

  it.each(cases)('$name', ({ setup }) => {
    const load = createEndpointLoad();
    setup(load);
    for (const t of [0, 1, 1e6]) {
      const w = load.expectedWaitMs(t);
      expect(Number.isFinite(w)).toBe(true);
      expect(w).toBeGreaterThan(0);
      expect(w).toBeLessThanOrEqual(MAX_EXPECTED_WAIT_MS);
      const lat = load.latencyMs(t);
      if (lat !== undefined) expect(Number.isFinite(lat)).toBe(true);
      expect(Number.isFinite(load.slowStartFactor(t))).toBe(true);
    }
  });
});

describe('createEndpointLoad: slow start', () => {
  it('ramps linearly from the floor to 1 over slowStartMs after admit()', () => {
    const load = createEndpointLoad({ slowStartMs: 10_000, slowStartMinFactor: 0.1 });
    expect(load.slowStartFactor(0)).toBe(1);
    load.admit(1000);
    expect(load.slowStartFactor(1000)).toBeCloseTo(0.1, 9);
    expect(load.slowStartFactor(6000)).toBeCloseTo(0.55, 9);
    expect(load.slowStartFactor(11_000)).toBe(1);
  });

  it('slowStartOnCreate starts the ramp at the injected clock', () => {
    const load = createEndpointLoad({
      slowStartOnCreate: true,
      now: () => 5000,
      slowStartMs: 1000,
    });
    expect(load.slowStartFactor(5000)).toBeCloseTo(0.1, 9);
    expect(load.slowStartFactor(6000)).toBe(1);
  });

  it('slowStartMs 0 disables it', () => {
    const load = createEndpointLoad({ slowStartMs: 0 });
    load.admit(0);
    expect(load.slowStartFactor(0)).toBe(1);
  });
});

describe('load options', () => {
  it.each([
    [{ staleAfterMs: 0 }],
    [{ staleAfterMs: 'soon' }],
    [{ decayMs: NaN }],
    [{ slowStartMinFactor: 0 }],
    [{ minStaleAfterMs: 5000, maxStaleAfterMs: 1000 }],
    [{ defaultCapacity: 1.5 }],
    [{ now: 42 }],
    [{ slowStartOnCreate: 'yes' }],
    [{ decayMS: 1000 }],
    [{ overloadPenalty: -1 }],
    [{ overloadDecayMs: 0 }],
    ['not an object'],
  ])('%j throws LW_GW_INVALID_OPTION', (opts) => {
    expect(() => resolveLoadOptions(opts as never)).toThrow(
      expect.objectContaining({ code: 'LW_GW_INVALID_OPTION' }),
    );
    expect(() => createEndpointLoad(opts as never)).toThrow(GatewayError);
  });

  it('accepts documented options', () => {
    expect(resolveLoadOptions({ staleAfterMs: 2000, slowStartMs: 0 }).freshness.staleAfterMs).toBe(
      2000,
    );
  });
});

describe('createEndpointLoad: no starvation', () => {
  it('admit() forgets the previous incarnation: a restarted backend scores like its peers, not like its crash', () => {
    const cohort = createLoadCohort();
    const peers = [createEndpointLoad({ cohort }), createEndpointLoad({ cohort })];
    const crashed = createEndpointLoad({ cohort, slowStartMs: 0 });
    for (const p of peers) serve(p, 0, 10, 20);
    // While it died: timeouts (slow failures) raised its estimate well above the peers'.
    for (let i = 0; i < 5; i++) {
      crashed.onRequestStart(0);
      crashed.onRequestEnd(0, 5000, false);
    }
    expect(crashed.expectedWaitMs(0)).toBeGreaterThan(10 * peers[0]!.expectedWaitMs(0));
    crashed.admit(60_000);
    expect(crashed.snapshot(60_000).serviceTimeSource).toBe('cohort');
    expect(crashed.expectedWaitMs(60_000)).toBeCloseTo(peers[0]!.expectedWaitMs(60_000), 6);
  });

  it('without new samples a local figure regresses towards the peers mean (time constant serviceDecayMs)', () => {
    const cohort = createLoadCohort();
    const peers = [createEndpointLoad({ cohort }), createEndpointLoad({ cohort })];
    const once = createEndpointLoad({ cohort, serviceDecayMs: 1000 });
    serve(once, 0, 20); // one noisy sample, then P2C stopped picking it
    for (const p of peers) serve(p, 0, 10, 5);
    const excess = (t: number) => once.snapshot(t).serviceTimeMs - 10;
    expect(excess(0)).toBeCloseTo(10, 6);
    expect(excess(1000)).toBeCloseTo(10 * Math.exp(-1), 6);
    expect(excess(5000)).toBeCloseTo(10 * Math.exp(-5), 6);
  });

  it('a figure nobody refreshes leaves the mean that idle peers regress towards', () => {
    // A latency fault on s's path, then the routing leaves s alone: its 200 ms must not pull
    // the healthy, idle b up towards (10 + 200) / 2 once it is older than 3 × serviceDecayMs.
    const cohort = createLoadCohort();
    const [a, b, s] = [0, 1, 2].map(() => createEndpointLoad({ cohort, serviceDecayMs: 1000 }));
    serve(a!, 0, 10, 5);
    serve(b!, 0, 10, 5);
    serve(s!, 0, 200);
    serve(a!, 2000, 10, 5);
    s!.onReport(report({ queue: { inFlight: 0, queued: 0, source: {} } }), 2000);
    // Within 3 s s still counts: b regresses towards the mean of a and s.
    expect(b!.snapshot(2000).serviceTimeMs).toBeGreaterThan(50);
    serve(a!, 4000, 10, 5);
    s!.onReport(report({ queue: { inFlight: 0, queued: 0, source: {} } }), 4000);
    // Older: s's agent, which reports no latency, speaks for it, and b's target is a's 10 ms.
    expect(b!.snapshot(4000).serviceTimeMs).toBeCloseTo(10, 0);
    expect(cohort.size).toBe(2);
  });

  it('regresses a better-than-peers figure too (shrinkage is symmetric: an idle fast backend stays honest)', () => {
    const cohort = createLoadCohort();
    const peer = createEndpointLoad({ cohort });
    const fast = createEndpointLoad({ cohort, serviceDecayMs: 1000 });
    serve(fast, 0, 5, 10);
    serve(peer, 0, 50, 10);
    expect(fast.snapshot(0).serviceTimeMs).toBeCloseTo(5, 6);
    expect(fast.snapshot(1000).serviceTimeMs).toBeCloseTo(50 - 45 * Math.exp(-1), 6);
  });

  it('regresses more slowly each time a probe confirms a slow backend, and at the usual pace after a fast probe', () => {
    const cohort = createLoadCohort();
    const peers = [createEndpointLoad({ cohort }), createEndpointLoad({ cohort })];
    const slow = createEndpointLoad({ cohort, serviceDecayMs: 1000 });
    const peersServe = (t: number) => peers.forEach((p) => serve(p, t, 10, 5));
    peersServe(0);
    serve(slow, 0, 50);
    const excess = (t: number) => slow.snapshot(t).serviceTimeMs - 10;
    expect(excess(1000)).toBeCloseTo(40 * Math.exp(-1), 6);
    // Probes 2 s, 4 s and 8 s after the last sample, each 5x the peers: 2x, 4x, 8x slower regression.
    let t = 0;
    for (const [gap, tau] of [
      [2000, 2000],
      [4000, 4000],
      [8000, 8000],
    ] as const) {
      t += gap;
      peersServe(t);
      serve(slow, t, 50);
      expect(excess(t + tau)).toBeCloseTo(40 * Math.exp(-1), 6);
    }
    // A probe only as slow as 1.5x the peers ends it: back to serviceDecayMs.
    t += 8000;
    peersServe(t);
    serve(slow, t, 15);
    peersServe(t);
    expect(slow.snapshot(t).serviceTimeMs).toBeGreaterThan(10);
    const after = slow.snapshot(t).serviceTimeMs - 10;
    expect(excess(t + 1000)).toBeCloseTo(after * Math.exp(-1), 6);
    // The backoff is capped: 32 x serviceDecayMs however often it is confirmed.
    for (let i = 0; i < 10; i++) {
      t += 40_000;
      peersServe(t);
      serve(slow, t, 50);
    }
    const e0 = excess(t);
    expect(excess(t + 32_000)).toBeCloseTo(e0 * Math.exp(-1), 6);
    // admit (a new incarnation) forgets it with the rest.
    slow.admit(t + 1);
    serve(slow, t + 2, 50);
    expect(excess(t + 1002)).toBeCloseTo(40 * Math.exp(-1), 6);
  });

  it('a figure in use is not moved: every completion refreshes it', () => {
    const cohort = createLoadCohort();
    const peer = createEndpointLoad({ cohort });
    const busy = createEndpointLoad({ cohort, serviceDecayMs: 1000 });
    serve(peer, 0, 10, 5);
    for (let t = 0; t <= 1000; t += 5) serve(busy, t, 30);
    expect(busy.snapshot(1000).serviceTimeMs).toBeCloseTo(30, 6);
  });
});

describe('createEndpointLoad: early reports', () => {
  const busy = (inFlight: number, queued = 0) => ({ inFlight, queued, source: {} });

  it('takes the jump of an early report at once, and lets it fade as its requests drain', () => {
    const load = createEndpointLoad();
    serve(load, 0, 40);
    load.onReport(
      report({ queue: busy(4), concurrencyLimit: 8, traffic: { rps: 100, latencyMeanMs: 40 } }),
      0,
    );
    expect(load.snapshot(300).hiddenInFlight).toBeCloseTo(4, 6);
    // 300 ms later the backend has 10 requests; the early report says so.
    load.onReport(
      report({
        queue: busy(8, 2),
        concurrencyLimit: 8,
        traffic: { rps: 100, latencyMeanMs: 40 },
        early: true,
      }),
      300,
    );
    expect(load.snapshot(300).hiddenInFlight).toBeCloseTo(10, 6);
    // 2 queued ahead of a new request on 8 slots (3 with itself): the wait says so at once.
    // The interval's mean of 4 counts by its spread, the jump above it as seen.
    const ahead = expectedExcess(10 - 4 + 1 - 8, 4);
    expect(load.snapshot(300).expectedWaitMs).toBeCloseTo(
      40 * (1 + ahead / 8 + DEFAULT_UTILIZATION_WEIGHT),
      6,
    );
    expect(ahead).toBeGreaterThan(3);
    // Drained (time constant 40 ms × 10 / 8): back to the interval's mean of 4.
    expect(load.snapshot(1300).hiddenInFlight).toBeCloseTo(4, 6);
  });

  it("leaves the interval's means alone: the next scheduled report is judged over its whole interval", () => {
    const run = (early: boolean) => {
      const load = createEndpointLoad({ defaultLatencyMs: 40 });
      load.onReport(report({ queue: busy(0), concurrencyLimit: 8 }), 0);
      load.onRequestStart(0); // this gateway keeps 1 request from 0 to 500 ms
      load.onReport(report({ queue: busy(6), concurrencyLimit: 8, early }), 400);
      load.onRequestEnd(500, 500, true);
      // Scheduled: on average 1 request over the second (Little: 25 rps × 40 ms).
      load.onReport(
        report({ queue: busy(0), concurrencyLimit: 8, traffic: { rps: 25, latencyMeanMs: 40 } }),
        1000,
      );
      // Late enough for the report's snapshot to have drained, early enough to be fresh.
      return load.snapshot(4000).hiddenInFlight;
    };
    // This gateway's mean over 0..1000 ms is 0.5: half the agent's mean is hidden.
    expect(run(true)).toBeCloseTo(0.5, 2);
    // Read as a scheduled report, the early one would cut the interval at 400 ms: this
    // gateway's mean 100/600, and a hidden mean a third too high.
    expect(run(false)).toBeCloseTo(1 - 100 / 600, 2);
  });

  it('an early report before any scheduled one is read as a scheduled one', () => {
    const load = createEndpointLoad();
    load.onReport(report({ queue: busy(3), concurrencyLimit: 8, early: true }), 0);
    expect(load.snapshot(0)).toMatchObject({ hiddenInFlight: 3, freshReport: true });
  });
});

describe("expectedExcess: the hidden count's spread", () => {
  /** E[max(0, base + H)] for H ~ Poisson(h), summed term by term. */
  const bruteForce = (base: number, h: number): number => {
    let p = Math.exp(-h);
    let e = 0;
    for (let x = 0; x < 400; x++) {
      e += Math.max(0, base + x) * p;
      p *= h / (x + 1);
    }
    return e;
  };

  it('is the Poisson expectation of the requests beyond the free slots', () => {
    for (const h of [0.3, 1, 4.8, 10, 30]) {
      for (const base of [-40, -9, -7.5, -3, -1, 0, 2.5]) {
        expect(expectedExcess(base, h)).toBeCloseTo(bruteForce(base, h), 9);
      }
    }
  });

  it('is never below what the mean alone says, and equals it without hidden load', () => {
    for (const h of [0, 0.5, 4.8, 20]) {
      for (const base of [-12, -7, -2, 0, 3]) {
        expect(expectedExcess(base, h)).toBeGreaterThanOrEqual(Math.max(0, base + h) - 1e-12);
      }
    }
    expect(expectedExcess(-3, 0)).toBe(0);
    expect(expectedExcess(2, 0)).toBe(2);
    expect(expectedExcess(-3, Number.NaN)).toBe(0);
    // A snapshot below the interval's mean makes the estimate negative: it lowers the queue.
    expect(expectedExcess(2, -1.5)).toBe(0.5);
    expect(expectedExcess(-1, -1)).toBe(0);
  });

  it('sees the queue the mean hides: 4.8 hidden on 8 slots', () => {
    // The mean leaves 3.2 slots free; the backend is full 11% of the time.
    expect(expectedExcess(1 - 8, 4.8)).toBeCloseTo(0.211, 3);
    expect(expectedExcess(3 - 8, 4.8)).toBeCloseTo(0.769, 3);
  });

  it('leaves the spread out past 64 free slots or hidden requests (bounded cost)', () => {
    expect(expectedExcess(-100, 50)).toBe(0);
    expect(expectedExcess(-10, 80)).toBe(70);
  });

  it('spreads only a steady hidden mean of a request or more', () => {
    // One request outstanding now, 2 slots; the interval's mean (Little: rps x latency) is
    // 0.8 or 1.2 requests, none of them this gateway's.
    const wait = (rps: number) => {
      const load = createEndpointLoad();
      serve(load, 0, 40);
      load.onReport(
        report({
          queue: { inFlight: 1, queued: 0, source: {} },
          concurrencyLimit: 2,
          traffic: { rps, latencyMeanMs: 40 },
        }),
        0,
      );
      return load.expectedWaitMs(0);
    };
    const mean = DEFAULT_UTILIZATION_WEIGHT / 2;
    // 0.8: within the estimate's noise, by its mean: a free slot, no queue term.
    expect(wait(20)).toBeCloseTo(40 * (1 + mean), 6);
    // 1.2: by its spread. The snapshot's 1 is 0.2 under the mean, known.
    expect(wait(30)).toBeCloseTo(40 * (1 + expectedExcess(1 - 1.2 + 1 - 2, 1.2) / 2 + mean), 6);
    expect(wait(30)).toBeGreaterThan(40 * (1 + mean) + 1);
  });

  it("makes a backend with hidden load wait longer than one whose load is all this gateway's", () => {
    // Both have 5 of 8 slots taken on average; only b's are known to be there.
    const a = createEndpointLoad();
    const b = createEndpointLoad();
    serve(a, 0, 40);
    serve(b, 0, 40);
    a.onReport(report({ queue: { inFlight: 5, queued: 0, source: {} }, concurrencyLimit: 8 }), 0);
    for (let i = 0; i < 5; i++) b.onRequestStart(0);
    b.onReport(report({ queue: { inFlight: 5, queued: 0, source: {} }, concurrencyLimit: 8 }), 0);
    expect(a.snapshot(0).hiddenInFlight).toBeCloseTo(5, 6);
    expect(b.snapshot(0).hiddenInFlight).toBeCloseTo(0, 6);
    expect(a.expectedWaitMs(0)).toBeGreaterThan(b.expectedWaitMs(0));
  });
});
