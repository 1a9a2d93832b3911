import type { MetricsReport } from '@loadwise/protocol';
import { cpuEvidence, ELASTIC_MEMORY_REPORTS, MIN_CPU_COMPLETIONS } from './cpu-capacity';
import { createEndpointLoad } from './endpoint-load';
import { DEFAULT_UTILIZATION_WEIGHT, MAX_EXPECTED_WAIT_MS } from './load-options';
import { MIN_LOCAL_SAMPLES } from './service-time';

interface Figures {
  rps?: number;
  windowMs?: number;
  latencyMeanMs?: number;
  cpuCores?: number;
  limit?: number;
  cgroupUtil?: number;
  hostUtil?: number;
  cpuCount?: number;
  slots?: number;
  outstanding?: number;
  early?: boolean;
}

/** A report of a single-slot service at 2 ms of CPU per request, in a half-core cgroup. */
function report(f: Figures = {}): MetricsReport {
  const has = (k: keyof Figures) => k in f;
  const rps = has('rps') ? f.rps : 150;
  return {
    v: 1,
    kind: 'metrics',
    backendId: 'b',
    epochMs: 1,
    seq: 1,
    ts: 0,
    intervalMs: 1000,
    state: 'online',
    host: {
      cpuUtilization: has('hostUtil') ? f.hostUtil! : 0.2,
      memoryUtilization: 0.3,
      memoryAvailableBytes: 1e9,
      ...(has('cpuCount') ? { cpuCount: f.cpuCount! } : {}),
    },
    process: { pid: 1, cpuCores: has('cpuCores') ? f.cpuCores! : 0.3, rssBytes: 1e8 },
    ...(has('limit') || has('cgroupUtil')
      ? { cgroup: { cpuLimitCores: f.limit!, cpuUtilization: f.cgroupUtil! } }
      : { cgroup: { cpuLimitCores: 0.5, cpuUtilization: 0.6 } }),
    queue: { inFlight: f.outstanding ?? 0, source: { inFlight: 'prometheus' } },
    concurrencyLimit: has('slots') ? f.slots! : 1,
    traffic: {
      rps: rps!,
      windowMs: has('windowMs') ? f.windowMs! : 1000,
      latencyMeanMs: has('latencyMeanMs') ? f.latencyMeanMs! : 4,
    },
    health: { verdict: 'up' },
    ...(f.early ? { early: true } : {}),
  };
}

describe('cpuEvidence: CPU per request, headroom, throughput', () => {
  it('a cgroup with room: μ = headroom / CPU per request, not CPU-bound below 80% of it', () => {
    // 0.3 cores for 150 req/s: 2 ms per request; the cgroup (0.5 cores) is 60% busy, all of it ours.
    const e = cpuEvidence(report(), 1)!;
    expect(e.cpuPerRequestMs).toBeCloseTo(2, 9);
    expect(e.availableCores).toBeCloseTo(0.5, 9);
    expect(e.throughputRps).toBeCloseTo(250, 6);
    expect(e.elastic).toBe(false);
    expect(e.bound).toBe(false);
  });

  it('CPU-bound at 80% of the headroom; a steady neighbour lowers the headroom', () => {
    // 0.2 of the 0.5 cores are another process's: 0.3 left, the service uses 0.27 of it.
    const e = cpuEvidence(report({ cpuCores: 0.27, rps: 135, cgroupUtil: 0.94, limit: 0.5 }), 1)!;
    expect(e.availableCores).toBeCloseTo(0.3, 9);
    expect(e.throughputRps).toBeCloseTo(150, 6);
    expect(e.bound).toBe(true);
  });

  it('elastic others (cgroup kept full): μ is what the service did, a lower bound, never bound', () => {
    const e = cpuEvidence(report({ cpuCores: 0.15, rps: 75, cgroupUtil: 1, limit: 0.5 }), 1)!;
    expect(e.elastic).toBe(true);
    expect(e.throughputRps).toBeCloseTo(75, 6);
    expect(e.bound).toBe(false);
  });

  it('a service alone at its quota is CPU-bound, not elastic', () => {
    const e = cpuEvidence(report({ cpuCores: 0.5, rps: 250, cgroupUtil: 1, limit: 0.5 }), 1)!;
    expect(e.elastic).toBe(false);
    expect(e.bound).toBe(true);
    expect(e.throughputRps).toBeCloseTo(250, 6);
  });

  it('without a cgroup quota, the host: its cores minus the others, at most one core per slot', () => {
    const r = report({ cpuCores: 0.5, rps: 250, cpuCount: 4, hostUtil: 0.5 });
    delete r.cgroup;
    // Others take 1.5 of 4 cores: 2.5 left, but one slot uses one core at most.
    expect(cpuEvidence(r, 1)!.availableCores).toBeCloseTo(1, 9);
    expect(cpuEvidence(r, undefined)!.availableCores).toBeCloseTo(2.5, 9);
  });

  it('no evidence: too few completions, too little process CPU, no limit', () => {
    const few = (MIN_CPU_COMPLETIONS - 1) / 2; // per second, over a 2 s window
    expect(cpuEvidence(report({ rps: few, windowMs: 2000 }), 1)).toBeUndefined();
    expect(cpuEvidence(report({ rps: MIN_CPU_COMPLETIONS, windowMs: 1000 }), 1)).toBeDefined();
    expect(cpuEvidence(report({ cpuCores: 0.005 }), 1)).toBeUndefined();
    const noLimit = report();
    delete noLimit.cgroup;
    expect(cpuEvidence(noLimit, 1)).toBeUndefined();
    const noProcess = report();
    delete noProcess.process;
    expect(cpuEvidence(noProcess, 1)).toBeUndefined();
  });

  it("without the agent's traffic figures, this gateway's own completion rate stands in", () => {
    const noTraffic = report({ cpuCores: 0.45, cgroupUtil: 0.9, limit: 0.5 });
    delete noTraffic.traffic;
    expect(cpuEvidence(noTraffic, 1)).toBeUndefined();
    // 225 completions over the last 1 s interval: 2 ms per request, μ = 0.5 / 2 ms = 250 req/s.
    const e = cpuEvidence(noTraffic, 1, { rps: 225, windowMs: 1000 })!;
    expect(e.cpuPerRequestMs).toBeCloseTo(2, 9);
    expect(e.throughputRps).toBeCloseTo(250, 6);
    expect(e.bound).toBe(true);
    // The same evidence gates: too few completions in the window is no figure.
    expect(cpuEvidence(noTraffic, 1, { rps: 19, windowMs: 1000 })).toBeUndefined();
    for (const x of [NaN, -1, 0, Infinity])
      expect(cpuEvidence(noTraffic, 1, { rps: x, windowMs: 1000 })).toBeUndefined();
    // The agent's own rate wins when it has one.
    expect(cpuEvidence(report(), 1, { rps: 10, windowMs: 1000 })!.cpuPerRequestMs).toBeCloseTo(
      2,
      9,
    );
  });

  const hostile = [NaN, -1, 0, Infinity, -Infinity, 1e300];
  it.each(
    hostile.flatMap((x) =>
      (['rps', 'windowMs', 'cpuCores', 'limit', 'cgroupUtil', 'latencyMeanMs'] as const).map(
        (k) => [k, x] as const,
      ),
    ),
  )('hostile %s = %d: no figure, or a finite positive one', (k, x) => {
    const e = cpuEvidence(report({ [k]: x, ...(k === 'limit' ? { cgroupUtil: 0.6 } : {}) }), 1);
    if (e === undefined) return;
    for (const v of [e.cpuPerRequestMs, e.availableCores, e.throughputRps]) {
      expect(Number.isFinite(v)).toBe(true);
      expect(v).toBeGreaterThan(0);
    }
  });
});

describe('the CPU term in the expected wait', () => {
  const β = DEFAULT_UTILIZATION_WEIGHT;
  // CPU-bound: 0.45 of 0.5 cores for 225 req/s: μ = 250 req/s, s = c / μ = 4 ms.
  const bound = () => report({ cpuCores: 0.45, rps: 225, cgroupUtil: 0.9, limit: 0.5 });

  it('a CPU-bound backend: s = c / μ, the queue ahead drains at μ', () => {
    const load = createEndpointLoad();
    load.onReport({ ...bound(), queue: { inFlight: 3, source: {} } }, 0);
    const snap = load.snapshot(0);
    expect(snap.serviceTimeSource).toBe('cpu');
    expect(snap.cpuThroughputRps).toBeCloseTo(250, 6);
    expect(snap.serviceTimeMs).toBeCloseTo(4, 9);
    // o = 3 hidden, c = 1: wait = 4 × (1 + 3 + β).
    expect(load.expectedWaitMs(0)).toBeCloseTo(4 * (4 + β), 6);
  });

  it("a report without traffic figures: the rate is this gateway's completions between scheduled reports", () => {
    const load = createEndpointLoad();
    const noTraffic = (early = false): MetricsReport => {
      const r = report({ cpuCores: 0.45, cgroupUtil: 0.9, limit: 0.5, early });
      delete r.traffic;
      return r;
    };
    load.onReport(noTraffic(), 0);
    // No interval seen yet: no rate, no CPU figure.
    expect(load.snapshot(0).cpuThroughputRps).toBeUndefined();
    // 225 completions in the next second (an early report in between does not cut the window).
    for (let i = 0; i < 225; i++) {
      const t = 1 + i * 4;
      load.onRequestStart(t);
      load.onRequestEnd(t + 3, 3, true);
      if (i === 100) load.onReport(noTraffic(true), t + 3);
    }
    load.onReport(noTraffic(), 1000);
    expect(load.snapshot(1000).cpuThroughputRps).toBeCloseTo(250, 6);
    expect(load.snapshot(1000).serviceTimeSource).toBe('cpu');
    // A failed request is not a completion: the next interval has 0 and no figure.
    load.onRequestStart(1100);
    load.onRequestEnd(1110, 10, false);
    load.onReport(noTraffic(), 2000);
    expect(load.snapshot(2000).cpuThroughputRps).toBeUndefined();
  });

  it('latency figures that disagree do not move a CPU-bound service time', () => {
    const load = createEndpointLoad();
    load.onReport(bound(), 0);
    for (const latency of [1, 30, 2, 60]) {
      load.onRequestStart(10);
      load.onRequestEnd(10, latency, true);
    }
    expect(load.snapshot(10).serviceTimeMs).toBeCloseTo(4, 9);
  });

  it('an early report keeps the last scheduled CPU figures', () => {
    const load = createEndpointLoad();
    load.onReport(bound(), 0);
    load.onReport({ ...report({ cpuCores: 0.1, rps: 200, early: true }) }, 100);
    expect(load.snapshot(100).cpuThroughputRps).toBeCloseTo(250, 6);
    expect(load.snapshot(100).serviceTimeSource).toBe('cpu');
    // A scheduled one replaces them.
    load.onReport(report(), 1000);
    expect(load.snapshot(1000).serviceTimeSource).not.toBe('cpu');
  });

  it('a stale report stops counting: back to the latency', () => {
    const load = createEndpointLoad({ staleAfterMs: 3000 });
    load.onReport(bound(), 0);
    load.onRequestStart(0);
    load.onRequestEnd(1, 20, true);
    expect(load.snapshot(2000).serviceTimeSource).toBe('cpu');
    const later = load.snapshot(3001);
    expect(later.serviceTimeSource).toBe('local');
    expect(later.cpuThroughputRps).toBeUndefined();
    expect(later.serviceTimeMs).toBeGreaterThan(4);
  });

  it('not CPU-bound (IO-bound: little CPU per request): the same wait as without CPU figures', () => {
    const io = report({ cpuCores: 0.02, rps: 200, cgroupUtil: 0.1, limit: 2, slots: 8 });
    const withCpu = createEndpointLoad();
    const without = createEndpointLoad();
    const noProcess = { ...io };
    delete noProcess.process;
    withCpu.onReport(io, 0);
    without.onReport(noProcess, 0);
    for (const l of [withCpu, without]) {
      l.onRequestStart(0);
      l.onRequestEnd(1, 12, true);
      l.onRequestStart(2);
    }
    expect(withCpu.snapshot(5).cpuThroughputRps).toBeGreaterThan(0);
    expect(withCpu.expectedWaitMs(5)).toBe(without.expectedWaitMs(5));
  });

  it('below the CPU-bound share: c / μ is a floor under the latency, not a replacement', () => {
    // The benchmark's b2: 0.21 of 0.3 cores (70%, not CPU-bound) for 95 req/s: 2.2 ms of CPU
    // per request, μ = 0.3 / 2.2 ms = 136 req/s, c / μ = 7.3 ms. On a CFS quota a lone request
    // is answered in 2.2 ms while the period's quota lasts; the queue drains at 7.3 ms each.
    const quota = () => report({ cpuCores: 0.21, rps: 95, cgroupUtil: 0.7, limit: 0.3 });
    const load = createEndpointLoad();
    load.onReport({ ...quota(), queue: { inFlight: 2, source: {} } }, 0);
    load.onRequestStart(0);
    load.onRequestEnd(3, 3, true);
    const snap = load.snapshot(3);
    const floor = (1000 * 0.21) / 95 / 0.3;
    expect(snap.serviceTimeSource).toBe('cpu');
    expect(snap.serviceTimeMs).toBeCloseTo(1000 / ((0.3 * 95) / 0.21), 9);
    expect(snap.serviceTimeMs).toBeCloseTo(floor, 9);
    // A latency above the floor stands (not exactly the s without process figures: the hidden
    // load's drain time, hidden-load.ts, is the floored s).
    const latencyOnly = (r: MetricsReport, latencyMs: number) => {
      const noProcess = { ...r };
      delete noProcess.process;
      return [r, noProcess].map((x) => {
        const l = createEndpointLoad();
        l.onReport(x, 0);
        // Enough samples for the local figure to speak over the report (MIN_LOCAL_SAMPLES).
        for (let i = 0; i < MIN_LOCAL_SAMPLES; i++) {
          l.onRequestStart(i * latencyMs);
          l.onRequestEnd((i + 1) * latencyMs, latencyMs, true);
        }
        return l.snapshot(MIN_LOCAL_SAMPLES * latencyMs);
      });
    };
    const [slow, slowNoCpu] = latencyOnly(quota(), 20);
    expect(slow!.serviceTimeSource).toBe('local');
    expect(slow!.serviceTimeMs).toBeGreaterThan(floor);
    expect(slow!.serviceTimeMs).toBeCloseTo(slowNoCpu!.serviceTimeMs, 0);
    // Elastic others (a busy loop takes what the service leaves): no floor, the latency judges.
    const [elastic, elasticNoCpu] = latencyOnly(
      report({ cpuCores: 0.05, rps: 22, cgroupUtil: 1, limit: 0.3 }),
      3,
    );
    expect(elastic!.cpuThroughputRps).toBeGreaterThan(0);
    expect(elastic!.serviceTimeSource).toBe('local');
    expect(elastic!.serviceTimeMs).toBe(elasticNoCpu!.serviceTimeMs);
  });

  it('elastic others stay elastic for ELASTIC_MEMORY_REPORTS scheduled reports', () => {
    // A busy loop keeps the cgroup full (100%): elastic. One report reads 90% (sampling): by
    // the threshold alone the service's own use (0.05 of 0.3 cores) would be its capacity,
    // μ = 35 req/s and a floor of 28 ms under a 3 ms latency.
    const full = report({ cpuCores: 0.05, rps: 22, cgroupUtil: 1, limit: 0.3 });
    const dip = report({ cpuCores: 0.05, rps: 22, cgroupUtil: 0.9, limit: 0.3 });
    expect(cpuEvidence(dip, 1)!.elastic).toBe(false);
    const load = createEndpointLoad();
    load.onReport(full, 0);
    for (let i = 0; i < MIN_LOCAL_SAMPLES; i++) {
      load.onRequestStart(0);
      load.onRequestEnd(3, 3, true);
    }
    let t = 0;
    for (let i = 0; i < ELASTIC_MEMORY_REPORTS; i++) {
      t += 1000;
      load.onReport(dip, t);
      load.onRequestStart(t);
      load.onRequestEnd(t + 3, 3, true);
      expect(load.snapshot(t + 3).serviceTimeSource).toBe('local');
    }
    t += 1000;
    load.onReport(dip, t);
    expect(load.snapshot(t).serviceTimeSource).toBe('cpu');
  });

  it("the local rate counts only while this gateway is the backend's only sender", () => {
    // A gauge agent (no traffic figures): the rate is this gateway's completions. The backend
    // shows 3 outstanding where this gateway has 1 in flight: others send too, and its
    // completions would overrate CPU per request about 3x.
    const gauge = (outstanding: number): MetricsReport => {
      const r = report({ cpuCores: 0.45, cgroupUtil: 0.9, limit: 0.5, outstanding });
      delete r.traffic;
      return r;
    };
    const run = (outstanding: number) => {
      const load = createEndpointLoad();
      let t = 0;
      for (let interval = 0; interval < 6; interval++) {
        for (let i = 0; i < 100; i++, t += 10) {
          load.onRequestStart(t);
          load.onRequestEnd(t + 3, 3, true);
        }
        load.onRequestStart(t);
        load.onReport(gauge(outstanding), t);
        load.onRequestEnd(t + 3, 3, true);
      }
      return load.snapshot(t);
    };
    // Alone: the backend's 1 outstanding is this gateway's 1 in flight.
    expect(run(1).cpuThroughputRps).toBeGreaterThan(0);
    expect(run(3).cpuThroughputRps).toBeUndefined();
    expect(run(3).serviceTimeSource).not.toBe('cpu');
  });

  it('the CPU pressure penalty applies only without the process CPU', () => {
    // No queue or traffic figures: this gateway's share of the backend is 1, the full penalty.
    const full = report({ cpuCores: 0.15, cgroupUtil: 1, limit: 0.5 });
    delete full.queue;
    delete full.traffic;
    const withCpu = createEndpointLoad();
    withCpu.onReport(full, 0);
    expect(withCpu.snapshot(0).penaltyFactor).toBe(1);
    const noProcess = { ...full };
    delete noProcess.process;
    const old = createEndpointLoad({ cpuPressurePenalty: 1 });
    old.onReport(noProcess, 0);
    // 100% CPU: x (1 + cpuPressurePenalty) where the penalty is on.
    expect(old.snapshot(0).penaltyFactor).toBeCloseTo(2, 9);
    // It is off by default: no penalty without the process CPU either.
    const byDefault = createEndpointLoad();
    byDefault.onReport(noProcess, 0);
    expect(byDefault.snapshot(0).penaltyFactor).toBe(1);
    // With the process CPU but too little traffic for evidence: no penalty either.
    expect(withCpu.snapshot(0).cpuThroughputRps).toBeUndefined();
  });

  it('a degraded verdict CPU alone explains is not penalised unless the CPU penalty is on; other causes are', () => {
    const degraded = (causes: string[] | undefined, process = true): MetricsReport => {
      const r = report({ cpuCores: 0.15, cgroupUtil: 1, limit: 0.5 });
      delete r.queue;
      delete r.traffic;
      if (!process) delete r.process;
      r.health = { verdict: 'degraded', reason: 'cgroup CPU 100%', ...(causes ? { causes } : {}) };
      return r;
    };
    const factor = (r: MetricsReport, opts?: object): number => {
      const load = createEndpointLoad(opts);
      load.onReport(r, 0);
      return load.snapshot(0).penaltyFactor;
    };
    // A neighbour keeps the cgroup full: the agent says degraded for CPU, CPU as capacity judges.
    expect(factor(degraded(['cpu']))).toBe(1);
    // Memory or a full queue too, or an agent that names no causes: the degraded penalty (x2).
    expect(factor(degraded(['cpu', 'memory']))).toBeCloseTo(2, 9);
    expect(factor(degraded(['queue']))).toBeCloseTo(2, 9);
    expect(factor(degraded(undefined))).toBeCloseTo(2, 9);
    expect(factor(degraded([]))).toBeCloseTo(2, 9);
    // Without the process CPU and with the CPU pressure penalty on, CPU is a penalty: x2 for
    // 100%, x2 degraded. By default (penalty off) a CPU-only verdict counts for nothing there
    // either; other causes still do.
    expect(factor(degraded(['cpu'], false), { cpuPressurePenalty: 1 })).toBeCloseTo(4, 9);
    expect(factor(degraded(['cpu'], false))).toBe(1);
    expect(factor(degraded(['cpu', 'memory'], false))).toBeCloseTo(2, 9);
    expect(factor(degraded(undefined, false))).toBeCloseTo(2, 9);
  });

  it.each([NaN, -1, 0, Infinity])(
    'hostile figures (%d everywhere) never give NaN or a zero wait',
    (x) => {
      const load = createEndpointLoad();
      load.onReport(
        report({ cpuCores: x, rps: x, limit: x, cgroupUtil: x, latencyMeanMs: x, windowMs: x }),
        0,
      );
      const w = load.expectedWaitMs(0);
      expect(w).toBeGreaterThan(0);
      expect(w).toBeLessThanOrEqual(MAX_EXPECTED_WAIT_MS);
      const snap = load.snapshot(0);
      expect(Number.isNaN(snap.serviceTimeMs)).toBe(false);
    },
  );
});
