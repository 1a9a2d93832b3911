/**
 * `npm run bench:profile [-- --rate 1400] [--seconds 8] [--runs 3] [--out FILE]`
 *
 * Where a gateway's time goes at an open-loop rate: the loadwise gateway
 * (default options), Express + http-proxy-middleware with a keep-alive
 * agent (bench/procs/gateway-hpm.ts) and Express + undici (a keep-alive Pool
 * per backend, bench/procs/gateway-undici.ts), each in front of the same three
 * backends that answer at once, with their agents. Per run and gateway: its
 * CPU from /proc/<pid>/stat over the measured phase, per request; GC count and
 * time (PerformanceObserver, bench/procs/gateway-diag.ts); and a V8 CPU
 * profile of the measured phase only, its self time split by where the code
 * lives: Express (and its router), http-proxy / http-proxy-middleware, undici
 * (its JS and its WebAssembly HTTP parser), Node's http/net (node: internals
 * and natives), loadwise (packages/*), metrics
 * (prom-client), MQTT, GC. Writes a markdown page (default
 * bench/results/profile.md); the .cpuprofile files stay in a temp directory
 * (their path is printed) for Chrome DevTools.
 */
import { randomBytes } from 'node:crypto';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { cpus, loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import type { LoadgenConfig, LoadgenResult } from '../procs/loadgen';
import type { GatewayDiag } from '../procs/gateway-diag';
import {
  expressHpmKeepAlive,
  expressUndici,
  loadwise,
  type BalancerContext,
  type BalancerDef,
} from '../lib/balancers';
import { startCluster, type Cluster } from '../lib/cluster';
import { CpuMeter, forkProc, sleep } from '../lib/procs';

interface ProfileNode {
  id: number;
  callFrame: { functionName: string; url: string };
  hitCount?: number;
}
interface CpuProfile {
  nodes: ProfileNode[];
  startTime: number;
  endTime: number;
  samples: number[];
  timeDeltas: number[];
}

export const CATEGORIES = [
  'loadwise',
  'express',
  'http-proxy/hpm',
  'undici',
  'node http/net',
  'metrics (prom-client)',
  'mqtt',
  'other js',
  'gc',
  'native/program',
] as const;
type Category = (typeof CATEGORIES)[number];

/** Which part of the stack a profile node's own code belongs to. */
export function categorize(frame: { functionName: string; url: string }): Category | 'idle' {
  const { url, functionName } = frame;
  if (functionName === '(idle)') return 'idle';
  if (functionName === '(garbage collector)') return 'gc';
  if (functionName === '(program)' || functionName === '(root)') return 'native/program';
  if (/\/node_modules\/(http-proxy|http-proxy-middleware)\//.test(url)) return 'http-proxy/hpm';
  // undici's llhttp is WebAssembly; no other gateway here runs any (Node's own fetch is node:).
  if (/\/node_modules\/undici\//.test(url) || url.startsWith('wasm://')) return 'undici';
  if (/\/node_modules\/prom-client\//.test(url)) return 'metrics (prom-client)';
  if (/\/node_modules\/(mqtt|mqtt-packet|aedes)\//.test(url)) return 'mqtt';
  if (/\/packages\/[a-z-]+\/(dist|src)\//.test(url)) return 'loadwise';
  // Express 5 and the packages it is made of (router, finalhandler, ...).
  if (
    /\/node_modules\/(express|router|finalhandler|parseurl|path-to-regexp|on-finished|encodeurl|escape-html|content-type|type-is|mime-types|mime-db|accepts|negotiator|depd|debug|ms|statuses|http-errors|send|serve-static|fresh|range-parser|qs|cookie|cookie-signature|vary|proxy-addr|forwarded|ipaddr\.js|merge-descriptors|utils-merge|setprototypeof|inherits|etag|content-disposition|safe-buffer|iconv-lite|raw-body|body-parser|bytes|once|wrappy|ee-first|unpipe|toidentifier|media-typer|is-promise)\//.test(
      url,
    )
  )
    return 'express';
  if (url.startsWith('node:') || url === '') return 'node http/net';
  return 'other js';
}

/** Self time per category, ms, of a profile (each sample's time delta goes to its node). */
export function breakdown(profile: CpuProfile): Record<Category | 'idle', number> {
  const byId = new Map(profile.nodes.map((n) => [n.id, n]));
  const out = Object.fromEntries([...CATEGORIES, 'idle'].map((c) => [c, 0])) as Record<
    Category | 'idle',
    number
  >;
  for (let i = 0; i < profile.samples.length; i++) {
    const node = byId.get(profile.samples[i]!);
    const us = profile.timeDeltas[i + 1] ?? 0;
    if (node) out[categorize(node.callFrame)] += us / 1000;
  }
  return out;
}

/**
 * The setting of this benchmark: three backends that answer at once, each with
 * its agent, and what a balancer needs to start in front of them.
 */
export async function startInstantCluster(
  brokerUrl: string,
  tag: string,
): Promise<{ cluster: Cluster; ctx: BalancerContext; dir: string }> {
  const dir = mkdtempSync(join(tmpdir(), `loadwise-${tag}-`));
  const keyFile = join(dir, 'keys');
  writeFileSync(keyFile, `bench ${randomBytes(32).toString('base64')}\n`, { mode: 0o600 });
  const prefix = `lw${tag.replace(/[^a-z]/g, '')}${process.pid}`;
  const cluster = await startCluster({
    backends: [1, 2, 3].map((i) => ({ id: `b${i}`, slots: 1000, serviceMs: 0 })),
    maxQueue: 1024,
    agents: { brokerUrl, prefix, intervalMs: 1000, keyFile },
  });
  const ctx = { backends: cluster.backends, tmpDir: dir, brokerUrl, prefix, keyFile };
  return { cluster, ctx, dir };
}

/** The load of one run: 2 s of warm-up, then `seconds` measured, against `url`/work. */
export function loadFor(
  url: string,
  shape: Pick<LoadgenConfig, 'mode' | 'rate' | 'concurrency'>,
  seconds: number,
): LoadgenConfig {
  const sockets = shape.rate === undefined ? (shape.concurrency ?? 1) : shape.rate * 10;
  return {
    targets: [url + '/work'],
    ...shape,
    warmupMs: 2_000,
    durationMs: seconds * 1000,
    maxSockets: Math.min(4_000, Math.ceil(sockets)),
    timeoutMs: 10_000,
    windowMs: 1_000,
  };
}

interface Args {
  rate: number;
  seconds: number;
  runs: number;
  out: string;
  brokerUrl: string;
}

function parseArgs(argv: string[]): Args {
  const a: Args = {
    rate: 1400,
    seconds: 8,
    runs: 3,
    out: join(__dirname, '..', '..', 'results', 'profile.md'),
    brokerUrl: process.env.LOADWISE_BENCH_BROKER ?? 'mqtt://127.0.0.1:1883',
  };
  for (let i = 0; i < argv.length; i++) {
    const v = (): string => argv[++i] ?? '';
    const k = argv[i];
    if (k === '--rate') a.rate = Number(v());
    else if (k === '--seconds') a.seconds = Number(v());
    else if (k === '--runs') a.runs = Number(v());
    else if (k === '--out') a.out = v();
    else if (k === '--broker') a.brokerUrl = v();
    else throw new Error(`unknown argument ${k}`);
  }
  return a;
}

interface RunRow {
  gateway: string;
  run: number;
  rps: number;
  p99Ms: number;
  errors: number;
  cpuCores: number;
  cpuUsPerReq: number;
  gc?: GatewayDiag;
  /** Self time per category, µs per request. */
  perReq: Record<string, number>;
  busyMs: number;
  loadAvg1m: number;
}

async function profileOnce(
  def: BalancerDef,
  ctx: Parameters<BalancerDef['start']>[0],
  args: Args,
  run: number,
  dir: string,
): Promise<RunRow> {
  const gw = await def.start(ctx, 0);
  const proc = gw.procs[0]!;
  try {
    const load = loadFor(gw.url, { mode: 'open', rate: args.rate }, args.seconds);
    const { warmupMs } = load;
    const gen = forkProc('loadgen', 'loadgen.js', load);
    const result = gen.waitFor<LoadgenResult>('result', warmupMs + load.durationMs + 40_000);
    await sleep(warmupMs);
    const meter = new CpuMeter([{ name: 'gateway', pid: proc.pid }]);
    proc.send({ type: 'profile-start' });
    await proc.waitFor('profile-started');
    gw.resetDiag();
    meter.begin();
    // The measured phase only: late answers and timeouts after it are not profiled.
    await sleep(load.durationMs);
    const cores = meter.end().gateway ?? 0;
    const gc = await gw.diag().catch(() => undefined);
    const file = join(dir, `${def.family}-${run}.cpuprofile`);
    proc.send({ type: 'profile-stop', file });
    await proc.waitFor('profile-stopped', 30_000);
    const res = await result;
    await gen.stop();
    const b = breakdown(JSON.parse(readFileSync(file, 'utf8')) as CpuProfile);
    const cpuUsPerReq = res.throughputRps > 0 ? (cores * 1e6) / res.throughputRps : NaN;
    // The profiler samples wall time, and on a shared machine a descheduled
    // thread's time lands on whatever was on top: use the profile for shares
    // of the busy samples only, and /proc for the total.
    let busyMs = 0;
    for (const c of CATEGORIES) busyMs += b[c];
    const perReq: Record<string, number> = {};
    for (const c of CATEGORIES) perReq[c] = busyMs > 0 ? (b[c] / busyMs) * cpuUsPerReq : NaN;
    return {
      gateway: def.name,
      run,
      rps: res.throughputRps,
      p99Ms: res.latency.p99Ms,
      errors: res.errorCount,
      cpuCores: cores,
      cpuUsPerReq,
      gc,
      perReq,
      busyMs,
      loadAvg1m: loadavg()[0]!,
    };
  } finally {
    await gw.stop();
  }
}

const f = (n: number | undefined, d = 1): string =>
  n === undefined || !Number.isFinite(n) ? '–' : n.toFixed(d);

function page(rows: RunRow[], args: Args, started: string, before: number[], dir: string): string {
  const head = [
    'gateway',
    'run',
    'req/s',
    'p99 ms',
    'errors',
    'CPU µs/req (/proc)',
    ...CATEGORIES.map((c) => `${c} µs/req`),
    'GC count',
    'GC ms',
    'load avg 1 min',
  ];
  const lines = [`| ${head.join(' | ')} |`, `|${head.map(() => '---').join('|')}|`];
  for (const r of rows) {
    lines.push(
      `| ${[
        r.gateway,
        r.run,
        f(r.rps, 0),
        f(r.p99Ms),
        r.errors,
        f(r.cpuUsPerReq, 0),
        ...CATEGORIES.map((c) => f(r.perReq[c], 1)),
        r.gc?.gcCount ?? '–',
        f(r.gc?.gcTotalMs),
        f(r.loadAvg1m, 2),
      ].join(' | ')} |`,
    );
  }
  const cpu = cpus();
  return [
    '# Benchmark: where a gateway spends its time',
    '',
    `Open loop at ${args.rate} req/s for ${args.seconds} s after 2 s of warm-up; three backends that answer at once, ` +
      "with their agents. CPU µs/req: the gateway process's user + system time (/proc/<pid>/stat) over the " +
      'measured phase / requests served. The other columns split that figure by the V8 CPU profile of the same ' +
      "phase: each part's share of the busy samples (idle excluded) by whose code was on top of the stack (self " +
      'time; code of Node itself, natives included, is "node http/net"; time in V8 outside any JS function is ' +
      '"native/program"; Express includes its router), times CPU µs/req. GC: count and total pause time over ' +
      'the phase. Every run is listed.',
    '',
    `${started} · ${cpu.length} cores (${cpu[0]?.model.trim() ?? '?'}) · Node ${process.version} · ` +
      `load average before ${before.map((l) => l.toFixed(2)).join(' ')}, after ${loadavg()
        .map((l) => l.toFixed(2))
        .join(' ')} · the machine is shared with other jobs · ` +
      `\`npm run bench:profile -- ${process.argv.slice(2).join(' ')}\``.replace(' -- `', '`'),
    '',
    lines.join('\n'),
    '',
    `Profiles (.cpuprofile, for Chrome DevTools) were in ${dir}.`,
    '',
  ].join('\n');
}

async function main(): Promise<void> {
  const args = parseArgs(process.argv.slice(2));
  const started = new Date().toISOString();
  const before = loadavg();
  const { cluster, ctx, dir } = await startInstantCluster(args.brokerUrl, 'profile');
  const rows: RunRow[] = [];
  try {
    for (let run = 1; run <= args.runs; run++) {
      for (const def of [loadwise('load-aware'), expressHpmKeepAlive, expressUndici]) {
        await cluster.drain();
        const row = await profileOnce(def, ctx, args, run, dir);
        rows.push(row);
        console.log(
          `${def.name} run ${run}: ${f(row.rps, 0)} req/s, p99 ${f(row.p99Ms)} ms, ` +
            `${f(row.cpuUsPerReq, 0)} CPU µs/req, ` +
            CATEGORIES.map((c) => `${c} ${f(row.perReq[c])}`).join(', '),
        );
      }
    }
  } finally {
    await cluster.stop();
  }
  writeFileSync(args.out, page(rows, args, started, before, dir));
  console.log(`wrote ${args.out}; profiles in ${dir}`);
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
