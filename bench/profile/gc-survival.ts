/**
 * `npm run bench:gc-survival [-- --rate 1400 | --concurrency 32] [--seconds 6] [--runs 3] [--classes] [--out FILE]`
 *
 * `--classes`: also the loadwise gateway on Node's own server classes and the
 * peer on gatewayServerOptions() (docs/gateway.md, "The gateway's server").
 *
 * What survives a scavenge, per request: the loadwise gateway (default
 * options) and the keep-alive Express + http-proxy-middleware peer, in front
 * of the same three backends that answer at once (the setting of
 * bench/profile/run.ts), each run with `node --trace-gc-nvp`. From the lines
 * V8 prints for every collection during the measured phase: the scavenges'
 * count, mean pause, bytes promoted to old space and bytes copied within the
 * young generation (new_space_survived), per request served; the major GCs'
 * count and the heap size before each; and the heap size at the end of the
 * phase. These are counts and sizes, not times, so a busy machine moves them
 * far less than the CPU figures (pauses are listed, but are times). Except
 * in an open loop on a busy machine: a gateway that falls behind holds more
 * requests in flight at each scavenge, and those survive it rightly.
 * `--concurrency N` (a closed loop of N workers) bounds them to N.
 */
import { readFileSync, writeFileSync } from 'node:fs';
import { loadavg } from 'node:os';
import { join } from 'node:path';
import type { LoadgenConfig, LoadgenResult } from '../procs/loadgen';
import {
  expressHpmKeepAliveWith,
  loadwise,
  serverClassVariants,
  type BalancerDef,
} from '../lib/balancers';
import { forkProc, sleep } from '../lib/procs';
import { loadFor, startInstantCluster } from './run';

/** One `--trace-gc-nvp` line: `[pid:0x…]  631 ms: pause=0.5 mutator=10.4 gc=s … promoted=0 …`. */
export interface GcLine {
  kind: string;
  pauseMs: number;
  promoted: number;
  survived: number;
  sizeBefore: number;
  sizeAfter: number;
}

export function parseGcLine(line: string): GcLine | undefined {
  const kind = /\bgc=(\w+)/.exec(line)?.[1];
  if (kind === undefined) return undefined;
  const num = (key: string): number => {
    const m = new RegExp(`\\b${key}=([0-9.]+)`).exec(line);
    return m ? Number(m[1]) : 0;
  };
  return {
    kind,
    pauseMs: num('pause'),
    promoted: num('promoted'),
    survived: num('new_space_survived'),
    sizeBefore: num('total_size_before'),
    sizeAfter: num('total_size_after'),
  };
}

export interface SurvivalRow {
  gateway: string;
  run: number;
  requests: number;
  rps: number;
  scavenges: number;
  scavengeMeanMs: number;
  promotedBytesPerReq: number;
  survivedBytesPerReq: number;
  majors: number;
  /** Heap size (V8's total_size_before) before each major GC of the phase, bytes. */
  heapBeforeMajor: number[];
  /** Heap size after the last collection of the phase, bytes. */
  heapAtEnd: number;
}

export function summarize(
  gateway: string,
  run: number,
  lines: GcLine[],
  requests: number,
  rps: number,
): SurvivalRow {
  const scav = lines.filter((l) => l.kind === 's');
  const majors = lines.filter((l) => l.kind === 'mc' || l.kind === 'ms');
  const sum = (xs: number[]): number => xs.reduce((a, b) => a + b, 0);
  const per = (bytes: number): number => (requests > 0 ? bytes / requests : NaN);
  return {
    gateway,
    run,
    requests,
    rps,
    scavenges: scav.length,
    scavengeMeanMs: scav.length ? sum(scav.map((l) => l.pauseMs)) / scav.length : NaN,
    promotedBytesPerReq: per(sum(scav.map((l) => l.promoted))),
    survivedBytesPerReq: per(sum(scav.map((l) => l.survived))),
    majors: majors.length,
    heapBeforeMajor: majors.map((l) => l.sizeBefore),
    heapAtEnd: lines.at(-1)?.sizeAfter ?? NaN,
  };
}

interface SamplingHeapNode {
  callFrame: { functionName: string; url: string; lineNumber: number };
  selfSize: number;
  children: SamplingHeapNode[];
}
interface SamplingHeapProfile {
  head: SamplingHeapNode;
}

/** Bytes by allocation site (function, file:line), largest first. */
export function topSites(profile: SamplingHeapProfile, n: number): Array<[string, number]> {
  const bySite = new Map<string, number>();
  const walk = (node: SamplingHeapNode): void => {
    const { functionName, url, lineNumber } = node.callFrame;
    const where = url.replace(/^.*\/node_modules\//, '').replace(/^.*\/packages\//, '');
    const site = `${functionName || '(anonymous)'} ${where}:${lineNumber + 1}`;
    if (node.selfSize > 0) bySite.set(site, (bySite.get(site) ?? 0) + node.selfSize);
    for (const c of node.children) walk(c);
  };
  walk(profile.head);
  return [...bySite].sort((a, b) => b[1] - a[1]).slice(0, n);
}

interface Args {
  rate: number;
  /** Closed loop with this many workers instead of the open loop at `rate`. */
  concurrency: number | undefined;
  seconds: number;
  runs: number;
  out: string | undefined;
  /** Write a sampling heap profile of what outlived a scavenge per run here, and list its top sites. */
  sampleDir: string | undefined;
  /** Write a heap snapshot of each gateway halfway through the measured phase here. */
  snapshotDir: string | undefined;
  brokerUrl: string;
  /** Also the two server-classes variants (bench/lib/balancers.ts serverClassVariants). */
  classes: boolean;
}

function parseArgs(argv: string[]): Args {
  const a: Args = {
    rate: 1400,
    concurrency: undefined,
    seconds: 6,
    runs: 3,
    out: undefined,
    sampleDir: undefined,
    snapshotDir: undefined,
    brokerUrl: process.env.LOADWISE_BENCH_BROKER ?? 'mqtt://127.0.0.1:1883',
    classes: false,
  };
  const flags: Record<string, (v: string) => void> = {
    '--rate': (v) => (a.rate = Number(v)),
    '--concurrency': (v) => (a.concurrency = Number(v)),
    '--seconds': (v) => (a.seconds = Number(v)),
    '--runs': (v) => (a.runs = Number(v)),
    '--out': (v) => (a.out = v),
    '--sample': (v) => (a.sampleDir = v),
    '--snapshot': (v) => (a.snapshotDir = v),
    '--broker': (v) => (a.brokerUrl = v),
  };
  for (let i = 0; i < argv.length; i++) {
    if (argv[i] === '--classes') {
      a.classes = true;
      continue;
    }
    const set = flags[argv[i]!];
    if (!set) throw new Error(`unknown argument ${argv[i]}`);
    set(argv[++i] ?? '');
  }
  return a;
}

async function surviveOnce(
  def: BalancerDef,
  ctx: Parameters<BalancerDef['start']>[0],
  args: Args,
  run: number,
): Promise<SurvivalRow> {
  const gw = await def.start(ctx, 0);
  const stdout = gw.procs[0]!.child.stdout;
  if (!stdout) throw new Error(`${def.name}: no stdout`);
  const lines: GcLine[] = [];
  let partial = '';
  let recording = false;
  stdout.on('data', (d: Buffer) => {
    const parts = (partial + d.toString()).split('\n');
    partial = parts.pop() ?? '';
    if (!recording) return;
    for (const p of parts) {
      const l = parseGcLine(p);
      if (l) lines.push(l);
    }
  });
  try {
    const shape: Pick<LoadgenConfig, 'mode' | 'rate' | 'concurrency'> =
      args.concurrency === undefined
        ? { mode: 'open', rate: args.rate }
        : { mode: 'closed', concurrency: args.concurrency };
    const load = loadFor(gw.url, shape, args.seconds);
    const { warmupMs } = load;
    const gen = forkProc('loadgen', 'loadgen.js', load);
    const result = gen.waitFor<LoadgenResult>('result', warmupMs + load.durationMs + 40_000);
    await sleep(warmupMs);
    const proc = gw.procs[0]!;
    if (args.sampleDir) {
      proc.send({ type: 'heap-sampling-start' });
      await proc.waitFor('heap-sampling-started');
    }
    recording = true;
    if (args.snapshotDir) {
      // Halfway: a snapshot collects garbage first, so the GC lines after it are not comparable.
      await sleep(load.durationMs / 2);
      recording = false;
      const snap = join(args.snapshotDir, `${def.family}-${run}.heapsnapshot`);
      proc.send({ type: 'heap-snapshot', file: snap });
      await proc.waitFor('heap-snapshot-written', 60_000);
      console.log(`${def.name} run ${run}: heap snapshot ${snap}`);
      await sleep(load.durationMs / 2);
    } else await sleep(load.durationMs);
    recording = false;
    const file = args.sampleDir && join(args.sampleDir, `${def.family}-${run}.heapprofile`);
    if (file) {
      proc.send({ type: 'heap-sampling-stop', file });
      await proc.waitFor('heap-sampling-stopped', 30_000);
    }
    const res = await result;
    await gen.stop();
    const requests = res.throughputRps * args.seconds;
    if (file) {
      const profile = JSON.parse(readFileSync(file, 'utf8')) as SamplingHeapProfile;
      console.log(`${def.name} run ${run}, outlived a scavenge, top sites (B/req), ${file}:`);
      for (const [site, bytes] of topSites(profile, 25))
        console.log(`  ${f(bytes / requests).padStart(6)}  ${site}`);
    }
    return summarize(def.name, run, lines, requests, res.throughputRps);
  } finally {
    await gw.stop();
  }
}

const f = (n: number, d = 0): string => (Number.isFinite(n) ? n.toFixed(d) : '–');
const mb = (bytes: number): string => f(bytes / 1e6, 1);

function table(rows: SurvivalRow[]): string {
  const head = [
    'gateway',
    'run',
    'req/s',
    'scavenges',
    'mean scavenge ms',
    'promoted B/req',
    'copied in new space B/req',
    'major GCs',
    'heap before each major GC, MB',
    'heap at end, MB',
  ];
  const out = [`| ${head.join(' | ')} |`, `|${head.map(() => '---').join('|')}|`];
  for (const r of rows) {
    const cells = [
      r.gateway,
      r.run,
      f(r.rps),
      r.scavenges,
      f(r.scavengeMeanMs, 2),
      f(r.promotedBytesPerReq),
      f(r.survivedBytesPerReq),
      r.majors,
      r.heapBeforeMajor.map(mb).join(', ') || '–',
      mb(r.heapAtEnd),
    ];
    out.push(`| ${cells.join(' | ')} |`);
  }
  return out.join('\n');
}

async function main(): Promise<void> {
  const args = parseArgs(process.argv.slice(2));
  const started = new Date().toISOString();
  const before = loadavg();
  const { cluster, ctx } = await startInstantCluster(args.brokerUrl, 'gc-survival');
  const traced = { nodeArgs: ['--trace-gc-nvp'] };
  const defs = [loadwise('load-aware', {}, traced), expressHpmKeepAliveWith(traced)];
  if (args.classes) defs.push(...serverClassVariants(traced));
  const rows: SurvivalRow[] = [];
  try {
    for (let run = 1; run <= args.runs; run++) {
      for (const def of defs) {
        await cluster.drain();
        const r = await surviveOnce(def, ctx, args, run);
        rows.push(r);
        console.log(
          `${r.gateway} run ${run}: ${f(r.rps)} req/s, ${r.scavenges} scavenges of ` +
            `${f(r.scavengeMeanMs, 2)} ms, promoted ${f(r.promotedBytesPerReq)} B/req, ` +
            `copied ${f(r.survivedBytesPerReq)} B/req, ${r.majors} major GCs ` +
            `(heap before: ${r.heapBeforeMajor.map(mb).join(', ') || '–'} MB), ` +
            `heap at end ${mb(r.heapAtEnd)} MB`,
        );
      }
    }
  } finally {
    await cluster.stop();
  }
  const page = [
    '# Benchmark: what survives a scavenge, per request',
    '',
    `${
      args.concurrency === undefined
        ? `Open loop at ${args.rate} req/s`
        : `Closed loop, ${args.concurrency} requests at a time`
    } for ${args.seconds} s after 2 s of warm-up; three backends that ` +
      'answer at once, with their agents; each gateway run with `node --trace-gc-nvp`. Scavenges: ' +
      'count, mean pause, and the bytes they promoted to old space and copied within the young ' +
      'generation (`promoted=`, `new_space_survived=`), summed over the measured phase and divided ' +
      'by the requests served. Major GCs: count, and the heap size before each (`total_size_before=`). ' +
      'Heap at end: after the last collection of the phase. Every run is listed.',
    '',
    `${started} · Node ${process.version} · load average before ${before
      .map((l) => l.toFixed(2))
      .join(' ')}, after ${loadavg()
      .map((l) => l.toFixed(2))
      .join(' ')} · \`npm run bench:gc-survival -- ${process.argv.slice(2).join(' ')}\``,
    '',
    table(rows),
    '',
  ].join('\n');
  if (args.out) {
    writeFileSync(args.out, page);
    console.log(`wrote ${args.out}`);
  } else console.log('\n' + page);
}

if (require.main === module) {
  main().then(
    () => process.exit(0),
    (err: unknown) => {
      console.error(err);
      process.exit(1);
    },
  );
}
