/**
 * `npm run bench:control-flood [-- --runs 3] [--rate 200] [--flood-rate 9600]
 *   [--flood-ms 10000] [--kind forged|replayed] [--broker mqtt://127.0.0.1:1883]
 *   [--no-pin] [--out bench/results/control-flood.md]`
 *
 * Does a flood on the control channel slow down requests? A loopback gateway
 * (its own process, load-aware, signed agents beside three backends of 8 slots
 * x 10 ms) serves an open-loop load of `--rate` req/s. Each run measures the
 * load three times for `--flood-ms`: quiet; while another process publishes
 * `--flood-rate` messages a second under a prefix the gateway does not
 * subscribe to (the control: the same work for the publisher and the broker,
 * none for the gateway); and while it publishes them under the gateway's
 * prefix:
 *
 * - `forged`: unsigned "I am idle" / "I am draining" reports for the three
 *   backends and for random ids (what anyone on the broker can send);
 * - `replayed`: copies of a genuine signed report captured off the broker.
 *
 * Reported per run: request p50/p99/max (coordinated-omission-corrected, see
 * bench/procs/loadgen.ts), errors, the gateway's CPU, the latency of GET
 * /_lb/status polled every 100 ms, and the gateway's drop counters. Target:
 * p99 during the flood within 1.5x of quiet. On one 2-core machine the
 * publisher and the broker take CPU the gateway would otherwise get (an
 * attacker elsewhere would not): the publisher runs at the lowest priority,
 * and the control phase shows what is left of that; flood vs control is the
 * gateway's own cost. The load average is recorded: on a shared machine every
 * figure moves with the neighbours.
 *
 * Pinned (the default on a machine with 2+ CPUs; `--no-pin` turns it off):
 * the gateway gets the last CPU to itself (`taskset`), everything else (this
 * process, the backends and agents, the load generator, the publisher, and a
 * Mosquitto of the bench's own on a free port, started from the `mosquitto`
 * binary unless `--broker` is given, at nice 19 like the publisher) shares
 * the others. An attacker on the
 * broker does not run on the gateway's host: unpinned, the flood phase
 * measures the publisher's and the broker's CPU taken from the gateway as
 * much as the gateway's own cost of refusing the flood.
 */
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { execFileSync } from 'node:child_process';
import { createServer } from 'node:net';
import { cpus, loadavg, setPriority, tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import mqtt from 'mqtt';
import { createEncoder, topicFor } from '@loadwise/protocol';
import { loadwise, type RunningBalancer } from '../lib/balancers';
import { startCluster, type Cluster } from '../lib/cluster';
import { httpGet } from '../lib/http-get';
import { CpuMeter, forkProc, sleep, spawnProc, type Proc } from '../lib/procs';
import { summarize } from '../lib/stats';
import type { LoadgenConfig, LoadgenResult } from '../procs/loadgen';
import type { HostilePublisherConfig } from '../procs/hostile-publisher';

interface Args {
  runs: number;
  rate: number;
  floodRate: number;
  floodMs: number;
  kind: 'forged' | 'replayed';
  /** '' until resolved in main(): the bench's own Mosquitto when pinned, else 127.0.0.1:1883. */
  broker: string;
  pin: boolean;
  out: string;
}

function parseArgs(argv: string[]): Args {
  const a: Args = {
    runs: 3,
    rate: 200,
    floodRate: 9600,
    floodMs: 10_000,
    kind: 'forged',
    broker: process.env.LOADWISE_BENCH_BROKER ?? '',
    pin: cpus().length >= 2,
    out: join(__dirname, '..', '..', 'results', 'control-flood.md'),
  };
  for (let i = 0; i < argv.length; i++) {
    const flag = argv[i]!;
    const v = (): string => {
      const x = argv[++i];
      if (x === undefined) throw new Error(`${flag} needs a value`);
      return x;
    };
    if (flag === '--runs') a.runs = Math.max(1, Number(v()));
    else if (flag === '--rate') a.rate = Number(v());
    else if (flag === '--flood-rate') a.floodRate = Number(v());
    else if (flag === '--flood-ms') a.floodMs = Number(v());
    else if (flag === '--kind') a.kind = v() === 'replayed' ? 'replayed' : 'forged';
    else if (flag === '--broker') a.broker = v();
    else if (flag === '--out') a.out = v();
    else if (flag === '--no-pin') a.pin = false;
    else throw new Error(`unknown argument ${flag}`);
  }
  return a;
}

type PhaseName = 'quiet' | 'control' | 'flood';

interface Phase {
  name: PhaseName;
  p50Ms: number;
  p99Ms: number;
  maxMs: number;
  ok: number;
  errors: number;
  gatewayCpu: number;
  statusP99Ms: number;
  statusMaxMs: number;
  /** The gateway's own event-loop delay (p99 / max) over the phase. */
  loopP99Ms: number;
  loopMaxMs: number;
  floodSent: number;
  drops: Record<string, number>;
  loadAvg1m: number;
}

async function dropCounters(gw: RunningBalancer): Promise<Record<string, number>> {
  const { body } = await httpGet(`${gw.url}/_lb/metrics`, 10_000);
  const out: Record<string, number> = {};
  for (const m of body.matchAll(/^loadwise_invalid_messages_total\{code="([A-Z_]+)"\} (\d+)/gm)) {
    out[m[1]!] = Number(m[2]);
  }
  return out;
}

/** Payloads of the flood: forged unsigned reports, or a captured genuine signed one. */
async function floodPayloads(
  args: Args,
  prefix: string,
  ids: string[],
): Promise<{ topics: string[]; payloads: string[] }> {
  if (args.kind === 'replayed') {
    const sub = await mqtt.connectAsync(args.broker, { reconnectPeriod: 0 });
    const topic = topicFor(prefix, ids[0]!, 'metrics');
    const captured = new Promise<string>((resolve) =>
      sub.on('message', (_t, p) => resolve(p.toString())),
    );
    await sub.subscribeAsync(topic, { qos: 0 });
    const payload = await captured;
    await sub.endAsync();
    return { topics: [topic], payloads: [payload] };
  }
  const forgedIds = [
    ...ids,
    ...Array.from({ length: 3 }, () => `x${randomBytes(3).toString('hex')}`),
  ];
  const enc = (id: string, state: 'online' | 'draining') =>
    createEncoder({ backendId: id, prefix }).metrics({
      intervalMs: 1000,
      state,
      host: { cpuUtilization: 0, memoryUtilization: 0, memoryAvailableBytes: 1e9 },
      queue: { inFlight: 0, queued: 0, source: { inFlight: 'tracker', queued: 'tracker' } },
      concurrencyLimit: 1000,
      health: { verdict: 'up' },
    });
  const msgs = forgedIds.flatMap((id) => [enc(id, 'online'), enc(id, 'draining')]);
  return { topics: msgs.map((m) => m.topic), payloads: msgs.map((m) => m.payload) };
}

async function phase(
  args: Args,
  name: PhaseName,
  flood: { topics: string[]; payloads: string[] } | undefined,
  gw: RunningBalancer,
  cluster: Cluster,
): Promise<Phase> {
  const warmupMs = 1000;
  const cfg: LoadgenConfig = {
    targets: [`${gw.url}/work`],
    mode: 'open',
    rate: args.rate,
    warmupMs,
    durationMs: args.floodMs,
    maxSockets: 256,
    timeoutMs: 10_000,
    windowMs: 1000,
  };
  const before = await dropCounters(gw);
  const gen = forkProc('loadgen', 'loadgen.js', cfg);
  const result = gen.waitFor<LoadgenResult>('result', warmupMs + args.floodMs + 40_000);
  await sleep(warmupMs);
  const meter = new CpuMeter(gw.procs.map((p) => ({ name: p.name, pid: p.pid })));
  meter.begin();
  gw.resetDiag();
  const loadAvg1m = loadavg()[0]!;
  const publisher =
    flood &&
    forkProc('hostile', 'hostile-publisher.js', {
      brokerUrl: args.broker,
      mode: 'flood',
      topics: flood.topics,
      payloads: flood.payloads,
      ratePerSec: args.floodRate,
      durationMs: args.floodMs,
      connections: 4,
    } satisfies HostilePublisherConfig);
  // Lowest priority: on this one machine the attacker must not simply take the gateway's CPU.
  if (publisher) setPriority(publisher.pid, 19);
  const floodDone = publisher?.waitFor<{ sent: number }>('done', args.floodMs + 30_000);
  // The status endpoint, as an operator would poll it during the incident.
  const statusMs: number[] = [];
  const end = Date.now() + args.floodMs;
  while (Date.now() < end) {
    const t0 = performance.now();
    try {
      await httpGet(`${gw.url}/_lb/status`, 10_000);
      statusMs.push(performance.now() - t0);
    } catch {
      statusMs.push(10_000);
    }
    await sleep(100);
  }
  const r = await result;
  const cpu = meter.end();
  const diag = await gw.diag();
  const sent = floodDone ? (await floodDone).sent : 0;
  await gen.stop();
  await publisher?.stop();
  const after = await dropCounters(gw);
  const drops: Record<string, number> = {};
  for (const [code, n] of Object.entries(after)) {
    const d = n - (before[code] ?? 0);
    if (d > 0) drops[code] = d;
  }
  const status = summarize(statusMs);
  await cluster.drain();
  return {
    name,
    p50Ms: r.latency.p50Ms,
    p99Ms: r.latency.p99Ms,
    maxMs: r.latency.maxMs,
    ok: r.ok,
    errors: r.errorCount,
    gatewayCpu: Object.values(cpu).reduce((s, x) => s + x, 0),
    statusP99Ms: Math.round(status.p99Ms * 10) / 10,
    statusMaxMs: Math.round(status.maxMs * 10) / 10,
    loopP99Ms: diag?.eventLoopDelayP99Ms ?? NaN,
    loopMaxMs: diag?.eventLoopDelayMaxMs ?? NaN,
    floodSent: sent,
    drops,
    loadAvg1m: Math.round(loadAvg1m * 10) / 10,
  };
}

function table(args: Args, runs: Phase[][]): string {
  const rows = runs.flatMap((phases, i) =>
    phases.map(
      (p) =>
        `| ${i + 1} | ${p.name === 'flood' ? `flood (${args.kind})` : p.name === 'control' ? 'control (flood elsewhere)' : 'quiet'} | ${p.p50Ms} | ${p.p99Ms} | ${p.maxMs} | ${p.ok} | ${p.errors} | ${p.gatewayCpu.toFixed(2)} | ${p.statusP99Ms} / ${p.statusMaxMs} | ${p.loopP99Ms} / ${p.loopMaxMs} | ${p.floodSent} | ${Object.entries(
          p.drops,
        )
          .map(([c, n]) => `${c} ${n}`)
          .join(', ')} | ${p.loadAvg1m} |`,
    ),
  );
  const ratios = runs.map((phases, i) => {
    const [quiet, control, flood] = phases as [Phase, Phase, Phase];
    return `run ${i + 1}: ${(flood.p99Ms / quiet.p99Ms).toFixed(2)}x quiet, ${(flood.p99Ms / control.p99Ms).toFixed(2)}x control`;
  });
  return [
    `Request latency of a loopback gateway at ${args.rate} req/s (open loop), quiet, during a ` +
      `${args.floodRate} msg/s flood the gateway does not subscribe to (control), and during the same ` +
      `flood on its prefix (${args.kind}), ${args.floodMs / 1000} s each, ${runs.length} runs. ` +
      'p99 of the flood phase: ' +
      ratios.join('; ') +
      ' (target <= 1.5x quiet).',
    '',
    '| run | phase | p50 ms | p99 ms | max ms | ok | errors | gateway CPU (cores) | /_lb/status p99 / max ms | gateway event-loop delay p99 / max ms | flood sent | gateway drops by code | load avg 1m |',
    '| --- | ----- | ------ | ------ | ------ | -- | ------ | ------------------- | ------------------------ | ------------------------------------- | ---------- | --------------------- | ----------- |',
    ...rows,
    '',
  ].join('\n');
}

/** Pins `pid` and all its threads to the CPUs in `list` (taskset's syntax, e.g. "1" or "0-2"). */
function pin(pid: number, list: string): void {
  execFileSync('taskset', ['-a', '-pc', list, String(pid)], { stdio: 'ignore' });
}

async function freePort(): Promise<number> {
  const srv = createServer();
  await new Promise<void>((resolve) => srv.listen(0, '127.0.0.1', resolve));
  const port = (srv.address() as { port: number }).port;
  await new Promise<void>((resolve) => srv.close(() => resolve()));
  return port;
}

/** A Mosquitto of the bench's own on a free loopback port (inherits this process's CPUs). */
async function ownMosquitto(): Promise<{ url: string; proc: Proc }> {
  const port = await freePort();
  const proc = spawnProc('mosquitto', 'mosquitto', ['-p', String(port)]);
  // Like the publisher, at the lowest priority: on CPU 0 the broker's fan-out of the flood to
  // the gateway would otherwise come out of the backends' and the load generator's time.
  setPriority(proc.pid, 19);
  const url = `mqtt://127.0.0.1:${port}`;
  for (let i = 0; i < 100; i++) {
    try {
      const c = await mqtt.connectAsync(url, { reconnectPeriod: 0, connectTimeout: 1000 });
      await c.endAsync();
      return { url, proc };
    } catch {
      await sleep(100);
    }
  }
  await proc.stop();
  throw new Error(`mosquitto -p ${port} did not accept connections:\n${proc.stderrTail()}`);
}

async function main(): Promise<void> {
  const args = parseArgs(process.argv.slice(2));
  const last = cpus().length - 1;
  // Children inherit the affinity: pin this process first, the gateway after it starts.
  if (args.pin) pin(process.pid, last === 1 ? '0' : `0-${last - 1}`);
  const own = args.broker === '' && args.pin ? await ownMosquitto() : undefined;
  if (args.broker === '') args.broker = own?.url ?? 'mqtt://127.0.0.1:1883';
  const tmpDir = mkdtempSync(join(tmpdir(), 'loadwise-flood-'));
  const keyFile = join(tmpDir, 'keys');
  writeFileSync(keyFile, `bench ${randomBytes(32).toString('base64')}\n`, { mode: 0o600 });
  const prefix = `lwflood${process.pid}${Date.now() % 100000}`;
  let cluster: Cluster | undefined;
  let gw: RunningBalancer | undefined;
  try {
    cluster = await startCluster({
      backends: ['b1', 'b2', 'b3'].map((id) => ({ id, slots: 8, serviceMs: 10 })),
      maxQueue: 512,
      agents: { brokerUrl: args.broker, prefix, intervalMs: 1000, keyFile },
    });
    gw = await loadwise('load-aware', {
      statusPath: '/_lb/status',
      metricsPath: '/_lb/metrics',
    }).start({ backends: cluster.backends, tmpDir, brokerUrl: args.broker, prefix, keyFile }, 0);
    if (args.pin) for (const p of gw.procs) pin(p.pid, String(last));
    const flood = await floodPayloads(
      args,
      prefix,
      cluster.backends.map((b) => b.id),
    );
    const elsewhere = {
      topics: flood.topics.map((t) => t.replace(prefix, `${prefix}x`)),
      payloads: flood.payloads,
    };
    const runs: Phase[][] = [];
    for (let run = 1; run <= args.runs; run++) {
      const quiet = await phase(args, 'quiet', undefined, gw, cluster);
      const control = await phase(args, 'control', elsewhere, gw, cluster);
      const flooded = await phase(args, 'flood', flood, gw, cluster);
      process.stdout.write(
        `run ${run}: p99 quiet ${quiet.p99Ms} ms, control ${control.p99Ms} ms, flood ${flooded.p99Ms} ms ` +
          `(${(flooded.p99Ms / quiet.p99Ms).toFixed(2)}x quiet), sent ${flooded.floodSent}, drops ${JSON.stringify(flooded.drops)}\n`,
      );
      runs.push([quiet, control, flooded]);
    }
    const placement = args.pin
      ? `Pinned: the gateway alone on CPU ${last}; backends, agents, load generator, publisher and broker (${args.broker}${own ? ', nice 19' : ''}) on CPU ${last === 1 ? '0' : `0-${last - 1}`}.`
      : `Not pinned: every process shares the machine's ${last + 1} CPUs; broker ${args.broker}.`;
    const md = `# Control-channel flood (${new Date().toISOString().slice(0, 10)})\n\n\`npm run bench:control-flood -- ${process.argv.slice(2).join(' ')}\`\n\n${placement}\n\n${table(args, runs)}`;
    writeFileSync(args.out, md);
    process.stdout.write(`\n${md}\nwritten to ${args.out}\n`);
  } finally {
    await gw?.stop();
    await cluster?.stop();
    await own?.proc.stop();
    rmSync(tmpDir, { recursive: true, force: true });
  }
}

main().then(
  () => process.exit(0),
  (err: unknown) => {
    console.error(err);
    process.exit(1);
  },
);
