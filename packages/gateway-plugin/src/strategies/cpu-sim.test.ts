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
  cpuMs: number;
  ioMs?: number;
}

/** What the agents report: everything, or without process figures (no CPU evidence), or without cgroup. */
type Agent = 'full' | 'no-process' | 'no-cgroup' | 'no-cgroup-no-process';

interface CpuScenario {
  backends: CpuBackend[];
  /** Per gateway. */
  gatewayRps: number;
  gateways?: number;
  agent: Agent;
  hostCpus: number;
  durationMs: number;
}

interface Result {
  meanMs: number;
  p99Ms: number;
  /** Share of all gateways' requests per backend, measured part only. */
  shares: number[];
}

function simulate(strategyName: string, sc: CpuScenario, seed: number): Result {
  const random = createSeededRandom(seed);
  const exp = (mean: number) => -Math.log(1 - random()) * mean;
  const rate = sc.backends.map((b) => Math.min(1, b.quotaCores * (1 - b.neighbourShare)));
  const views = Array.from({ length: sc.gateways ?? 1 }, (_, g) => {
    const cohort = createLoadCohort();
    const eps: Endpoint[] = sc.backends.map((_, i) => ({
      id: `b${i}`,
      weight: 1,
      load: createEndpointLoad({ cohort }),
    }));
    const strategy = createStrategy(strategyName, { random: createSeededRandom(seed + 100 + g) });
    strategy.setEndpoints(eps);
    return { eps, strategy };
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

  const account = (b: number) => {
    if (busy[b]! > 0) busyMs[b]! += now - lastChange[b]!;
    lastChange[b] = now;
  };
  const start = (b: number, job: Job) => {
    account(b);
    busy[b]!++;
    events.push(now + job.serviceMs, () => finish(b, job));
  };
  const finish = (b: number, job: Job) => {
    account(b);
    busy[b]!--;
    cpuMsDone[b]! += job.cpuMs;
    const latency = now - job.startMs;
    done[b]!.push(latency);
    job.ep.load.onRequestEnd(now, latency, true);
    if (job.startMs >= measuredFrom) latencies.push(latency);
    const next = queues[b]!.shift();
    if (next !== undefined) start(b, next);
  };

  for (const { eps, strategy } of views) {
    const arrival = () => {
      const p = strategy.pick({ nowMs: now })!;
      const b = eps.indexOf(p.endpoint);
      if (now >= measuredFrom) picks[b]!++;
      p.endpoint.load.onRequestStart(now);
      const spec = sc.backends[b]!;
      const cpuMs = exp(spec.cpuMs);
      const job = {
        ep: p.endpoint,
        startMs: now,
        cpuMs,
        serviceMs: cpuMs / rate[b]! + (spec.ioMs ? exp(spec.ioMs) : 0),
      };
      if (busy[b]! < spec.slots) start(b, job);
      else queues[b]!.push(job);
      const next = now + exp(1000 / sc.gatewayRps);
      if (next < sc.durationMs) events.push(next, arrival);
    };
    events.push(exp(1000 / sc.gatewayRps), arrival);
  }

  sc.backends.forEach((spec, b) => {
    const report = () => {
      account(b);
      const processCores = cpuMsDone[b]! / 1000;
      const neighbourCores =
        spec.neighbourShare > 0
          ? (spec.quotaCores * (spec.neighbourShare * busyMs[b]! + (1000 - busyMs[b]!))) / 1000
          : 0;
      cgroupCores[b] = Math.min(spec.quotaCores, processCores + neighbourCores);
      const hostUtilization = Math.min(1, cgroupCores.reduce((a, x) => a + x, 0) / sc.hostCpus);
      const lat = done[b]!;
      const mean = lat.length ? lat.reduce((a, x) => a + x, 0) / lat.length : undefined;
      const noProcess = sc.agent === 'no-process' || sc.agent === 'no-cgroup-no-process';
      const noCgroup = sc.agent === 'no-cgroup' || sc.agent === 'no-cgroup-no-process';
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
        queue: { inFlight: busy[b]! + queues[b]!.length, source: { inFlight: 'prometheus' } },
        concurrencyLimit: spec.slots,
        traffic: {
          rps: lat.length,
          windowMs: 1000,
          ...(mean === undefined ? {} : { latencyMeanMs: mean }),
        },
        health: { verdict: 'up' },
      };
      done[b] = [];
      cpuMsDone[b] = 0;
      busyMs[b] = 0;
      for (const v of views) v.eps[b]!.load.onReport(r, now);
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
    p99Ms: latencies[Math.floor(latencies.length * 0.99)]!,
    shares: picks.map((x) => x / total),
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
const NOISY_RPS = 0.65 * capacityRps(NOISY).reduce((a, x) => a + x, 0);

const EXPLORE = process.env['CPU_SIM_EXPLORE'] === '1';
(EXPLORE ? describe : describe.skip)('explore', () => {
  it('table', () => {
    const rows: string[] = [];
    for (const dur of [20_000, 60_000]) {
      for (const seed of [1, 2, 3, 4, 5]) {
        const sc: CpuScenario = { backends: NOISY, gatewayRps: NOISY_RPS, agent: 'full', hostCpus: 4, durationMs: dur };
        for (const [name, strat, agent] of [
          ['cpu', 'load-aware', 'full'],
          ['old', 'load-aware', 'no-process'],
          ['nocg', 'load-aware', 'no-cgroup-no-process'],
          ['nocg+p', 'load-aware', 'no-cgroup'],
          ['lif', 'least-in-flight', 'full'],
        ] as const) {
          const r = simulate(strat, { ...sc, agent }, seed);
          rows.push(`${dur} ${seed} ${name.padEnd(7)} mean ${r.meanMs.toFixed(2)} p99 ${r.p99Ms.toFixed(1)} shares ${r.shares.map((x) => x.toFixed(3)).join('/')}`);
        }
      }
    }
    console.log(rows.join('\n'));
  });
});

describe('CPU as capacity: a noisy neighbour in one cgroup', () => {
  const sc: CpuScenario = {
    backends: NOISY,
    gatewayRps: NOISY_RPS,
    agent: 'full',
    hostCpus: 4,
    durationMs: 20_000,
  };

  it.each([1, 2, 3])('seed %i: b0 gets its capacity share, and a better p99 than the old penalty', (seed) => {
    const cpu = simulate('load-aware', sc, seed);
    const old = simulate('load-aware', { ...sc, agent: 'no-process' }, seed);
    const lif = simulate('least-in-flight', sc, seed);
    const b0 = capacityRps(NOISY)[0]! / capacityRps(NOISY).reduce((a, x) => a + x, 0);
    expect(cpu.shares[0]).toBeGreaterThan(b0 * 0.7);
    expect(cpu.shares[0]).toBeLessThan(b0 * 1.3);
    expect(cpu.p99Ms).toBeLessThan(old.p99Ms);
    expect(cpu.p99Ms).toBeLessThan(lif.p99Ms * 1.1);
    console.log(seed, { cpu, old, lif, b0 });
  });
});
