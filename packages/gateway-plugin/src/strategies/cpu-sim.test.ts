/**
 * CPU as capacity in the seeded queueing simulation (simulated time, seeded
 * random: deterministic counts, no wall-clock thresholds): docs/strategies.md,
 * "CPU as capacity". A backend is a worker with `slots` FIFO slots in a cgroup
 * with a CPU quota; a request needs `cpuMs` of CPU (exponential) plus `ioMs`
 * of waiting (exponential). A greedy neighbour in the same cgroup (a busy
 * loop) takes `neighbourShare` of the quota while the service has work (fair
 * share) and all of it while the service is idle, so the cgroup reads ~100%
 * all the time. The agent reports what a real one would, once per second:
 * process CPU, cgroup limit and utilization, host utilization and CPU count,
 * rps and mean latency, outstanding requests (a Prometheus gauge, as
 * `inFlight`), concurrencyLimit. `agent` drops sections to compare with the
 * model without CPU evidence in the same seeded run.
 *
 * Simplification: a slot's CPU rate is fixed (min(1, quota × (1 − share)));
 * slots of one backend do not share the quota with each other. The CPU-bound
 * backends here have one slot, the IO-bound ones little CPU, so that does not
 * matter.
 */
import type { MetricsReport } from '@loadwise/protocol';
import { createEndpointLoad, createLoadCohort } from '../load';
import { createStrategy } from './registry';
import { createSeededRandom } from './seeded-random';
import { Events } from './test-sim-events';
import type { Endpoint } from './types';

interface CpuBackend {
  slots: number;
  quotaCores: number;
  /** Share of the quota a greedy neighbour takes while the service has work (0: none). */
  neighbourShare: number;
  /** The neighbour takes its share all the time (a steady batch job), not whatever is left. */
  fixedNeighbour?: boolean;
  cpuMs: number;
  ioMs?: number;
}

/**
 * What the agents report: everything, or without process figures (no CPU evidence), or without
 * cgroup. `gauge`: as the benchmark's agents, which read the outstanding requests off a
 * Prometheus gauge and have no traffic figures (the gateway's own completions stand in for
 * the rate); `gauge-no-cgroup` the same with --no-cgroup.
 */
type Agent =
  'full' | 'no-process' | 'no-cgroup' | 'no-cgroup-no-process' | 'gauge' | 'gauge-no-cgroup';

interface CpuScenario {
  backends: CpuBackend[];
  /** Per gateway. */
  gatewayRps: number;
  gateways?: number;
  agent: Agent;
  hostCpus: number;
  /**
   * CFS bandwidth control instead of the fluid model: the cgroup gets
   * quota × period of CPU per period, then waits for the next one (throttled),
   * which makes latencies jittery as on a real quota. Single-slot backends only.
   */
  cfsPeriodMs?: number;
  /**
   * With `cfsPeriodMs`: the neighbour and the service share one CPU (bench/lib/neighbour.ts
   * pins them with taskset), so while both run each gets half of it.
   */
  pinned?: boolean;
  /** Every request costs exactly `cpuMs` (bench/procs/cpu-backend.ts), not an exponential draw. */
  fixedCpu?: boolean;
  /** Every gateway's load options (createEndpointLoad). */
  loadOptions?: object;
  durationMs: number;
}

/**
 * The model before CPU as capacity, for the "old" runs: agents without the
 * process's CPU, and the CPU pressure penalty that was the default until it
 * was turned off (docs/strategies.md, "The pressure penalty").
 */
const OLD = { agent: 'no-process', loadOptions: { cpuPressurePenalty: 1 } } as const;

interface Result {
  meanMs: number;
  p50Ms: number;
  p99Ms: number;
  /** Share of all gateways' requests per backend, measured part only. */
  shares: number[];
  /** Share of b0's reports after which the first gateway took b0's service time from its CPU. */
  b0CpuSourced: number;
}

/**
 * Not a strategy: each request goes where it would finish first, computed from
 * what no gateway can see (every backend's queue, remaining work, quota left
 * in the period). A bound on what better information could buy (CFS only).
 */
const ORACLE = 'oracle (perfect information, greedy)';

function simulate(strategyName: string, sc: CpuScenario, seed: number): Result {
  const random = createSeededRandom(seed);
  const exp = (mean: number) => -Math.log(1 - random()) * mean;
  const rate = sc.backends.map((b) => Math.min(1, b.quotaCores * (1 - b.neighbourShare)));
  const views = Array.from({ length: sc.gateways ?? 1 }, (_, g) => {
    const cohort = createLoadCohort();
    const loads = sc.backends.map(() => createEndpointLoad({ cohort, ...sc.loadOptions }));
    const eps: Endpoint[] = loads.map((load, i) => ({ id: `b${i}`, weight: 1, load }));
    const strategy = createStrategy(strategyName === ORACLE ? 'least-in-flight' : strategyName, {
      random: createSeededRandom(seed + 100 + g),
    });
    strategy.setEndpoints(eps);
    return { eps, loads, strategy };
  });
  interface Job {
    ep: Endpoint;
    startMs: number;
    serviceMs: number;
    cpuMs: number;
  }
  const n = sc.backends.length;
  const busy = new Array<number>(n).fill(0);
  const queues: Job[][] = sc.backends.map(() => []);
  const done: number[][] = sc.backends.map(() => []);
  const cpuMsDone = new Array<number>(n).fill(0);
  // Time with at least one slot busy since the last report (the neighbour's fair share).
  const busyMs = new Array<number>(n).fill(0);
  const lastChange = new Array<number>(n).fill(0);
  // Each cgroup's CPU over its last report window, in cores (the host's utilization).
  const cgroupCores = new Array<number>(n).fill(0);
  const measuredFrom = 1000;
  const latencies: number[] = [];
  const picks = new Array<number>(n).fill(0);
  const events = new Events();
  let now = 0;
  let b0Reports = 0;
  let b0Cpu = 0;

  const account = (b: number) => {
    if (busy[b]! > 0) busyMs[b]! += now - lastChange[b]!;
    lastChange[b] = now;
  };
  const complete = (b: number, job: Job) => {
    cpuMsDone[b]! += job.cpuMs;
    const latency = now - job.startMs;
    done[b]!.push(latency);
    job.ep.load.onRequestEnd(now, latency, true);
    if (job.startMs >= measuredFrom) latencies.push(latency);
  };
  // Fluid model: each slot runs at its fair-share rate.
  const start = (b: number, job: Job) => {
    account(b);
    busy[b]!++;
    events.push(now + job.serviceMs, () => finish(b, job));
  };
  const finish = (b: number, job: Job) => {
    account(b);
    busy[b]!--;
    complete(b, job);
    const next = queues[b]!.shift();
    if (next !== undefined) start(b, next);
  };

  // CFS model (cfsPeriodMs): one slot; the service thread runs at one core, the neighbour
  // (share / (1 − share) cores: one busy-loop thread for a share of 1/2) too, until the
  // cgroup has used quota × period in the period; then both wait for the next period.
  const period = sc.cfsPeriodMs;
  const nbCores = sc.backends.map((b) => b.neighbourShare / (1 - b.neighbourShare));
  const quotaLeft = sc.backends.map((b) => b.quotaCores * (period ?? 0));
  const throttled = sc.backends.map(() => false);
  const lastT = sc.backends.map(() => 0);
  const current: Array<{ job: Job; leftMs: number } | undefined> = sc.backends.map(() => undefined);
  const version = sc.backends.map(() => 0);
  const processMs = new Array<number>(n).fill(0);
  const neighbourMs = new Array<number>(n).fill(0);
  const advance = (b: number) => {
    const dt = now - lastT[b]!;
    lastT[b] = now;
    if (throttled[b] || !(dt > 0)) return;
    const cur = current[b];
    const { burn, service, neighbour } = rates(b, cur === undefined ? 0 : 1);
    quotaLeft[b]! -= dt * burn;
    if (cur !== undefined) cur.leftMs -= dt * service;
    processMs[b]! += dt * service;
    neighbourMs[b]! += dt * neighbour;
  };
  // Cores the cgroup burns, and the service's and the neighbour's rates, with `running` service
  // threads: each thread at a core, or all of them on one core (`pinned`).
  const rates = (b: number, running: number) => {
    const nb = nbCores[b]!;
    if (!sc.pinned || running + nb <= 1) {
      return { burn: running + nb, service: running, neighbour: nb };
    }
    return { burn: 1, service: running / (running + nb), neighbour: nb / (running + nb) };
  };
  const schedule = (b: number) => {
    const v = ++version[b]!;
    if (throttled[b]) return;
    const cur = current[b];
    const { burn, service } = rates(b, cur === undefined ? 0 : 1);
    if (burn === 0 && cur === undefined) return;
    const t = Math.min(
      burn > 0 ? quotaLeft[b]! / burn : Infinity,
      cur === undefined ? Infinity : cur.leftMs / service,
    );
    events.push(now + Math.max(0, t), () => {
      if (version[b] !== v) return;
      advance(b);
      const c = current[b];
      if (c !== undefined && c.leftMs <= 1e-9) {
        complete(b, c.job);
        const next = queues[b]!.shift();
        current[b] = next === undefined ? undefined : { job: next, leftMs: next.cpuMs };
      }
      if (quotaLeft[b]! <= 1e-9) throttled[b] = true;
      schedule(b);
    });
  };
  if (period !== undefined) {
    const refill = () => {
      sc.backends.forEach((spec, b) => {
        advance(b);
        quotaLeft[b] = spec.quotaCores * period;
        throttled[b] = false;
        schedule(b);
      });
      if (now + period < sc.durationMs + 10_000) events.push(now + period, refill);
    };
    events.push(0, refill);
  }
  const arriveAt = (b: number, job: Job) => {
    if (period === undefined) {
      if (busy[b]! < sc.backends[b]!.slots) start(b, job);
      else queues[b]!.push(job);
      return;
    }
    advance(b);
    if (current[b] !== undefined) {
      queues[b]!.push(job);
      return;
    }
    current[b] = { job, leftMs: job.cpuMs };
    schedule(b);
  };

  // The oracle's projection (CFS model only): when a request of `w` ms of CPU sent to b now
  // would finish, knowing b's queue, its current request's remaining work, its quota left in
  // this period and the periods to come.
  const finishAt = (b: number, w: number): number => {
    const per = period!;
    advance(b);
    let work = (current[b]?.leftMs ?? 0) + w;
    for (const j of queues[b]!) work += j.cpuMs;
    const full = sc.backends[b]!.quotaCores * per;
    const { burn, service } = rates(b, 1);
    let t = now;
    let left = throttled[b] ? 0 : quotaLeft[b]!;
    let refill = (Math.floor(now / per + 1e-9) + 1) * per;
    while (work > 1e-9) {
      if (left <= 1e-9) {
        t = refill;
        refill += per;
        left = full;
        continue;
      }
      const dt = Math.min(left / burn, work / service, refill - t);
      t += dt;
      work -= dt * service;
      left -= dt * burn;
      if (t >= refill - 1e-9) {
        left = full;
        refill += per;
      }
    }
    return t;
  };
  const oracle = (backends: CpuBackend[]): number => {
    let best = 0;
    let bestAt = Infinity;
    for (let b = 0; b < backends.length; b++) {
      // A random jitter far below a CPU-ms breaks exact ties fairly.
      const at = finishAt(b, backends[b]!.cpuMs) + random() * 1e-6;
      if (at < bestAt) {
        bestAt = at;
        best = b;
      }
    }
    return best;
  };

  for (const { eps, strategy } of views) {
    const arrival = () => {
      const p =
        strategyName === ORACLE
          ? { endpoint: eps[oracle(sc.backends)]! }
          : strategy.pick({ nowMs: now })!;
      const b = eps.indexOf(p.endpoint);
      if (now >= measuredFrom) picks[b]!++;
      p.endpoint.load.onRequestStart(now);
      const spec = sc.backends[b]!;
      const cpuMs = sc.fixedCpu ? spec.cpuMs : exp(spec.cpuMs);
      const job = {
        ep: p.endpoint,
        startMs: now,
        cpuMs,
        serviceMs: cpuMs / rate[b]! + (spec.ioMs ? exp(spec.ioMs) : 0),
      };
      arriveAt(b, job);
      const next = now + exp(1000 / sc.gatewayRps);
      if (next < sc.durationMs) events.push(next, arrival);
    };
    events.push(exp(1000 / sc.gatewayRps), arrival);
  }

  sc.backends.forEach((spec, b) => {
    const report = () => {
      account(b);
      let processCores: number;
      if (period === undefined) {
        processCores = cpuMsDone[b]! / 1000;
        const idleMs = spec.fixedNeighbour ? 0 : 1000 - busyMs[b]!;
        const neighbourCores =
          spec.neighbourShare > 0
            ? (spec.quotaCores * (spec.neighbourShare * busyMs[b]! + idleMs)) / 1000
            : 0;
        cgroupCores[b] = Math.min(spec.quotaCores, processCores + neighbourCores);
      } else {
        advance(b);
        processCores = processMs[b]! / 1000;
        cgroupCores[b] = Math.min(spec.quotaCores, (processMs[b]! + neighbourMs[b]!) / 1000);
        processMs[b] = 0;
        neighbourMs[b] = 0;
      }
      const hostUtilization = Math.min(1, cgroupCores.reduce((a, x) => a + x, 0) / sc.hostCpus);
      const lat = done[b]!;
      const mean = lat.length ? lat.reduce((a, x) => a + x, 0) / lat.length : undefined;
      const noProcess = sc.agent === 'no-process' || sc.agent === 'no-cgroup-no-process';
      const noCgroup =
        sc.agent === 'no-cgroup' ||
        sc.agent === 'no-cgroup-no-process' ||
        sc.agent === 'gauge-no-cgroup';
      const gauge = sc.agent === 'gauge' || sc.agent === 'gauge-no-cgroup';
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
          cpuUtilization: hostUtilization,
          memoryUtilization: 0.4,
          memoryAvailableBytes: 1e9,
          cpuCount: sc.hostCpus,
        },
        ...(noProcess ? {} : { process: { pid: 100 + b, cpuCores: processCores, rssBytes: 1e8 } }),
        ...(noCgroup
          ? {}
          : {
              cgroup: {
                cpuLimitCores: spec.quotaCores,
                cpuUtilization: cgroupCores[b]! / spec.quotaCores,
              },
            }),
        queue: {
          inFlight: busy[b]! + (current[b] === undefined ? 0 : 1) + queues[b]!.length,
          source: { inFlight: 'prometheus' },
        },
        concurrencyLimit: spec.slots,
        ...(gauge
          ? {}
          : {
              traffic: {
                rps: lat.length,
                windowMs: 1000,
                ...(mean === undefined ? {} : { latencyMeanMs: mean }),
              },
            }),
        health: { verdict: 'up' },
      };
      done[b] = [];
      cpuMsDone[b] = 0;
      busyMs[b] = 0;
      for (const v of views) v.eps[b]!.load.onReport(r, now);
      if (b === 0) {
        b0Reports++;
        if (views[0]!.loads[0]!.snapshot(now).serviceTimeSource === 'cpu') b0Cpu++;
      }
      if (now + 1000 < sc.durationMs) events.push(now + 1000, report);
    };
    events.push(random() * 1000, report);
  });

  for (let e = events.pop(); e !== undefined; e = events.pop()) {
    now = e[0];
    e[1]();
  }
  latencies.sort((a, b) => a - b);
  const total = picks.reduce((a, x) => a + x, 0);
  return {
    meanMs: latencies.reduce((a, x) => a + x, 0) / latencies.length,
    p50Ms: latencies[Math.floor(latencies.length * 0.5)]!,
    p99Ms: latencies[Math.floor(latencies.length * 0.99)]!,
    shares: picks.map((x) => x / total),
    b0CpuSourced: b0Cpu / b0Reports,
  };
}

/** The fleet's throughput by CPU: each slot at its CPU rate. */
function capacityRps(backends: CpuBackend[]): number[] {
  return backends.map(
    (b) => (b.slots * Math.min(1, b.quotaCores * (1 - b.neighbourShare)) * 1000) / b.cpuMs,
  );
}

// The fleet: three single-worker CPU-bound backends (2 ms of CPU per request), a
// quota of half a core each; a busy loop in b0's cgroup takes half of its quota, so b0 keeps
// 20% of the fleet's capacity (125 of 625 req/s). Open loop at 65%.
const NOISY: CpuBackend[] = [
  { slots: 1, quotaCores: 0.5, neighbourShare: 0.5, cpuMs: 2 },
  { slots: 1, quotaCores: 0.5, neighbourShare: 0, cpuMs: 2 },
  { slots: 1, quotaCores: 0.5, neighbourShare: 0, cpuMs: 2 },
];

function scenario(
  backends: CpuBackend[],
  load: number,
  extra: Partial<CpuScenario> = {},
): CpuScenario {
  const total = capacityRps(backends).reduce((a, x) => a + x, 0);
  const gateways = extra.gateways ?? 1;
  return {
    backends,
    gatewayRps: (load * total) / gateways,
    agent: 'full',
    hostCpus: 4,
    durationMs: 60_000,
    ...extra,
  };
}

function capacityShare(backends: CpuBackend[], b: number): number {
  const caps = capacityRps(backends);
  return caps[b]! / caps.reduce((a, x) => a + x, 0);
}

const SEEDS = [1, 2, 3];

describe('CPU as capacity: a busy loop in the cgroup of b0 (takes what b0 leaves)', () => {
  const sc = scenario(NOISY, 0.65);

  it.each(SEEDS)(
    'seed %i: b0 gets its capacity share ±30%%, and a better p99 and mean than with the old CPU penalty',
    (seed) => {
      const cpu = simulate('load-aware', sc, seed);
      const old = simulate('load-aware', { ...sc, ...OLD }, seed);
      const b0 = capacityShare(NOISY, 0);
      // 0.6: with P2C b0 got 13.9-14.3% (seeds 1-3); best of 3, the default since 2026-12-02,
      // compares all three and sends it 12.2-14.0% for a lower p99 (31.6-33.8 ms against
      // 33.3-37.2) and p50 (docs/strategies.md, "Three choices").
      expect(cpu.shares[0]).toBeGreaterThan(b0 * 0.6);
      expect(cpu.shares[0]).toBeLessThan(b0 * 1.3);
      // The old penalty (cgroup at 100% all the time: x2) starves b0 below half its share.
      expect(old.shares[0]).toBeLessThan(b0 * 0.5);
      expect(cpu.p99Ms).toBeLessThan(old.p99Ms);
      expect(cpu.meanMs).toBeLessThan(old.meanMs * 0.9);
      // Elastic others: the CPU cannot tell b0's capacity, its latency does (load/cpu-capacity.ts).
      expect(cpu.b0CpuSourced).toBe(0);
    },
  );

  it.each(SEEDS)('seed %i: a better p99 than least-in-flight', (seed) => {
    const cpu = simulate('load-aware', sc, seed);
    const lif = simulate('least-in-flight', sc, seed);
    expect(cpu.p99Ms).toBeLessThan(lif.p99Ms);
  });

  it.each(SEEDS)('seed %i: three gateways on shared reports do not herd', (seed) => {
    const three = scenario(NOISY, 0.65, { gateways: 3 });
    const cpu = simulate('load-aware', three, seed);
    const lif = simulate('least-in-flight', three, seed);
    const b0 = capacityShare(NOISY, 0);
    // 0.6, not 0.7: best of 3 sends b0 13.2-13.8% here (P2C 16.3-17.3%), for a p99 of
    // 34.5-38.1 ms against 38.9-41.2 (least-in-flight 54.4-56.4).
    expect(cpu.shares[0]).toBeGreaterThan(b0 * 0.6);
    expect(cpu.shares[0]).toBeLessThan(b0 * 1.3);
    expect(cpu.p99Ms).toBeLessThan(lif.p99Ms * 0.9);
  });
});

describe('agents without the process CPU (no --service-pid): the CPU penalty is off by default', () => {
  // Such agents report their cgroup's (or host's) CPU only. As a penalty it kept b0 (whose
  // cgroup the busy loop keeps full) far below its capacity share (docs/strategies.md, "The
  // pressure penalty"); without it the latency judges, as with the process CPU.
  const sc = scenario(NOISY, 0.65, { agent: 'no-process' });

  it.each(SEEDS)('seed %i: b0 gets more than with the penalty, for a lower p99', (seed) => {
    const now = simulate('load-aware', sc, seed);
    const old = simulate('load-aware', { ...sc, ...OLD }, seed);
    const b0 = capacityShare(NOISY, 0);
    // Best of 3: 12.5-13.9% (seeds 1-3); with the penalty 5.6-6.1%.
    expect(now.shares[0]).toBeGreaterThan(b0 * 0.6);
    expect(old.shares[0]).toBeLessThan(b0 * 0.5);
    expect(now.p99Ms).toBeLessThan(old.p99Ms);
  });
});

describe('CPU as capacity: a steady batch job takes half of the quota of b0', () => {
  // The neighbour is not elastic: b0's headroom is a quarter of a core, and near saturation
  // the service is CPU-bound, so its service time comes from the CPU (c / μ).
  const fixed = NOISY.map((b, i) => (i === 0 ? { ...b, fixedNeighbour: true } : b));
  const sc = scenario(fixed, 0.9);

  it.each(SEEDS)(
    'seed %i: at 90%% load (b0 CPU-bound part of the time), a p99 within 2%% of the old penalty and below least-in-flight',
    (seed) => {
      const cpu = simulate('load-aware', sc, seed);
      const old = simulate('load-aware', { ...sc, ...OLD }, seed);
      const lif = simulate('least-in-flight', sc, seed);
      const b0 = capacityShare(fixed, 0);
      expect(cpu.shares[0]).toBeGreaterThan(b0 * 0.7);
      expect(cpu.shares[0]).toBeLessThan(b0 * 1.3);
      // Seeds 1 and 2: 79.2 against 83.6 ms, 70.7 against 72.9. Seed 3 is a tie within the
      // seed's own noise: 85.5 against 86.4 ms until a local figure needed MIN_LOCAL_SAMPLES
      // samples to speak over a report (service-time.ts), 86.4 against 85.3 since, both arms
      // moved by about 1% in opposite directions by the first requests' routing alone.
      expect(cpu.p99Ms).toBeLessThan(old.p99Ms * 1.02);
      expect(cpu.p99Ms).toBeLessThan(lif.p99Ms);
    },
  );
});

describe('CPU as capacity: no harm where nothing is skewed', () => {
  const equal: CpuBackend[] = [0, 1, 2].map(() => ({
    slots: 1,
    quotaCores: 0.5,
    neighbourShare: 0,
    cpuMs: 2,
  }));

  it.each(SEEDS)(
    'seed %i: identical CPU-bound backends at 90%% load are not made worse',
    (seed) => {
      const sc = scenario(equal, 0.9);
      const cpu = simulate('load-aware', sc, seed);
      const old = simulate('load-aware', { ...sc, ...OLD }, seed);
      expect(cpu.p99Ms).toBeLessThanOrEqual(old.p99Ms * 1.02);
      expect(cpu.meanMs).toBeLessThanOrEqual(old.meanMs * 1.02);
      for (const share of cpu.shares) expect(Math.abs(share - 1 / 3)).toBeLessThan(0.02);
      // The CPU term is in use (b0 CPU-bound, no neighbour), and costs nothing.
      expect(cpu.b0CpuSourced).toBeGreaterThan(0.5);
    },
  );

  it.each(SEEDS)('seed %i: an IO-bound fleet (little CPU per request) is unchanged', (seed) => {
    const io: CpuBackend[] = [0, 1, 2].map(() => ({
      slots: 4,
      quotaCores: 2,
      neighbourShare: 0,
      cpuMs: 0.05,
      ioMs: 10,
    }));
    const sc: CpuScenario = { ...scenario(io, 0), gatewayRps: 900 };
    expect(simulate('load-aware', sc, seed)).toEqual(
      simulate('load-aware', { ...sc, ...OLD }, seed),
    );
  });
});

describe('CFS bandwidth control: throttled periods make b0 bimodal', () => {
  // The same fleet under 100 ms CFS periods: b0's service and the busy loop run at a core each
  // until the quota is spent, a quarter of each period, then wait: a request either takes its
  // 2 ms or waits up to 75 ms. b0 gets little traffic then (below the CPU evidence's 20
  // completions per window: its latency judges it), which is what its latency deserves:
  // least-in-flight gives it its queue-length share and pays for it in p99.
  it.each(SEEDS)(
    'seed %i: load-aware avoids the throttled backend; least-in-flight pays in p99',
    (seed) => {
      const sc = scenario(NOISY, 0.65, { cfsPeriodMs: 100, durationMs: 20_000 });
      const cpu = simulate('load-aware', sc, seed);
      const lif = simulate('least-in-flight', sc, seed);
      expect(cpu.shares[0]).toBeLessThan(0.05);
      expect(lif.shares[0]).toBeGreaterThan(0.1);
      expect(cpu.p99Ms).toBeLessThan(lif.p99Ms * 0.75);
    },
  );
});

describe('CFS bandwidth control as in the benchmark: 10 ms periods, a pinned busy loop in b0', () => {
  // The cpu-bound benchmark's fleet (docs/bench.md): one worker per backend, 2.2 ms of CPU per
  // request (2 ms burnt plus HTTP), 0.3 core of quota in 10 ms periods: 136 req/s each. A busy
  // loop pinned to b0's CPU halves what b0 gets when it has work (68 req/s, 20% of the
  // fleet's). The agents read a gauge: no traffic figures. b1 and b2 answer a lone request in
  // 2.2 ms while their period's quota lasts, but drain a queue at one request per 7.3 ms; b0's
  // lone latency spans periods and looks as slow as it is. With s from the latency alone, the
  // queue on b1 and b2 looked 2-3 times shorter than it was (s 3.5-4.6 ms whenever a report
  // showed them below the CPU-bound threshold), b0 got 11-12% and the p99 was least-in-flight's.
  const BENCH: CpuBackend[] = [0, 1, 2].map((i) => ({
    slots: 1,
    quotaCores: 0.3,
    neighbourShare: i === 0 ? 0.5 : 0,
    cpuMs: 2.2,
  }));
  const bench = (gateways: number): CpuScenario => ({
    backends: BENCH,
    gatewayRps: 245 / gateways,
    gateways,
    agent: 'gauge',
    hostCpus: 2,
    cfsPeriodMs: 10,
    pinned: true,
    fixedCpu: true,
    durationMs: 30_000,
  });
  /** The same fleet without the neighbour, at the benchmark's identical rate (65%). */
  const identical: CpuScenario = {
    ...bench(1),
    gatewayRps: 290,
    backends: BENCH.map((b) => ({ ...b, neighbourShare: 0 })),
  };

  it.each(SEEDS)(
    'seed %i: a better p99 than least-in-flight and than without the CPU signal; b0 not starved',
    (seed) => {
      const sc = bench(1);
      const cpu = simulate('load-aware', sc, seed);
      const noCgroup = simulate('load-aware', { ...sc, agent: 'gauge-no-cgroup' }, seed);
      const lif = simulate('least-in-flight', sc, seed);
      expect(cpu.p99Ms).toBeLessThan(lif.p99Ms * 0.95);
      expect(cpu.p99Ms).toBeLessThan(noCgroup.p99Ms);
      expect(cpu.meanMs).toBeLessThan(noCgroup.meanMs);
      // 0.5: best of 3 sends b0 11.3-11.5% of its 20% (P2C 13.9-15.2% before the fix for
      // phantom hidden load), for a lower p99.
      expect(cpu.shares[0]).toBeGreaterThan(capacityShare(BENCH, 0) * 0.5);
    },
  );

  it.each(SEEDS)(
    'seed %i: identical backends at 290 req/s: gauge agents add no phantom hidden load',
    (seed) => {
      // The agents' instants against this gateway's in-flight at the same instants: a lone
      // gateway's own requests are not hidden load (load/hidden-load.ts). While the snapshots'
      // average was taken less this gateway's interval mean, a report that found the last few
      // ms' requests held them for a second, and one of three identical one-slot backends
      // looked a service time slower at random: shares 0.28-0.37, p50 1.52-1.56x
      // least-in-flight's (seeds 1-3). Now: shares within 0.006 of a third, p50 1.05-1.13x,
      // p99 1.05-1.13x (least-in-flight 16.4-19.9 ms).
      const sc = identical;
      const cpu = simulate('load-aware', sc, seed);
      const lif = simulate('least-in-flight', sc, seed);
      for (const share of cpu.shares) expect(Math.abs(share - 1 / 3)).toBeLessThan(0.02);
      expect(cpu.p50Ms).toBeLessThan(lif.p50Ms * 1.2);
      expect(cpu.p99Ms).toBeLessThan(lif.p99Ms * 1.2);
    },
  );

  it.each(SEEDS)(
    'seed %i: against perfect information: load-aware within 1.2x the oracle p99, and what the oracle cannot do',
    (seed) => {
      // The oracle sends each request where it would finish first, knowing every backend's
      // queue and quota left (no gateway can). Greedy, it is the bound better estimates could
      // approach. Seeds 1-3, p50 / p99 ms:
      // - with the neighbour (245 req/s): oracle 6.52/23.5, 7.14/28.1, 6.12/25.7 (b0 5.4-6.6%);
      //   load-aware 5.51/27.3, 5.53/25.9, 5.34/30.1; least-in-flight 4.21/35.0, 4.13/34.0,
      //   4.05/36.6. A p50 at or below least-in-flight's and a p99 at 0.7x of it together (issue
      //   13's targets) are not met even with perfect information: least-in-flight's p50 comes
      //   from sending b0 its share of the requests that find every backend idle.
      // - identical (290 req/s): oracle 2.20/16.2, 2.20/17.9, 2.20/17.9; least-in-flight
      //   2.20/16.9, 2.20/16.4, 2.20/19.9; load-aware 2.50/19.1, 2.48/18.1, 2.31/20.9. On
      //   identical backends least-in-flight is about as good as perfect information: no p99
      //   at 0.7x of it is there to be had.
      for (const sc of [bench(1), identical]) {
        const cpu = simulate('load-aware', sc, seed);
        const best = simulate(ORACLE, sc, seed);
        const lif = simulate('least-in-flight', sc, seed);
        expect(cpu.p99Ms).toBeLessThan(best.p99Ms * 1.2);
        expect(best.p99Ms).toBeGreaterThan(lif.p99Ms * (sc === identical ? 0.85 : 0.6));
        if (sc !== identical) expect(best.p50Ms).toBeGreaterThan(lif.p50Ms * 1.4);
      }
    },
  );

  it.each(SEEDS)(
    'seed %i: three gateways with gauge agents: the local rate is not taken for the backend rate',
    (seed) => {
      // Each gateway's completions are a third of the backend's: taken as its rate, CPU per
      // request looked 3x too high, μ 3x too low, and b1 and b2 slower than b0 (p99 48-56 ms).
      const sc = bench(3);
      const cpu = simulate('load-aware', sc, seed);
      const lif = simulate('least-in-flight', sc, seed);
      expect(cpu.p99Ms).toBeLessThan(lif.p99Ms * 0.8);
    },
  );
});
