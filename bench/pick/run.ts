/**
 * Pick-time micro-benchmark at 10, 100 and 1,000 endpoints, and the growth
 * ratio 1000 vs 10: first the whole dispatch of a request on a real Balancer
 * (dispatch.ts: eligibility, saturation, pick, start, end; with and without
 * `saturation.maxExpectedWaitMs`), then median nanoseconds per
 * `strategy.pick()` for every strategy.
 *
 *   npm run bench:pick            (tsc -b && node bench/dist/pick/run.js)
 *   node bench/dist/pick/run.js --reps 9 --json out.json
 *
 * State is realistic and seeded: every endpoint has served requests (latency
 * 5–50 ms), some are in flight (0–8), half hold a fresh agent report (queue,
 * concurrencyLimit, CPU, memory), one in ten is in slow start. Two figures per
 * cell: `pick` alone with the state frozen, and `cycle` = pick + onRequestStart
 * + onRequestEnd of an earlier request (what the balancer does per request,
 * including least-in-flight's heap maintenance). Each figure is the median of
 * `reps` timed repetitions after a warm-up; a repetition is long enough (tens of
 * ms) that timer resolution does not matter.
 */
import { writeFileSync } from 'node:fs';
import { DISPATCH_VARIANTS, dispatchSink, measureDispatch, type DispatchCell } from './dispatch';
import { cpus, loadavg } from 'node:os';
import type { MetricsReport } from '@loadwise/protocol';
import {
  createEndpointLoad,
  createLoadCohort,
  createSeededRandom,
  createStrategy,
  STRATEGY_NAMES,
  type Endpoint,
  type Strategy,
} from '@loadwise/gateway-plugin';

const SIZES = [10, 100, 1000] as const;
const KEYS = Array.from({ length: 4096 }, (_, i) => `user-${i}`);
/** Fake clock step per pick: reports stay fresh (3 × 1 s) through a whole repetition. */
const STEP_MS = 0.0005;

function report(random: () => number, id: string): MetricsReport {
  const inFlight = Math.floor(random() * 10);
  return {
    v: 1,
    kind: 'metrics',
    backendId: id,
    epochMs: 1,
    seq: 1,
    ts: 0,
    intervalMs: 1000,
    state: 'online',
    host: {
      cpuUtilization: random(),
      memoryUtilization: 0.5 + random() / 2,
      memoryAvailableBytes: 1e9,
    },
    queue: { inFlight, queued: inFlight > 7 ? Math.floor(random() * 20) : 0, source: {} },
    concurrencyLimit: 8,
    traffic: { rps: 100 + random() * 400, latencyMeanMs: 5 + random() * 45 },
    health: { verdict: random() < 0.05 ? 'degraded' : 'up' },
  };
}

function cluster(n: number, seed: number): Endpoint[] {
  const random = createSeededRandom(seed);
  const cohort = createLoadCohort();
  const eps: Endpoint[] = [];
  for (let i = 0; i < n; i++) {
    const load = createEndpointLoad({ cohort });
    const latency = 5 + random() * 45;
    for (let r = 0; r < 20; r++) {
      load.onRequestStart(0);
      load.onRequestEnd(r, latency * (0.8 + random() * 0.4), random() > 0.01);
    }
    const inFlight = Math.floor(random() * 9);
    for (let k = 0; k < inFlight; k++) load.onRequestStart(20);
    if (i % 2 === 0) load.onReport(report(random, `b${i}`), 20);
    if (i % 10 === 3) load.admit(15);
    eps.push({ id: `b${i}`, weight: 1 + (i % 3), load });
  }
  return eps;
}

interface Cell {
  strategy: string;
  endpoints: number;
  pickNs: number;
  cycleNs: number;
  pickRepsNs: number[];
  cycleRepsNs: number[];
}

const median = (xs: number[]): number => {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
};

let sink = 0;

function timePicks(s: Strategy, picks: number, t0: number): number {
  let t = t0;
  const start = process.hrtime.bigint();
  for (let i = 0; i < picks; i++) {
    t += STEP_MS;
    const p = s.pick({ nowMs: t, hashKey: KEYS[i & 4095] });
    if (p !== undefined) sink += p.endpoint.weight;
  }
  return Number(process.hrtime.bigint() - start) / picks;
}

function timeCycles(s: Strategy, picks: number, t0: number, eps: Endpoint[]): number {
  // Outstanding requests: a ring of the last `window` picks, ended in order, so in-flight
  // counts hover around their initial level instead of growing.
  const window = eps.length;
  const ring: Array<Endpoint | undefined> = new Array(window).fill(undefined);
  let t = t0;
  const start = process.hrtime.bigint();
  for (let i = 0; i < picks; i++) {
    t += STEP_MS;
    const p = s.pick({ nowMs: t, hashKey: KEYS[i & 4095] });
    if (p === undefined) continue;
    p.endpoint.load.onRequestStart(t);
    const slot = i % window;
    const old = ring[slot];
    if (old !== undefined) old.load.onRequestEnd(t, 10, true);
    ring[slot] = p.endpoint;
  }
  const ns = Number(process.hrtime.bigint() - start) / picks;
  for (const ep of ring) ep?.load.onRequestEnd(t, 10, true);
  return ns;
}

function measure(name: string, n: number, reps: number): Cell {
  const pickRepsNs: number[] = [];
  const cycleRepsNs: number[] = [];
  for (let rep = 0; rep < reps; rep++) {
    // A fresh cluster per repetition: the cycle runs change the state.
    const eps = cluster(n, 1000 + rep);
    const s = createStrategy(name, { random: createSeededRandom(rep + 1) });
    s.setEndpoints(eps);
    // Calibrate: about 50 ms per timed run.
    let picks = 2000;
    const probe = timePicks(s, picks, 21);
    picks = Math.max(2000, Math.min(2_000_000, Math.round(50e6 / Math.max(probe, 1))));
    timePicks(s, picks >> 2, 21); // warm-up (JIT)
    pickRepsNs.push(timePicks(s, picks, 21));
    timeCycles(s, picks >> 2, 22, eps); // warm-up of the hooks
    cycleRepsNs.push(timeCycles(s, picks, 23, eps));
    s.dispose?.();
  }
  return {
    strategy: name,
    endpoints: n,
    pickNs: median(pickRepsNs),
    cycleNs: median(cycleRepsNs),
    pickRepsNs,
    cycleRepsNs,
  };
}

export function parseArgs(argv: string[]): { reps: number; json: string | undefined } {
  let reps = 7;
  let json: string | undefined;
  for (let i = 0; i < argv.length; i++) {
    if (argv[i] === '--reps') reps = Math.max(1, Number(argv[++i]) || reps);
    else if (argv[i] === '--json') json = argv[++i];
  }
  return { reps, json };
}

function table(cells: Cell[], field: 'pickNs' | 'cycleNs'): string {
  const rows = ['| strategy | n=10 | n=100 | n=1000 | 1000 vs 10 |', '|---|---:|---:|---:|---:|'];
  for (const name of STRATEGY_NAMES) {
    const by = (n: number) => cells.find((c) => c.strategy === name && c.endpoints === n)![field];
    const [a, b, c] = SIZES.map(by) as [number, number, number];
    rows.push(
      `| ${name} | ${a.toFixed(0)} | ${b.toFixed(0)} | ${c.toFixed(0)} | ${(c / a).toFixed(2)}× |`,
    );
  }
  return rows.join('\n');
}

function dispatchTable(cells: DispatchCell[]): string {
  const rows = [
    '| dispatch | n=10 | n=100 | n=1000 | 1000 vs 10 | runs at n=1000 |',
    '|---|---:|---:|---:|---:|---|',
  ];
  for (const v of DISPATCH_VARIANTS) {
    const at = (n: number) => cells.find((c) => c.variant === v && c.endpoints === n)!;
    const [a, b, c] = SIZES.map((n) => at(n).ns) as [number, number, number];
    const runs = at(1000)
      .repsNs.map((x) => x.toFixed(0))
      .join(', ');
    rows.push(
      `| ${v} | ${a.toFixed(0)} | ${b.toFixed(0)} | ${c.toFixed(0)} | ${(c / a).toFixed(2)}× | ${runs} |`,
    );
  }
  return rows.join('\n');
}

async function main(): Promise<void> {
  const { reps, json } = parseArgs(process.argv.slice(2));
  // Warm-up: the first repetitions of whichever variant runs first otherwise time the JIT.
  for (const v of DISPATCH_VARIANTS) await measureDispatch(v, 100, 2);
  const dispatch: DispatchCell[] = [];
  for (const v of DISPATCH_VARIANTS)
    for (const n of SIZES) dispatch.push(await measureDispatch(v, n, reps));
  const cells: Cell[] = [];
  for (const name of STRATEGY_NAMES) for (const n of SIZES) cells.push(measure(name, n, reps));
  // Other work on the machine moves these figures: the load average is part of the result.
  const header =
    `node ${process.version}, ${cpus().length} cores (${cpus()[0]?.model.trim() ?? '?'}), ` +
    `load average ${loadavg()[0]!.toFixed(2)}, ${reps} repetitions, median ns`;
  process.stdout.write(
    `dispatch: choose (eligibility, saturation, pick) + start + end, load-aware, ns per request (${header})\n${dispatchTable(dispatch)}\n\n`,
  );
  process.stdout.write(`pick alone (${header})\n${table(cells, 'pickNs')}\n\n`);
  process.stdout.write(
    `pick + onRequestStart + onRequestEnd (${header})\n${table(cells, 'cycleNs')}\n`,
  );
  if (json !== undefined)
    writeFileSync(json, JSON.stringify({ node: process.version, reps, dispatch, cells }, null, 2));
  if (sink === 0 || dispatchSink() === 0) process.stdout.write('(no picks)\n');
}

if (require.main === module) void main();
