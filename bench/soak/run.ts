/**
 * Soak: one gateway under steady open-loop load over loopback for a long run,
 * while backends are SIGKILLed and restarted and the broker is killed and
 * restarted, sampling the gateway process's RSS, V8 heap, file descriptors
 * and sockets. A leak shows as growth that does not level off: the summary
 * gives the least-squares growth per 10 minutes and the first vs the last
 * quartile of the run.
 *
 *   npm run soak -- --minutes 30 [--rate 200] [--kill-every-s 45] [--broker-every-s 240]
 *                   [--sample-s 5] [--out DIR]
 *
 * Every component runs in its own process (bench/lib/procs.ts): three
 * backends (bench/procs/backend.js, 8 slots × 10 ms), a real health agent
 * beside each (signed reports), the broker (soak/broker.js) and the gateway
 * (soak/gateway.js). Writes samples.csv and summary.json to DIR (default
 * bench/results/raw/soak-<time>/, not committed) and prints the summary.
 */
import { randomBytes } from 'node:crypto';
import { mkdirSync, readdirSync, readFileSync, readlinkSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import { dirname, join } from 'node:path';
import { parseArgs } from 'node:util';
import { forkProc, sleep, spawnProc, type Proc } from '../lib/procs';

const STATS_PATH = '/.well-known/loadwise/stats';
const AGENT_CLI = join(
  dirname(require.resolve('@loadwise/health-agent/package.json')),
  'dist',
  'cli.js',
);
const BACKEND_IDS = ['a', 'b', 'c'];
const AGENT_INTERVAL_MS = 500;
/**
 * Longer than the gateway's requestTimeoutMs (30 s): every request gets the
 * gateway's own answer (a response or a coded error) unless the gateway itself
 * lost it, which is what a client-side error here means.
 */
const REQUEST_TIMEOUT_MS = 35_000;
/** Idle client sockets close before the gateway's keep-alive timeout (no close/reuse race). */
const CLIENT_IDLE_MS = 30_000;
const SERVER_KEEP_ALIVE_MS = 65_000;

interface Args {
  minutes: number;
  rate: number;
  killEveryS: number;
  downS: number;
  brokerEveryS: number;
  sampleS: number;
  out: string;
}

function parse(): Args {
  const { values } = parseArgs({
    options: {
      minutes: { type: 'string', default: '30' },
      rate: { type: 'string', default: '200' },
      'kill-every-s': { type: 'string', default: '45' },
      'down-s': { type: 'string', default: '5' },
      'broker-every-s': { type: 'string', default: '240' },
      'sample-s': { type: 'string', default: '5' },
      out: { type: 'string' },
    },
    strict: true,
  });
  const num = (name: string, text: string, min: number, max: number): number => {
    const n = Number(text);
    if (!Number.isFinite(n) || n < min || n > max) {
      process.stderr.write(`soak: --${name} must be a number in [${min}, ${max}]\n`);
      process.exit(2);
    }
    return n;
  };
  const stamp = new Date().toISOString().replace(/[:.]/g, '-');
  return {
    // Bounded: at most a day, at most 2,000 req/s (loopback only).
    minutes: num('minutes', values.minutes, 0.1, 1440),
    rate: num('rate', values.rate, 1, 2000),
    killEveryS: num('kill-every-s', values['kill-every-s'], 5, 86_400),
    downS: num('down-s', values['down-s'], 0, 600),
    brokerEveryS: num('broker-every-s', values['broker-every-s'], 10, 86_400),
    sampleS: num('sample-s', values['sample-s'], 1, 600),
    out: values.out ?? join(__dirname, '..', '..', 'results', 'raw', `soak-${stamp}`),
  };
}

interface Backend {
  id: string;
  port: number;
  proc: Proc;
  agent: Proc;
}

/** Open-loop load: `rate` GETs per second on a keep-alive pool, every outcome counted. */
class Load {
  counts = new Map<string, number>();
  private timer: NodeJS.Timeout | undefined;
  private readonly agent = new http.Agent({
    keepAlive: true,
    maxSockets: 256,
    timeout: CLIENT_IDLE_MS,
  });
  private outstanding = 0;

  constructor(
    private readonly port: number,
    private readonly rate: number,
  ) {}

  start(): void {
    const tickMs = 20;
    let due = 0;
    let last = performance.now();
    this.timer = setInterval(() => {
      const now = performance.now();
      due += ((now - last) * this.rate) / 1000;
      last = now;
      while (due >= 1) {
        due--;
        this.one();
      }
    }, tickMs);
  }

  private count(key: string): void {
    this.counts.set(key, (this.counts.get(key) ?? 0) + 1);
  }

  private one(): void {
    this.outstanding++;
    const done = (key: string): void => {
      this.outstanding--;
      this.count(key);
    };
    const req = http.get(
      { host: '127.0.0.1', port: this.port, path: '/soak', agent: this.agent },
      (res) => {
        // Errors are keyed by status and the gateway's code (503 LW_GW_SATURATED, ...), or
        // `backend` for a backend's own answer passed through.
        const status = res.statusCode ?? 0;
        let body = '';
        res.setEncoding('utf8');
        res.on('data', (c: string) => {
          if (status >= 300 && body.length < 1024) body += c;
        });
        res.on('end', () => {
          const code = /"code":"(LW_[A-Z_]+)"/.exec(body)?.[1] ?? 'backend';
          done(status < 300 ? String(status) : `${status}-${code}`);
        });
        res.on('error', (err: NodeJS.ErrnoException) => done(`client-${err.code ?? 'error'}`));
      },
    );
    req.setTimeout(REQUEST_TIMEOUT_MS, () =>
      req.destroy(Object.assign(new Error('client timeout'), { code: 'TIMEOUT' })),
    );
    req.on('error', (err: NodeJS.ErrnoException) => done(`client-${err.code ?? 'error'}`));
  }

  /** Counts since the last call, and resets them. */
  take(): Map<string, number> {
    const c = this.counts;
    this.counts = new Map();
    return c;
  }

  async stop(): Promise<void> {
    clearInterval(this.timer);
    const deadline = Date.now() + REQUEST_TIMEOUT_MS + 1000;
    while (this.outstanding > 0 && Date.now() < deadline) await sleep(50);
    this.agent.destroy();
  }
}

/** Resident set size (VmRSS) of a process, bytes; NaN once it is gone. */
function rssBytes(pid: number): number {
  try {
    const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m ? Number(m[1]) * 1024 : NaN;
  } catch {
    return NaN;
  }
}

/** Open file descriptors of a process, and how many of them are sockets. */
function fds(pid: number): { fds: number; sockets: number } {
  try {
    const entries = readdirSync(`/proc/${pid}/fd`);
    let sockets = 0;
    for (const e of entries) {
      try {
        if (readlinkSync(`/proc/${pid}/fd/${e}`).startsWith('socket:')) sockets++;
      } catch {
        // closed between readdir and readlink
      }
    }
    return { fds: entries.length, sockets };
  } catch {
    return { fds: NaN, sockets: NaN };
  }
}

interface Sample {
  tS: number;
  rssMb: number;
  heapUsedMb: number;
  heapTotalMb: number;
  externalMb: number;
  fds: number;
  sockets: number;
  ok: number;
  failed: number;
  statuses: string;
  eligible: number;
  /** Each backend as `id:state:inFlight`. */
  backends: string;
  /** Requests waiting in the gateway for a free backend. */
  queued: number;
  brokerConnected: boolean | null;
  event: string;
}

const SERIES = ['rssMb', 'heapUsedMb', 'heapTotalMb', 'externalMb', 'fds', 'sockets'] as const;

/** Least-squares slope of y over x, per unit of x. */
function slope(xs: number[], ys: number[]): number {
  const n = xs.length;
  if (n < 2) return NaN;
  const mx = xs.reduce((a, b) => a + b, 0) / n;
  const my = ys.reduce((a, b) => a + b, 0) / n;
  let num = 0;
  let den = 0;
  for (let i = 0; i < n; i++) {
    num += (xs[i]! - mx) * (ys[i]! - my);
    den += (xs[i]! - mx) ** 2;
  }
  return den === 0 ? NaN : num / den;
}

const mean = (ys: number[]): number => ys.reduce((a, b) => a + b, 0) / ys.length;
const round = (x: number, d = 2): number => Math.round(x * 10 ** d) / 10 ** d;

export function summarize(samples: Sample[]): Record<string, unknown> {
  const xs = samples.map((s) => s.tS);
  const q = Math.max(1, Math.floor(samples.length / 4));
  const growth: Record<string, unknown> = {};
  for (const key of SERIES) {
    const ys = samples.map((s) => s[key]);
    const half = Math.floor(samples.length / 2);
    growth[key] = {
      first: round(ys[0]!),
      last: round(ys[ys.length - 1]!),
      max: round(Math.max(...ys)),
      perTenMinutes: round(slope(xs, ys) * 600),
      // Warm-up (JIT, pools filling) ends early; the second half shows whether growth levels off.
      perTenMinutesSecondHalf: round(slope(xs.slice(half), ys.slice(half)) * 600),
      firstQuartileMean: round(mean(ys.slice(0, q))),
      lastQuartileMean: round(mean(ys.slice(-q))),
    };
  }
  const ok = samples.reduce((a, s) => a + s.ok, 0);
  const failed = samples.reduce((a, s) => a + s.failed, 0);
  return {
    samples: samples.length,
    durationS: round(xs[xs.length - 1] ?? 0, 0),
    requestsOk: ok,
    requestsFailed: failed,
    failedShare: round(failed / Math.max(1, ok + failed), 5),
    growth,
  };
}

async function main(): Promise<void> {
  const args = parse();
  mkdirSync(args.out, { recursive: true });
  const prefix = `soak-${randomBytes(4).toString('hex')}`;
  const secret = randomBytes(32);
  const keyFile = join(args.out, 'keys');
  writeFileSync(keyFile, `soak ${secret.toString('base64')}\n`, { mode: 0o600 });

  let broker = forkProc('broker', '../soak/broker.js', { port: 0 });
  const brokerPort = (await broker.waitFor<{ port: number }>('ready')).port;
  const brokerUrl = `mqtt://127.0.0.1:${brokerPort}`;

  const startBackend = async (id: string, port: number): Promise<{ proc: Proc; port: number }> => {
    const proc = forkProc(`backend-${id}`, 'backend.js', {
      id,
      slots: 8,
      serviceMs: 10,
      maxQueue: 256,
      port,
    });
    // A start can take long on a busy machine; the run must survive it, not die of it.
    return { proc, port: (await proc.waitFor<{ port: number }>('ready', 60_000)).port };
  };
  const backends: Backend[] = [];
  for (const id of BACKEND_IDS) {
    const { proc, port } = await startBackend(id, 0);
    const url = `http://127.0.0.1:${port}`;
    // The probe is the tracker's stats path: served outside the queue, and it
    // fails while the backend is dead, so the agent's verdict follows restarts.
    const agent = spawnProc(`agent-${id}`, process.execPath, [
      AGENT_CLI,
      ...['--backend-id', id, '--broker', brokerUrl, '--prefix', prefix],
      ...['--interval-ms', String(AGENT_INTERVAL_MS), '--jitter-ms', '0'],
      ...['--tracker-url', url + STATS_PATH, '--probe-url', url + STATS_PATH],
      ...['--key-file', keyFile],
    ]);
    backends.push({ id, port, proc, agent });
  }

  const gateway = forkProc('gateway', '../soak/gateway.js', {
    options: {
      backends: backends.map((b) => ({ id: b.id, url: `http://127.0.0.1:${b.port}` })),
      broker: brokerUrl,
      topicPrefix: prefix,
      healthCheck: { path: STATS_PATH, intervalMs: 1000 },
      // The load driver stands for many clients but comes from one address: the
      // per-client bound (64) answered 646 of its requests 429 in a 30-minute run on a
      // loaded machine, a verdict on the driver, not the gateway (as in test/kit/chaos.ts).
      maxInFlightPerClient: false,
    },
    keyFile,
    keepAliveTimeoutMs: SERVER_KEEP_ALIVE_MS,
  });
  const gwPort = (await gateway.waitFor<{ port: number }>('ready')).port;
  await sleep(AGENT_INTERVAL_MS * 4);

  const load = new Load(gwPort, args.rate);
  const samples: Sample[] = [];
  const csvPath = join(args.out, 'samples.csv');
  const header =
    'tS,rssMb,heapUsedMb,heapTotalMb,externalMb,fds,sockets,ok,failed,eligible,queued,brokerConnected,backends,statuses,event';
  writeFileSync(csvPath, header + '\n');
  let pendingEvent: string[] = [];
  const t0 = Date.now();
  const endAt = t0 + args.minutes * 60_000;

  const sampleOnce = async (): Promise<void> => {
    gateway.send({ type: 'mem' });
    const mem = await gateway.waitFor<{
      heapUsed: number;
      heapTotal: number;
      external: number;
      eligible: number;
      brokerConnected: boolean | null;
      backends: string;
      queued: number;
    }>('mem', 15_000);
    const counts = load.take();
    let ok = 0;
    let failed = 0;
    for (const [k, n] of counts) {
      if (k.startsWith('2')) ok += n;
      else failed += n;
    }
    const f = fds(gateway.pid);
    const mb = (x: number): number => round(x / 1048576, 2);
    const s: Sample = {
      tS: round((Date.now() - t0) / 1000, 1),
      rssMb: mb(rssBytes(gateway.pid)),
      heapUsedMb: mb(mem.heapUsed),
      heapTotalMb: mb(mem.heapTotal),
      externalMb: mb(mem.external),
      fds: f.fds,
      sockets: f.sockets,
      ok,
      failed,
      statuses: [...counts].map(([k, n]) => `${k}:${n}`).join(' '),
      eligible: mem.eligible,
      backends: mem.backends,
      queued: mem.queued,
      brokerConnected: mem.brokerConnected,
      event: pendingEvent.join(' '),
    };
    pendingEvent = [];
    samples.push(s);
    const row = [
      s.tS,
      s.rssMb,
      s.heapUsedMb,
      s.heapTotalMb,
      s.externalMb,
      s.fds,
      s.sockets,
      s.ok,
      s.failed,
      s.eligible,
      s.queued,
      s.brokerConnected,
      JSON.stringify(s.backends),
      JSON.stringify(s.statuses),
      JSON.stringify(s.event),
    ];
    writeFileSync(csvPath, row.join(',') + '\n', { flag: 'a' });
  };

  // Faults, on their own schedule: a backend crash and restart every killEveryS
  // (round robin over the backends), a broker crash and restart every brokerEveryS.
  let stopping = false;
  // A restart that fails (a start too slow on a busy machine) is logged and tried again.
  const down = new Set<Backend>();
  let brokerDown = false;
  const restart = async (b: Backend): Promise<void> => {
    try {
      await b.proc.stop(0);
      b.proc = (await startBackend(b.id, b.port)).proc;
      down.delete(b);
      pendingEvent.push(`restart:${b.id}`);
    } catch (err) {
      pendingEvent.push(`restart-failed:${b.id}`);
      process.stderr.write(`soak: ${String(err)}\n`);
    }
  };
  const restartBroker = async (): Promise<void> => {
    try {
      broker = forkProc('broker', '../soak/broker.js', { port: brokerPort });
      await broker.waitFor('ready', 60_000);
      brokerDown = false;
      pendingEvent.push('broker-restart');
    } catch (err) {
      await broker.stop(0);
      pendingEvent.push('broker-restart-failed');
      process.stderr.write(`soak: ${String(err)}\n`);
    }
  };
  const chaos = async (): Promise<void> => {
    let nextKill = Date.now() + args.killEveryS * 1000;
    let nextBroker = Date.now() + args.brokerEveryS * 1000;
    let victim = 0;
    while (!stopping) {
      await sleep(250);
      for (const b of [...down]) await restart(b);
      if (brokerDown) await restartBroker();
      const now = Date.now();
      if (now >= nextKill && now < endAt - args.downS * 1000) {
        const b = backends[victim++ % backends.length]!;
        pendingEvent.push(`kill:${b.id}`);
        b.proc.child.kill('SIGKILL');
        down.add(b);
        await sleep(args.downS * 1000);
        await restart(b);
        nextKill = Date.now() + args.killEveryS * 1000;
      }
      if (now >= nextBroker && now < endAt - 5_000) {
        pendingEvent.push('broker-kill');
        broker.child.kill('SIGKILL');
        brokerDown = true;
        await sleep(3_000);
        await restartBroker();
        nextBroker = Date.now() + args.brokerEveryS * 1000;
      }
    }
  };

  load.start();
  const chaosDone = chaos();
  process.stdout.write(
    `soak: ${args.minutes} min at ${args.rate} req/s, gateway pid ${gateway.pid}, writing ${csvPath}\n`,
  );
  while (Date.now() < endAt) {
    await sleep(Math.min(args.sampleS * 1000, Math.max(0, endAt - Date.now())));
    try {
      await sampleOnce();
    } catch (err) {
      // The gateway did not answer the sample request in time (a starved machine): skip it.
      process.stderr.write(`soak: sample skipped: ${String(err)}\n`);
      continue;
    }
    const s = samples[samples.length - 1]!;
    process.stdout.write(
      `t=${s.tS}s rss=${s.rssMb}MB heap=${s.heapUsedMb}MB fds=${s.fds} sockets=${s.sockets} ok=${s.ok} failed=${s.failed} queued=${s.queued} [${s.backends}] ${s.event}\n`,
    );
  }
  stopping = true;
  await chaosDone;
  await load.stop();

  const summary = { args, ...summarize(samples) };
  writeFileSync(join(args.out, 'summary.json'), JSON.stringify(summary, null, 2) + '\n');
  process.stdout.write(JSON.stringify(summary, null, 2) + '\n');

  await gateway.stop();
  for (const b of backends) {
    await b.agent.stop();
    await b.proc.stop();
  }
  await broker.stop();
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
