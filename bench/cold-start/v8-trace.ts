/**
 * Sums up a gateway's V8 optimisation trace around the load's start: how many
 * functions V8 optimised, deoptimised and invalidated before the warm-up
 * ended, while the gateway idled, and in the first seconds of load.
 *
 *   LOADWISE_BENCH_GATEWAY_STDOUT=/tmp/v8.txt \
 *   LOADWISE_BENCH_GATEWAY_NODE_ARGS="--trace-opt --trace-deopt" \
 *   npm run bench:cold-start -- --runs 1 --seconds 4 --scenario identical --balancers "(backlog 511)"
 *   npm run bench:v8-trace -- /tmp/v8.txt [--idle-ms 5000]
 *
 * The file is what bench/lib/procs.ts gatewayStdoutFile writes: chunks of
 * stdout, each after `@<epoch ms> <process>`, and `@load <epoch ms> ...` per
 * run. A trace costs the gateway CPU: its run's latencies are not the product's.
 */
import { existsSync, readFileSync } from 'node:fs';

export interface Phase {
  name: string;
  optimized: number;
  deoptimized: number;
  invalidated: number;
  /** Deoptimised functions by name, most first. */
  deoptFunctions: Array<[string, number]>;
}

const KINDS = {
  optimized: /^\[completed (optimizing|compiling)/,
  deoptimized: /^\[bailout \(kind: deopt/,
  invalidated: /^\[marking dependent code/,
};

/**
 * Phases of one run: until the gateway's `[loadwise ready]` marker (its
 * lb.ready() resolved; without the marker, `idleMs` before the load), then by
 * time relative to the first `@load` marker.
 */
export function summarize(text: string, idleMs = 5_000): Phase[] {
  const load = /^@load (\d+)/m.exec(text);
  if (!load) throw new Error('no @load marker: was LOADWISE_BENCH_GATEWAY_STDOUT set for the run?');
  const start = Number(load[1]);
  const hasMarker = text.includes(READY);
  const bounds: Array<[string, number]> = [
    ['start and warm-up', -idleMs],
    ['idle', 0],
    ['load, second 0', 1_000],
    ['load, second 1', 2_000],
    ['load, later', Infinity],
  ];
  const phases = bounds.map(([name]) => ({
    name,
    optimized: 0,
    deoptimized: 0,
    invalidated: 0,
    names: new Map<string, number>(),
  }));
  let at = 0;
  let ready = false;
  for (const line of text.split('\n')) {
    const stamp = /^@(\d+) /.exec(line);
    if (stamp) {
      at = Number(stamp[1]);
      continue;
    }
    if (line.includes(READY)) ready = true;
    const byTime = bounds.findIndex(([, end]) => at - start < end);
    const i = hasMarker ? (ready ? Math.max(1, byTime) : 0) : byTime;
    const phase = phases[i]!;
    if (KINDS.optimized.test(line)) phase.optimized++;
    else if (KINDS.invalidated.test(line)) phase.invalidated++;
    else if (KINDS.deoptimized.test(line)) {
      phase.deoptimized++;
      const fn = /<JSFunction ([^ >(]*)/.exec(line)?.[1] || '(anonymous)';
      phase.names.set(fn, (phase.names.get(fn) ?? 0) + 1);
    }
  }
  return phases.map(({ names, ...p }) => ({
    ...p,
    deoptFunctions: [...names].sort((a, b) => b[1] - a[1]),
  }));
}

/** What bench/procs/gateway-loadwise.ts prints when lb.ready() has resolved. */
const READY = '[loadwise ready]';

const USAGE = `usage: npm run bench:v8-trace -- FILE [--idle-ms N]
FILE is the gateway's stdout of a traced cold-start run, made first with:
  LOADWISE_BENCH_GATEWAY_STDOUT=FILE \\
  LOADWISE_BENCH_GATEWAY_NODE_ARGS="--trace-opt --trace-deopt" \\
  npm run bench:cold-start -- --runs 1 --seconds 4 --scenario identical --balancers "(backlog 511)"`;

function main(): void {
  const file = process.argv[2];
  if (!file || !existsSync(file)) {
    console.error(file ? `${file}: no such file\n${USAGE}` : USAGE);
    process.exit(2);
  }
  const i = process.argv.indexOf('--idle-ms');
  const idle = i > 0 ? Number(process.argv[i + 1]) : 5_000;
  for (const p of summarize(readFileSync(file, 'utf8'), idle)) {
    const top = p.deoptFunctions
      .slice(0, 12)
      .map(([n, c]) => `${n}${c > 1 ? ` ×${c}` : ''}`)
      .join(', ');
    console.log(
      `${p.name}: ${p.optimized} optimised, ${p.deoptimized} deoptimised, ${p.invalidated} invalidated` +
        (top ? `\n  deoptimised: ${top}` : ''),
    );
  }
}

if (require.main === module) main();
