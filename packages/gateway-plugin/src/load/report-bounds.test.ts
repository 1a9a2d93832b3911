/**
 * What a signed report may claim against what this gateway saw (docs/strategies.md,
 * "What the gateway saw beats what a report says"): one compromised backend with its
 * own key must not win the picks by its reports alone. Times are the caller's `nowMs`:
 * no real clock.
 */
import type { MetricsReport } from '@loadwise/protocol';
import { COHORT_CLAIM_RATIO } from './capacity';
import { createLoadCohort } from './cohort';
import { createEndpointLoad, STALL_GRACE_MS, STALL_RATIO } from './endpoint-load';

function report(patch: Partial<MetricsReport> = {}): MetricsReport {
  return {
    v: 1,
    kind: 'metrics',
    backendId: 'b',
    epochMs: 1,
    seq: 1,
    ts: 0,
    intervalMs: 1000,
    state: 'online',
    host: { cpuUtilization: 0.2, memoryUtilization: 0.3, memoryAvailableBytes: 1e9 },
    health: { verdict: 'up' },
    ...patch,
  };
}

type Load = ReturnType<typeof createEndpointLoad>;

/** `n` requests of `latencyMs` each, one after the other, ending at `t`. */
function serve(load: Load, t: number, latencyMs: number, n = 1): void {
  for (let i = 0; i < n; i++) {
    load.onRequestStart(t - latencyMs);
    load.onRequestEnd(t, latencyMs, true);
  }
}

/** `n` at once of `latencyMs` each, ending together at `t`: the learned capacity sees n. */
function serveTogether(load: Load, t: number, latencyMs: number, n: number): void {
  for (let i = 0; i < n; i++) load.onRequestStart(t - latencyMs);
  for (let i = 0; i < n; i++) load.onRequestEnd(t, latencyMs, true);
}

describe('held requests: a backend that answers none of them scores at least stall / STALL_RATIO', () => {
  it('a backend claiming 100000 slots and 0.05 ms looks slower the longer it holds requests', () => {
    const cohort = createLoadCohort();
    const honest = createEndpointLoad({ cohort });
    const evil = createEndpointLoad({ cohort });
    serve(honest, 1000, 10, 50);
    const lie = report({
      concurrencyLimit: 100_000,
      queue: { inFlight: 0, queued: 0, source: {} },
      traffic: { rps: 0, latencyMeanMs: 0.05 },
    });
    evil.onReport(lie, 1000);
    for (let i = 0; i < 20; i++) evil.onRequestStart(1000);
    // Nothing answered yet: the lie wins the first picks (a report may say the backend is
    // fast until this gateway has seen it answer), and the stall takes over from there.
    // Held for 1 s without an answer: (1000 - grace) / STALL_RATIO ms, whatever the report says.
    evil.onReport(lie, 2000);
    expect(evil.expectedWaitMs(2000)).toBeCloseTo((1000 - STALL_GRACE_MS) / STALL_RATIO, 6);
    expect(evil.expectedWaitMs(2000)).toBeGreaterThanOrEqual(honest.expectedWaitMs(2000) * 20);
  });

  it('clients giving up do not end the stall; an answer does', () => {
    const load = createEndpointLoad();
    serve(load, 100, 10, 20);
    for (let i = 0; i < 3; i++) load.onRequestStart(100);
    load.onRequestCancel(2000); // a client gave up: no answer, no sample
    expect(load.expectedWaitMs(4100)).toBeCloseTo((4000 - STALL_GRACE_MS) / STALL_RATIO, 6);
    load.onRequestStart(4090);
    load.onRequestEnd(4100, 10, true); // a quick one answers: two still held, the clock ends
    expect(load.expectedWaitMs(4105)).toBeLessThan(100);
    // Nothing sent since: two slow requests held are no stall (the quick one answered).
    expect(load.expectedWaitMs(6100)).toBeLessThan(100);
    // Two more sent, neither answered: the clock runs from the second.
    load.onRequestStart(6100);
    load.onRequestStart(6200);
    expect(load.expectedWaitMs(8200)).toBeCloseTo((2000 - STALL_GRACE_MS) / STALL_RATIO, 6);
  });

  it('a slow request among quick answers costs nothing: each answer restarts the clock', () => {
    const load = createEndpointLoad();
    serve(load, 100, 10, 20);
    const quick = load.expectedWaitMs(100);
    load.onRequestStart(100); // a 30 s export
    for (let t = 110; t <= 30_000; t += 10) serve(load, t, 10);
    // One in flight (the export), answers every 10 ms: the score is the queue model's.
    expect(load.expectedWaitMs(30_000)).toBeLessThan(quick * 1.5);
  });

  it('one slow request alone never stalls: the clock starts at the second sent after an answer', () => {
    const load = createEndpointLoad();
    serve(load, 100, 10, 20);
    load.onRequestStart(60_000); // a 15 s export, nothing else sent there
    // One request ahead on one learned slot, 10 ms each: the queue model's 22.5 ms, however
    // old. Before: it rose with the export's age, nothing more was sent, nothing answered.
    expect(load.expectedWaitMs(60_005)).toBeCloseTo(22.5, 6);
    expect(load.expectedWaitMs(75_000)).toBeCloseTo(22.5, 6);
    load.onRequestStart(75_000); // a second one, not answered either: that is a stall
    expect(load.expectedWaitMs(76_000)).toBeCloseTo((1000 - STALL_GRACE_MS) / STALL_RATIO, 6);
  });

  it('a response head is an answer: a download the client reads slowly is no stall', () => {
    const load = createEndpointLoad();
    serve(load, 100, 10, 20);
    load.onRequestStart(1000);
    load.onRequestStart(1000);
    load.onResponseHead(); // its head came; the client reads its body for a minute
    expect(load.expectedWaitMs(61_000)).toBeLessThan(100);
  });

  it('saturation is judged without the stall floor (nothing sent, nothing answers to end it)', () => {
    const load = createEndpointLoad();
    serve(load, 100, 10, 20);
    load.onRequestStart(1000);
    load.onRequestStart(1000);
    expect(load.expectedWaitMs(9000)).toBeCloseTo((8000 - STALL_GRACE_MS) / STALL_RATIO, 6);
    expect(load.expectedWaitMs(9000, false)).toBeLessThan(100);
  });
});

describe("the reported concurrencyLimit: the backend's own, for its current incarnation", () => {
  const limit = (n: number | undefined, early = false) =>
    report({ ...(n !== undefined ? { concurrencyLimit: n } : {}), ...(early ? { early } : {}) });

  it('admit() keeps it: admit comes right after the report that brought the backend back', () => {
    const load = createEndpointLoad();
    load.onReport(limit(8), 0);
    load.admit(0); // registry.ts applyMetrics: the report, then the recompute that admits
    expect(load.snapshot(0).capacity).toBe(8);
    expect(load.snapshot(0).capacitySource).toBe('reported');
  });

  it('a scheduled report without one withdraws it; an early report (which repeats it) does not', () => {
    const load = createEndpointLoad();
    load.onReport(limit(16), 0);
    load.onReport(limit(undefined, true), 300);
    expect(load.snapshot(300).capacity).toBe(16);
    load.onReport(limit(undefined), 1000);
    expect(load.snapshot(1000).capacitySource).not.toBe('reported');
    expect(load.snapshot(1000).capacity).toBe(1);
  });

  it("one member's claim lifts no peer: it counts in the cohort up to COHORT_CLAIM_RATIO × what was learned", () => {
    const cohort = createLoadCohort();
    const honest = createEndpointLoad({ cohort });
    const evil = createEndpointLoad({ cohort });
    serveTogether(honest, 100, 10, 8);
    expect(honest.snapshot(100).capacity).toBe(8);
    evil.onReport(limit(100_000), 100);
    // Nothing learned of evil: its claim is not in the mean at all.
    expect(cohort.meanCapacity()).toBe(8);
    expect(honest.snapshot(100).capacity).toBe(8);
    // Learned 2 of it: its claim counts as 2 × COHORT_CLAIM_RATIO.
    serveTogether(evil, 200, 10, 2);
    expect(cohort.meanCapacity()).toBe((8 + 2 * COHORT_CLAIM_RATIO) / 2);
    expect(honest.snapshot(200).capacity).toBe(8);
    // Evil itself still scores its reported figure while it holds nothing.
    expect(evil.snapshot(200).capacity).toBe(100_000);
  });

  it('an honest fleet whose agents report their limits still gives a newcomer their prior', () => {
    const cohort = createLoadCohort();
    const members = [0, 1].map(() => createEndpointLoad({ cohort }));
    for (const m of members) {
      m.onReport(limit(8), 0);
      serveTogether(m, 100, 10, 4);
    }
    const newcomer = createEndpointLoad({ cohort });
    expect(newcomer.snapshot(100).capacitySource).toBe('cohort');
    expect(newcomer.snapshot(100).capacity).toBe(8);
  });
});

describe('figures that contradict each other: never fewer than no hidden requests', () => {
  it('a mean far above the snapshot (rps 1e7 x 1 s, nothing in flight) is no negative hidden load', () => {
    // An adversarial review: a backend signing with its own key reported inFlight 0 with
    // rps 1e7 and a 1 s mean latency. The transient (snapshot − mean) outweighed the rest
    // of the hidden estimate: expectedWaitMs -50 against about 22 for an honest backend,
    // below any idle one's.
    // Two backends, as in the review: the cohort's ratio is the mean of both.
    const cohort = createLoadCohort();
    const honest = createEndpointLoad({ cohort });
    const liar = createEndpointLoad({ cohort });
    const lie = report({
      queue: { inFlight: 0, queued: 0, source: {} },
      traffic: { rps: 1e7, latencyMeanMs: 1000 },
    });
    const truth = report({
      queue: { inFlight: 1, queued: 0, source: {} },
      traffic: { rps: 50, latencyMeanMs: 20 },
    });
    for (let t = 1000; t <= 3000; t += 1000) {
      for (const l of [honest, liar]) serveTogether(l, t, 20, 4);
      honest.onReport(truth, t);
      liar.onReport(lie, t);
    }
    for (const t of [3000, 3001, 3100, 3500]) {
      expect(liar.snapshot(t).hiddenInFlight ?? 0).toBeGreaterThanOrEqual(0);
      // Never below its own service time: nothing waits less than no wait at all.
      expect(liar.expectedWaitMs(t)).toBeGreaterThanOrEqual(liar.snapshot(t).serviceTimeMs);
    }
  });
});
