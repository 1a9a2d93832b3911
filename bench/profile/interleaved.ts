/**
 * `npm run bench:overhead-ab [-- --rounds 12] [--seconds 3] [--rate 1000] [--classes] [--out FILE]`
 *
 * Scenario 6's question (what does the gateway itself cost against Express +
 * http-proxy-middleware with a keep-alive agent?) asked so that a shared
 * machine's drift cancels out. Scenario 6 measures one gateway after the
 * other for 6-8 s each; on this project's machines the speed changes by 1.5×
 * between such phases, so the ratio of two of them swung from 0.54× to 1.06×
 * in one run. Here every gateway is started once, in front of the same three
 * backends that answer at once (with their agents), and the measurements are
 * short and interleaved: each round runs a closed loop (32 concurrent) and an
 * open loop (`--rate` req/s) of `--seconds` against each gateway in a fresh
 * random order, and a gateway's figures are compared with the peer's of the
 * same round. Gateway CPU is its process's user + system time
 * (/proc/<pid>/stat) over the measured span, per request served. Every round
 * is listed, then the median of the per-round ratios and how many rounds met
 * the targets (throughput ≥ 1.0×, CPU per request ≤ 1.1× the peer).
 *
 * `--classes`: also the loadwise gateway on Node's own server classes
 * (`app.listen`) and the peer on loadwise's gatewayServerOptions()
 * (docs/gateway.md, "The gateway's server"), in the same rounds.
 *
 * `--baseline DIR`: also the gateway of another checkout of this repository
 * (an earlier commit, built with `npx tsc -b` in DIR), in the same rounds: a
 * change's effect measured before and after in one run.
 */
import { execFileSync } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { cpus, loadavg } from 'node:os';
import { join } from 'node:path';
import type { LoadgenConfig, LoadgenResult } from '../procs/loadgen';
import {
  expressHpmKeepAlive,
  expressUndici,
  loadwise,
  serverClassVariants,
  loadwiseAt,
  type BalancerDef,
  type RunningBalancer,
} from '../lib/balancers';
import { CpuMeter, forkProc, sleep } from '../lib/procs';
import { loadFor, startInstantCluster } from './run';

interface Args {
  rounds: number;
  seconds: number;
  rate: number;
  undici: boolean;
  classes: boolean;
  baseline: string | undefined;
  out: string;
  brokerUrl: string;
}

function parseArgs(argv: string[]): Args {
  const a: Args = {
    rounds: 12,
    seconds: 3,
    rate: 1000,
    undici: false,
    classes: false,
    baseline: undefined,
    out: join(__dirname, '..', '..', 'results', 'overhead-interleaved.md'),
    brokerUrl: process.env.LOADWISE_BENCH_BROKER ?? 'mqtt://127.0.0.1:1883',
  };
  for (let i = 0; i < argv.length; i++) {
    const v = (): string => argv[++i] ?? '';
    const k = argv[i];
    if (k === '--rounds') a.rounds = Number(v());
    else if (k === '--seconds') a.seconds = Number(v());
    else if (k === '--rate') a.rate = Number(v());
    else if (k === '--undici') a.undici = true;
    else if (k === '--classes') a.classes = true;
    else if (k === '--baseline') a.baseline = v();
    else if (k === '--out') a.out = v();
    else if (k === '--broker') a.brokerUrl = v();
    else throw new Error(`unknown argument ${k}`);
  }
  if (!(a.rounds >= 1 && a.seconds > 0 && a.rate > 0))
    throw new Error('bad --rounds/--seconds/--rate');
  return a;
}

type Mode = 'closed' | 'open';

interface Row {
  round: number;
  mode: Mode;
  gateway: string;
  rps: number;
  p99Ms: number;
  errors: number;
  cpuUsPerReq: number;
}

/** One measured span against one gateway: 0.5 s of warm-up, then `seconds`. */
async function measure(
  gw: RunningBalancer,
  mode: Mode,
  args: Args,
): Promise<Omit<Row, 'round' | 'gateway'>> {
  const shape: Pick<LoadgenConfig, 'mode' | 'rate' | 'concurrency'> =
    mode === 'closed' ? { mode: 'closed', concurrency: 32 } : { mode: 'open', rate: args.rate };
  const load = { ...loadFor(gw.url, shape, args.seconds), warmupMs: 500 };
  const gen = forkProc('loadgen', 'loadgen.js', load);
  const result = gen.waitFor<LoadgenResult>('result', load.warmupMs + load.durationMs + 30_000);
  const meter = new CpuMeter(gw.procs.map((p, i) => ({ name: `g${i}`, pid: p.pid })));
  await sleep(load.warmupMs);
  meter.begin();
  await sleep(load.durationMs);
  const used = meter.end();
  const res = await result;
  await gen.stop();
  const cores = Object.values(used).reduce((s, c) => s + c, 0);
  return {
    mode,
    rps: res.throughputRps,
    p99Ms: res.latency.p99Ms,
    errors: res.errorCount,
    cpuUsPerReq: res.throughputRps > 0 ? (cores * 1e6) / res.throughputRps : NaN,
  };
}

/** The short commit a checkout is at (its build is what runs), or its path. */
function commitOf(dir: string): string {
  try {
    return execFileSync('git', ['-C', dir, 'rev-parse', '--short', 'HEAD'], {
      encoding: 'utf8',
    }).trim();
  } catch {
    return dir;
  }
}

function shuffled<T>(xs: T[]): T[] {
  const a = [...xs];
  for (let i = a.length - 1; i > 0; i--) {
    const j = Math.floor(Math.random() * (i + 1));
    [a[i], a[j]] = [a[j]!, a[i]!];
  }
  return a;
}

const median = (xs: number[]): number => {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
};

const f = (n: number, d = 1): string => (Number.isFinite(n) ? n.toFixed(d) : '–');

const PEER = expressHpmKeepAlive.name;

function page(rows: Row[], names: string[], args: Args, started: string, before: number[]): string {
  const out: string[] = [
    '# Benchmark: gateway overhead, interleaved',
    '',
    'Three backends that answer at once, with their agents; every gateway started once in front of them. ' +
      `Each round measures every gateway, in a random order, with a closed loop (32 concurrent) and an open loop (${args.rate} req/s) ` +
      `of ${args.seconds} s each after 0.5 s of warm-up. Gateway CPU: its /proc/<pid>/stat user + system time over the span, ` +
      `per request served. Ratios are against "${PEER}" (Express + http-proxy-middleware with a keep-alive agent, ` +
      'round robin) in the same round. All processes share the machine, so absolute figures are lower than on separate ' +
      'machines; the per-round ratios are the comparable part.',
    '',
    `${started} · ${cpus().length} cores (${cpus()[0]?.model.trim() ?? '?'}) · Node ${process.version} · load average ` +
      `before ${before.map((l) => l.toFixed(2)).join(' ')}, after ${loadavg()
        .map((l) => l.toFixed(2))
        .join(' ')} · \`npm run bench:overhead-ab -- ${process.argv.slice(2).join(' ')}\``.replace(
        ' -- `',
        '`',
      ),
    '',
  ];
  for (const mode of ['closed', 'open'] as const) {
    const label =
      mode === 'closed' ? 'Closed loop, 32 concurrent' : `Open loop, ${args.rate} req/s`;
    const others = names.filter((n) => n !== PEER);
    out.push(`## ${label}`, '');
    const head = ['round', `peer req/s`, 'peer CPU µs/req', 'peer p99 ms'];
    for (const n of others) head.push(`${n}: req/s (× peer)`, 'CPU µs/req (× peer)', 'p99 ms');
    out.push(`| ${head.join(' | ')} |`, `|${head.map(() => '---').join('|')}|`);
    const ratios = new Map(others.map((n) => [n, { rps: [] as number[], cpu: [] as number[] }]));
    for (let r = 1; r <= args.rounds; r++) {
      const of = (n: string): Row | undefined =>
        rows.find((x) => x.round === r && x.mode === mode && x.gateway === n);
      const peer = of(PEER);
      if (!peer) continue;
      const cells = [String(r), f(peer.rps, 0), f(peer.cpuUsPerReq, 0), f(peer.p99Ms)];
      for (const n of others) {
        const x = of(n);
        if (!x) {
          cells.push('–', '–', '–');
          continue;
        }
        const rr = x.rps / peer.rps;
        const cr = x.cpuUsPerReq / peer.cpuUsPerReq;
        ratios.get(n)!.rps.push(rr);
        ratios.get(n)!.cpu.push(cr);
        const err = x.errors ? ` (${x.errors} errors)` : '';
        cells.push(
          `${f(x.rps, 0)} (${f(rr, 2)}×)${err}`,
          `${f(x.cpuUsPerReq, 0)} (${f(cr, 2)}×)`,
          f(x.p99Ms),
        );
      }
      out.push(`| ${cells.join(' | ')} |`);
    }
    out.push('');
    for (const n of others) {
      const { rps, cpu } = ratios.get(n)!;
      out.push(
        `- **${n}**: median of the per-round ratios: throughput **${f(median(rps), 2)}×**, ` +
          `CPU per request **${f(median(cpu), 2)}×**; rounds with throughput ≥ 1.0×: ${rps.filter((x) => x >= 1).length} of ${rps.length}; ` +
          `with CPU per request ≤ 1.1×: ${cpu.filter((x) => x <= 1.1).length} of ${cpu.length}.`,
      );
    }
    out.push('');
  }
  return out.join('\n');
}

async function main(): Promise<void> {
  const args = parseArgs(process.argv.slice(2));
  const started = new Date().toISOString();
  const before = loadavg();
  const { cluster, ctx } = await startInstantCluster(args.brokerUrl, 'interleaved');
  const defs: BalancerDef[] = [loadwise('load-aware'), expressHpmKeepAlive];
  if (args.undici) defs.push(expressUndici);
  if (args.classes) defs.push(...serverClassVariants());
  if (args.baseline) {
    const label = `baseline ${commitOf(args.baseline)}`;
    defs.push(loadwiseAt(args.baseline, label));
  }
  const running: Array<{ name: string; gw: RunningBalancer }> = [];
  const rows: Row[] = [];
  try {
    for (const [i, def] of defs.entries())
      running.push({ name: def.name, gw: await def.start(ctx, i) });
    // Warm every gateway (JIT, pools) before the first measured round.
    for (const { gw } of running) await measure(gw, 'closed', { ...args, seconds: 2 });
    for (let round = 1; round <= args.rounds; round++) {
      for (const mode of ['closed', 'open'] as const) {
        for (const { name, gw } of shuffled(running)) {
          await cluster.drain();
          const row = { round, gateway: name, ...(await measure(gw, mode, args)) };
          rows.push(row);
          console.log(
            `round ${round} ${mode} ${name}: ${f(row.rps, 0)} req/s, ${f(row.cpuUsPerReq, 0)} CPU µs/req, p99 ${f(row.p99Ms)} ms`,
          );
        }
      }
    }
  } finally {
    for (const { gw } of running) await gw.stop().catch(() => undefined);
    await cluster.stop();
  }
  writeFileSync(
    args.out,
    page(
      rows,
      running.map((r) => r.name),
      args,
      started,
      before,
    ),
  );
  console.log(`wrote ${args.out}`);
}

main().then(
  () => process.exit(0),
  (err: unknown) => {
    console.error(err);
    process.exit(1);
  },
);
