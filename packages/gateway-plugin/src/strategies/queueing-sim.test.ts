/**
 * A discrete-event queueing simulation (simulated time, seeded random: no
 * sleeps, no wall-clock thresholds) that checks the claim of docs/architecture.md, rule 4: the
 * default strategy must beat least connections where hidden load exists and
 * never be worse where none does. Backends are c-slot FIFO servers with
 * exponential service times; arrivals are Poisson; an agent per backend
 * reports its queue every second, as health-agent does.
 */
import type { MetricsReport } from '@loadwise/protocol';
import { createEndpointLoad, createLoadCohort } from '../load';
import { createStrategy } from './registry';
import { createSeededRandom } from './seeded-random';
import { Events } from './test-sim-events';
import type { Endpoint } from './types';

interface BackendSpec {
  slots: number;
  serviceMs: number;
}

interface Scenario {
  backends: BackendSpec[];
  /** This gateway's arrival rate (per gateway when there are several). */
  gatewayRps: number;
  /** Gateways sharing the backends, each with its own strategy and local state (default 1). */
  gateways?: number;
  /** Options of every gateway's strategy. */
  strategyOptions?: object;
  loadOptions?: object;
  noTraffic?: boolean;
  /** Load this gateway does not see (another gateway, a batch job): rps per backend. */
  hiddenRps?: number[];
  /** Slots per backend held for the whole run by requests no gateway sent (a batch job). */
  batch?: number[];
  /** Agents report concurrencyLimit (else the gateway must learn capacity). */
  reportLimit?: boolean;
  /** No agents at all: local signals only. */
  noReports?: boolean;
  /**
   * Agents also report early, as health-agent's early reports do
   * (packages/health-agent/src/early-report.ts): when outstanding rises by
   * `rise` over the lowest figure since the last report, at most one report per
   * `minGapMs`. Undefined: scheduled reports only.
   */
  early?: { rise: number; minGapMs: number };
  /** Every request takes exactly serviceMs (bench/procs/backend.ts), instead of an exponential time. */
  fixedService?: boolean;
  durationMs: number;
}

interface Job {
  ep: Endpoint | undefined; // undefined: hidden traffic
  startMs: number;
  serviceMs: number;
}

interface SimResult {
  meanMs: number;
  p99Ms: number;
  /** Per second after the first: the share of this gateway's requests its busiest backend got. */
  busiestShares: number[];
  /** Each backend's share of the gateways' requests after the first second. */
  shares: number[];
}

function simulate(strategyName: string, sc: Scenario, seed = 1): SimResult {
  const random = createSeededRandom(seed);
  const exp = (mean: number) => -Math.log(1 - random()) * mean;
  const service = (b: number) =>
    sc.fixedService ? sc.backends[b]!.serviceMs : exp(sc.backends[b]!.serviceMs);
  // One view of the backends per gateway: its own loads, cohort and strategy.
  const views = Array.from({ length: sc.gateways ?? 1 }, (_, g) => {
    const cohort = createLoadCohort();
    const eps: Endpoint[] = sc.backends.map((_, i) => ({
      id: `b${i}`,
      weight: 1,
      load: createEndpointLoad({ cohort, ...sc.loadOptions }),
    }));
    const strategy = createStrategy(strategyName, {
      random: createSeededRandom(seed + 100 + g),
      ...sc.strategyOptions,
    });
    strategy.setEndpoints(eps);
    return { eps, strategy };
  });
  const busy = sc.backends.map(() => 0);
  const queues: Job[][] = sc.backends.map(() => []);
  const done: number[][] = sc.backends.map(() => []); // completion latencies in the report window
  const latencies: number[] = [];
  /** Picks per second per backend (all gateways). */
  const picks: number[][] = [];
  const events = new Events();

  // Busy slot-milliseconds since the last report: the agent's CPU figure is an average over
  // its interval (as /proc/stat deltas are), not an instantaneous sample.
  const busyMs = sc.backends.map(() => 0);
  const lastChange = sc.backends.map(() => 0);
  const account = (b: number, at: number) => {
    busyMs[b]! += busy[b]! * (at - lastChange[b]!);
    lastChange[b] = at;
  };
  const startService = (b: number, job: Job, now: number) => {
    account(b, now);
    busy[b]!++;
    events.push(now + job.serviceMs, () => finish(b, job));
  };
  let now = 0;
  const finish = (b: number, job: Job) => {
    account(b, now);
    busy[b]!--;
    const latency = now - job.startMs;
    done[b]!.push(latency);
    if (job.ep !== undefined) {
      job.ep.load.onRequestEnd(now, latency, true);
      latencies.push(latency);
    }
    const next = queues[b]!.shift();
    if (next !== undefined) startService(b, next, now);
    watchRise(b);
  };
  // Early reports: per backend, the last report sent, the lowest outstanding since, and
  // whether a check is already scheduled for the end of the gap.
  const lastReport: Array<MetricsReport | undefined> = sc.backends.map(() => undefined);
  const lastSentMs = sc.backends.map(() => -Infinity);
  const floor = sc.backends.map(() => 0);
  const checkPending = sc.backends.map(() => false);
  const sendReport = (b: number, r: MetricsReport) => {
    lastSentMs[b] = now;
    floor[b] = busy[b]! + queues[b]!.length;
    // Every gateway hears every report (one broker, several subscribers).
    for (const v of views) v.eps[b]!.load.onReport(r, now);
  };
  const watchRise = (b: number) => {
    const e = sc.early;
    const last = lastReport[b];
    if (e === undefined || last === undefined) return;
    const outstanding = busy[b]! + queues[b]!.length;
    if (outstanding < floor[b]!) floor[b] = outstanding;
    if (outstanding < floor[b]! + e.rise) return;
    // `now < last + gap`, not `now - last < gap`: the check runs at exactly last + gap.
    if (now < lastSentMs[b]! + e.minGapMs) {
      if (!checkPending[b]) {
        checkPending[b] = true;
        events.push(lastSentMs[b]! + e.minGapMs, () => {
          checkPending[b] = false;
          watchRise(b);
        });
      }
      return;
    }
    const queue = { inFlight: busy[b]!, queued: queues[b]!.length, source: {} };
    sendReport(b, { ...last, ts: now, queue, early: true });
  };
  const arrive = (b: number, job: Job) => {
    if (busy[b]! < sc.backends[b]!.slots) startService(b, job, now);
    else queues[b]!.push(job);
    watchRise(b);
  };

  // Each gateway's arrivals.
  for (const { eps, strategy } of views) {
    const gatewayArrival = () => {
      const p = strategy.pick({ nowMs: now })!;
      const b = eps.indexOf(p.endpoint);
      p.endpoint.load.onRequestStart(now);
      (picks[Math.floor(now / 1000)] ??= sc.backends.map(() => 0))[b]!++;
      arrive(b, { ep: p.endpoint, startMs: now, serviceMs: service(b) });
      const next = now + exp(1000 / sc.gatewayRps);
      if (next < sc.durationMs) events.push(next, gatewayArrival);
    };
    events.push(exp(1000 / sc.gatewayRps), gatewayArrival);
  }
  // Hidden arrivals, per backend.
  (sc.hiddenRps ?? []).forEach((rps, b) => {
    if (rps <= 0) return;
    const hidden = () => {
      arrive(b, { ep: undefined, startMs: now, serviceMs: service(b) });
      const next = now + exp(1000 / rps);
      if (next < sc.durationMs) events.push(next, hidden);
    };
    events.push(exp(1000 / rps), hidden);
  });
  (sc.batch ?? []).forEach((held, b) => {
    for (let i = 0; i < held; i++) {
      events.push(0, () => arrive(b, { ep: undefined, startMs: 0, serviceMs: 2 * sc.durationMs }));
    }
  });
  // Agents: one report per second per backend, each with its own phase.
  if (!sc.noReports) {
    sc.backends.forEach((spec, b) => {
      const report = () => {
        account(b, now);
        const cpuUtilization = Math.min(1, busyMs[b]! / (spec.slots * 1000));
        busyMs[b] = 0;
        const lat = done[b]!;
        const mean = lat.length ? lat.reduce((a, x) => a + x, 0) / lat.length : undefined;
        const r: MetricsReport = {
          v: 1,
          kind: 'metrics',
          backendId: `b${b}`,
          epochMs: 1,
          seq: 1,
          ts: now,
          intervalMs: 1000,
          state: 'online',
          host: {
            cpuUtilization,
            memoryUtilization: 0.4,
            memoryAvailableBytes: 1e9,
          },
          queue: { inFlight: busy[b]!, queued: queues[b]!.length, source: {} },
          ...(sc.reportLimit ? { concurrencyLimit: spec.slots } : {}),
          ...(sc.noTraffic
            ? {}
            : {
                traffic: {
                  rps: lat.length,
                  ...(mean === undefined ? {} : { latencyMeanMs: mean }),
                },
              }),
          health: { verdict: 'up' },
        };
        done[b] = [];
        lastReport[b] = r;
        sendReport(b, r);
        if (now + 1000 < sc.durationMs) events.push(now + 1000, report);
      };
      events.push(random() * 1000, report);
    });
  }

  for (let e = events.pop(); e !== undefined; e = events.pop()) {
    now = e[0];
    e[1]();
  }
  // Skip the first second (nothing known yet, every strategy alike).
  const measured = latencies.slice(Math.floor(sc.gatewayRps * views.length));
  measured.sort((a, b) => a - b);
  const busiestShares = picks
    .slice(1)
    .filter((counts) => counts !== undefined)
    .map((counts) => Math.max(...counts) / counts.reduce((a, x) => a + x, 0));
  const totals = sc.backends.map((_, b) =>
    picks.slice(1).reduce((a, counts) => a + (counts?.[b] ?? 0), 0),
  );
  const all = totals.reduce((a, x) => a + x, 0);
  return {
    meanMs: measured.reduce((a, x) => a + x, 0) / measured.length,
    p99Ms: measured[Math.floor(measured.length * 0.99)]!,
    busiestShares,
    shares: totals.map((x) => x / all),
  };
}

/** Backends of 8 slots each, one per service time: the benchmark's fleets (bench/scenarios.ts). */
const eight = (...serviceMs: number[]): BackendSpec[] =>
  serviceMs.map((ms) => ({ slots: 8, serviceMs: ms }));

/**
 * Bench scenario 4 (bench/scenarios.ts, identical): 3 x 8 slots x 40 ms, fixed as
 * bench/procs/backend.ts serves them, 420 rps (70%), agents reporting their limit. Scenario 2
 * (hidden load) is the same fleet at another rate.
 */
const SCENARIO_4: Scenario = {
  backends: eight(40, 40, 40),
  gatewayRps: 420,
  reportLimit: true,
  fixedService: true,
  durationMs: 20_000,
};

const THREE_EQUAL: BackendSpec[] = [
  { slots: 4, serviceMs: 10 },
  { slots: 4, serviceMs: 10 },
  { slots: 4, serviceMs: 10 },
];

describe('queueing simulation: load-aware against least-in-flight', () => {
  it('hidden load: another client keeps b0 75% busy; load-aware routes around it', () => {
    const sc: Scenario = {
      backends: THREE_EQUAL,
      gatewayRps: 600,
      hiddenRps: [300, 0, 0],
      reportLimit: true,
      durationMs: 10_000,
    };
    const la = simulate('load-aware', sc);
    const lif = simulate('least-in-flight', sc);
    const rr = simulate('round-robin', sc);
    expect(la.p99Ms).toBeLessThan(lif.p99Ms * 0.8);
    expect(la.meanMs).toBeLessThan(lif.meanMs);
    expect(lif.p99Ms).toBeLessThan(rr.p99Ms);
  });

  it('hidden load without a reported limit: capacity is learned from the queue', () => {
    const sc: Scenario = {
      backends: THREE_EQUAL,
      gatewayRps: 600,
      hiddenRps: [300, 0, 0],
      durationMs: 10_000,
    };
    expect(simulate('load-aware', sc).p99Ms).toBeLessThan(simulate('least-in-flight', sc).p99Ms);
  });

  it('no hidden load, equal backends: not worse than least-in-flight', () => {
    const sc: Scenario = { backends: THREE_EQUAL, gatewayRps: 900, durationMs: 10_000 };
    const la = simulate('load-aware', sc);
    const lif = simulate('least-in-flight', sc);
    expect(la.p99Ms).toBeLessThan(lif.p99Ms * 1.1);
    expect(la.meanMs).toBeLessThan(lif.meanMs * 1.1);
  });

  it.each([1, 2, 3])(
    'identical 64-slot backends at 500 rps (seed %i): no backend takes most of the traffic for long',
    (seed) => {
      // The rate sweep's fleet (bench/scenarios.ts, rate-sweep) with exponential service: one
      // backend's lucky samples made it the best, the others got no samples to correct theirs,
      // and it took every request for seconds at a time (23-24 of 29 seconds over 60%; the
      // sampling band of strategies/p2c-strategy.ts: 2-8). Slots never run out here, so the p99
      // is least-in-flight's either way; the share is what an operator sees.
      const sc: Scenario = {
        backends: [0, 1, 2].map(() => ({ slots: 64, serviceMs: 10 })),
        gatewayRps: 500,
        reportLimit: true,
        durationMs: 30_000,
      };
      const la = simulate('load-aware', sc, seed);
      const lif = simulate('least-in-flight', sc, seed);
      const skewed = la.busiestShares.filter((share) => share > 0.6).length;
      expect(skewed).toBeLessThanOrEqual(10);
      expect(la.p99Ms).toBeLessThan(lif.p99Ms * 1.05);
    },
  );

  it('rule 4 capacities 800/800/200 at 67% load, local signals only: better than least-in-flight', () => {
    const sc: Scenario = {
      backends: [
        { slots: 8, serviceMs: 10 },
        { slots: 8, serviceMs: 10 },
        { slots: 2, serviceMs: 10 },
      ],
      gatewayRps: 1200,
      noReports: true,
      durationMs: 10_000,
    };
    const la = simulate('load-aware', sc);
    const lif = simulate('least-in-flight', sc);
    const rr = simulate('round-robin', sc);
    // Least-in-flight keeps the 2-slot backend as busy as the 8-slot ones; expected wait does not.
    expect(la.p99Ms).toBeLessThan(lif.p99Ms * 0.9);
    // Round robin sends the small backend twice its capacity: its queue grows without bound.
    expect(rr.p99Ms).toBeGreaterThan(lif.p99Ms * 10);
  });
});

describe('queueing simulation: the CPU pressure penalty near saturation', () => {
  // Bench scenario 4's fleet (3 x 8 slots x 40 ms, fixed) at 480 rps (80%): the simulated agent's
  // CPU is its slots' busy share, as a host running only the service would show. Whichever
  // backend was busiest over the last second crossed the 85% threshold and was penalised for
  // the next one, its traffic went to the others, which crossed it in turn (docs/strategies.md,
  // "The pressure penalty"); least-in-flight does not read the CPU at all.
  const sc: Scenario = { ...SCENARIO_4, gatewayRps: 480 };

  it.each([1, 2, 3])(
    'identical backends at 80%% (seed %i): off by default, near least-in-flight; on, far above it',
    (seed) => {
      const lif = simulate('least-in-flight', sc, seed);
      const byDefault = simulate('load-aware', sc, seed);
      const penalised = simulate(
        'load-aware',
        { ...sc, loadOptions: { cpuPressurePenalty: 1 } },
        seed,
      );
      // By default 1.002 / 1.000 / 1.000x least-in-flight's p99 since ties go round robin
      // (p2c-strategy.ts, breakTie); 1.07 / 1.04 / 1.03x when a coin broke them.
      expect(byDefault.p99Ms).toBeLessThan(lif.p99Ms * 1.05);
      expect(byDefault.meanMs).toBeLessThan(lif.meanMs * 1.02);
      // Seeds 1-3: 1.81 / 1.78 / 1.19x least-in-flight's p99 (1.75 / 1.80 / 1.23x when a coin
      // broke ties; seed 3 was 1.73x while the snapshot-only reports' hidden mean had its
      // phantom: load/hidden-load.ts).
      expect(penalised.p99Ms).toBeGreaterThan(lif.p99Ms * 1.15);
    },
  );
});

describe('queueing simulation: ties go round robin', () => {
  // Bench scenario 4 (bench/scenarios.ts, identical): 3 x 8 slots x 40 ms (fixed), 420 rps.
  // With every slot count leaving room, the waits of identical backends differ by less than
  // the tie tolerance. A coin among them splits the arrivals at random (each backend's
  // stays Poisson); taking them in turn, as least-in-flight and nginx do, makes them more
  // regular. Coins: 1.041 / 1.046 / 1.026x least-in-flight's p99; in turn: 1.000 (all three).
  const sc = SCENARIO_4;

  it.each([1, 2, 3])("identical backends at 70%% (seed %i): least-in-flight's p99", (seed) => {
    const lif = simulate('least-in-flight', sc, seed);
    const la = simulate('load-aware', sc, seed);
    expect(la.p99Ms).toBeLessThan(lif.p99Ms * 1.01);
    expect(la.meanMs).toBeLessThan(lif.meanMs * 1.005);
  });
});

describe('queueing simulation: several gateways on one broker', () => {
  // Three gateways, 300 rps each, three 4-slot backends (75% load). Each gateway's load is
  // hidden load for the other two; only the reports reveal it.
  const sc: Scenario = {
    backends: THREE_EQUAL,
    gatewayRps: 300,
    gateways: 3,
    reportLimit: true,
    durationMs: 10_000,
  };

  it('load-aware is not worse than least-in-flight when every gateway reads the same reports', () => {
    const la = simulate('load-aware', sc);
    const lif = simulate('least-in-flight', sc);
    // Symmetric load: each gateway's in-flight counts are a fair sample, least-in-flight is
    // at its best. Load-aware must hold that level, not herd on the shared reports.
    expect(la.p99Ms).toBeLessThan(lif.p99Ms * 1.1);
    expect(la.meanMs).toBeLessThan(lif.meanMs * 1.1);
  });

  it('two gateways on two equal backends and nothing else: not worse than least-in-flight', () => {
    // Two noisy ratios, one median between them: it must not cost more than the
    // three-backend fleet above may.
    const two: Scenario = {
      backends: [THREE_EQUAL[0]!, THREE_EQUAL[0]!],
      gatewayRps: 300,
      gateways: 2,
      reportLimit: true,
      durationMs: 10_000,
    };
    for (const seed of [1, 2, 3]) {
      const la = simulate('load-aware', two, seed);
      const lif = simulate('least-in-flight', two, seed);
      expect(la.p99Ms).toBeLessThan(lif.p99Ms * 1.1);
      expect(la.meanMs).toBeLessThan(lif.meanMs * 1.1);
    }
  });

  it('two gateways, two backends, a batch job on one: routed around, though the median is a mean', () => {
    // Agents reading a gauge (no traffic figures); a batch job holds 3 of b0's 4 slots. With
    // two backends the median of the hidden/local ratios is their mean: the batch job is half
    // taken for the other gateway's load (seeds 1-3: b0 gets 0.18-0.19 of the requests, p99
    // 0.52-0.58x least-in-flight's; the lower median gave 0.12-0.14 and 0.50-0.54x, and cost
    // bench scenario 1: docs/strategies.md).
    const two: Scenario = {
      backends: [THREE_EQUAL[0]!, THREE_EQUAL[0]!],
      gatewayRps: 150,
      gateways: 2,
      batch: [3, 0],
      noTraffic: true,
      reportLimit: true,
      durationMs: 10_000,
    };
    for (const seed of [1, 2, 3]) {
      const la = simulate('load-aware', two, seed);
      const lif = simulate('least-in-flight', two, seed);
      expect(la.shares[0]).toBeLessThan(0.2);
      expect(la.p99Ms).toBeLessThan(lif.p99Ms * 0.6);
    }
  });

  it('early reports do not make them herd', () => {
    // Each gateway's load is hidden load for the others: every gateway's requests fire
    // early reports (packages/health-agent/src/early-report.ts) that all gateways act on at once.
    const lif = simulate('least-in-flight', sc);
    const withEarly = simulate('load-aware', { ...sc, early: { rise: 2, minGapMs: 300 } });
    expect(withEarly.p99Ms).toBeLessThan(lif.p99Ms * 1.1);
    expect(withEarly.meanMs).toBeLessThan(lif.meanMs * 1.1);
  });
});

describe('queueing simulation: early reports', () => {
  // Bench scenario 2 (bench/scenarios.ts, hidden-load): three backends of 8 slots x 40 ms
  // (fixed, as bench/procs/backend.ts), 300 rps through the gateway, 120 rps straight to b0.
  const hidden: Scenario = { ...SCENARIO_4, gatewayRps: 300, hiddenRps: [120, 0, 0] };
  // The agent's defaults (packages/health-agent/src/options.ts).
  const early = { rise: 2, minGapMs: 300 };

  it.each([1, 2, 3])(
    'hidden load: early reports (rise 2, 300 ms gap) lower the p99, to under half least-in-flight (seed %i)',
    (seed) => {
      const lif = simulate('least-in-flight', hidden, seed);
      const scheduled = simulate('load-aware', hidden, seed);
      const withEarly = simulate('load-aware', { ...hidden, early }, seed);
      // Within 2%: without the CPU pressure penalty (off by default since 2026-12-02) the
      // scheduled reports alone do nearly as well. With P2C: 54.8 against 54.7 ms (seed 1),
      // 57.0 against 58.1, 55.1 against 58.6; best of 3 (the default since the same day),
      // lower in all: 52.9 against 52.2, 56.3 against 55.6, 53.1 against 54.7.
      expect(withEarly.p99Ms).toBeLessThanOrEqual(scheduled.p99Ms * 1.02);
      expect(withEarly.meanMs).toBeLessThanOrEqual(scheduled.meanMs * 1.01);
      // The hidden count's spread (load/endpoint-load.ts, expectedExcess) took seeds 1-3 from
      // 0.493 / 0.483 / 0.492 x least-in-flight's p99 to 0.471 / 0.455 / 0.477.
      expect(withEarly.p99Ms).toBeLessThan(lif.p99Ms * 0.49);
    },
  );
});

describe('queueing simulation: best of 3 (the default) against P2C (choices: 2)', () => {
  // The benchmark's fleets (bench/scenarios.ts; fixed service times as bench/procs/backend.ts).
  // Over three or four backends, two random choices leave the best one out of a third of the
  // picks or more; comparing three must not trade that for herding when gateways share reports
  // (docs/strategies.md, "Three choices").
  const cases: Array<[string, Scenario]> = [
    ['identical backends at 70% (scenario 4)', SCENARIO_4],
    [
      'hidden load on one backend (scenario 2)',
      {
        ...SCENARIO_4,
        gatewayRps: 300,
        hiddenRps: [120, 0, 0],
        early: { rise: 2, minGapMs: 300 },
      },
    ],
    [
      'a 5x slower backend over four gateways on shared reports (scenario 5b)',
      {
        backends: [...eight(50, 50, 100), { slots: 8, serviceMs: 250 }],
        gatewayRps: 70,
        gateways: 4,
        reportLimit: true,
        fixedService: true,
        early: { rise: 2, minGapMs: 300 },
        durationMs: 20_000,
      },
    ],
  ];
  it.each(cases.flatMap(([name, sc]) => [1, 2].map((seed) => [name, seed, sc] as const)))(
    '%s (seed %i): a lower p99 and mean',
    (_name, seed, sc) => {
      const best3 = simulate('load-aware', sc, seed);
      const two = simulate('load-aware', { ...sc, strategyOptions: { choices: 2 } }, seed);
      expect(best3.p99Ms).toBeLessThan(two.p99Ms);
      expect(best3.meanMs).toBeLessThanOrEqual(two.meanMs * 1.005);
    },
  );
});
