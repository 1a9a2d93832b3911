/**
 * How fast a busy Node process accepts connections (docs/gateway.md, "Accept
 * queue"). A bare `http` server (no loadwise) spends `busy` µs of CPU on each
 * request and answers 5 ms later; an open-loop Poisson client in this process
 * sends `rate` requests a second through a keep-alive pool of up to 4,000
 * sockets, as the benchmark's load generator does (bench/procs/loadgen.ts), so
 * when answers slow down the pool opens new connections. The server counts
 * its connections, the most it accepted in one event-loop turn, and its listen
 * socket's accept queue (read with the gateway's own reader, /proc/net/tcp)
 * every 100 ms. `--stall` blocks the server's loop once, that many ms, 1 s
 * after it listens: a GC pause, a cold start's compilation, a synchronous
 * task. `--cluster` runs the server as the one worker of a `node:cluster`
 * primary, which then does the accepting.
 *
 * `--handles 1,4` compares accept handles (multiAccept, cluster/multi-accept.ts).
 *
 *   npm run bench:accept-rate [-- --rate 2000 --seconds 6 --busy 50,300,400 --stall 0 --handles 1 --cluster]
 */
import cluster from 'node:cluster';
import { fork } from 'node:child_process';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { multiAccept } from '@loadwise/gateway-plugin';
import { procDepthReader } from '@loadwise/gateway-plugin/internals';

function arg(name: string, fallback: string): string {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 ? process.argv[i + 1]! : fallback;
}

interface ServerStats {
  connections: number;
  requests: number;
  maxAcceptsPerTurn: number;
  /** [ms since listen, accept-queue depth] every 100 ms. */
  depths: Array<[number, number]>;
}

/** The server: in a child process (or a cluster worker); answers `stats` on IPC. */
function serve(busyUs: number, stallMs: number, handles: number): void {
  const stats: ServerStats = { connections: 0, requests: 0, maxAcceptsPerTurn: 0, depths: [] };
  let acceptsThisTurn = 0;
  const server = http.createServer((_req, res) => {
    stats.requests++;
    const end = process.hrtime.bigint() + BigInt(busyUs * 1000);
    while (process.hrtime.bigint() < end);
    setTimeout(() => res.end('ok'), 5);
  });
  server.keepAliveTimeout = 65_000;
  server.on('connection', () => {
    stats.connections++;
    acceptsThisTurn++;
  });
  // One setImmediate per event-loop turn: the accepts since the last one are this turn's.
  const turn = (): void => {
    if (acceptsThisTurn > stats.maxAcceptsPerTurn) stats.maxAcceptsPerTurn = acceptsThisTurn;
    acceptsThisTurn = 0;
    setImmediate(turn);
  };
  setImmediate(turn);
  server.listen(
    { port: Number(process.env.ACCEPT_RATE_PORT ?? 0), host: '127.0.0.1', backlog: 4096 },
    async () => {
      // In a cluster worker the primary accepts: no copies there.
      if (handles > 1 && cluster.isPrimary) await multiAccept(server, { handles, backlog: 4096 });
      const port = (server.address() as AddressInfo).port;
      const read = procDepthReader();
      const t0 = Date.now();
      // The primary's queue in cluster mode is the same listen socket: same port, same reader.
      setInterval(() => {
        const d = read({ port, ipv6: false });
        if (typeof d === 'number') stats.depths.push([Date.now() - t0, d]);
      }, 100).unref();
      if (stallMs > 0) {
        setTimeout(() => {
          const end = Date.now() + stallMs;
          while (Date.now() < end);
        }, 1_000).unref();
      }
      process.send!({ type: 'ready', port });
    },
  );
  process.on('message', (m: { type?: string }) => {
    if (m.type === 'stats') process.send!({ type: 'stats', stats });
    if (m.type === 'stop') process.exit(0);
  });
}

interface Summary {
  p50Ms: number;
  p99Ms: number;
  done: number;
  errors: number;
}

/** Open-loop Poisson load for `seconds`, latency from each request's scheduled send. */
async function load(port: number, rate: number, seconds: number): Promise<Summary> {
  const agent = new http.Agent({ keepAlive: true, maxSockets: 4000, maxFreeSockets: 4000 });
  const latencies: number[] = [];
  let errors = 0;
  let outstanding = 0;
  const t0 = performance.now();
  const stopAt = t0 + seconds * 1000;
  let next = t0;
  await new Promise<void>((resolve) => {
    const send = (at: number): void => {
      outstanding++;
      const done = (ok: boolean): void => {
        outstanding--;
        if (ok) latencies.push(performance.now() - at);
        else errors++;
        if (performance.now() >= stopAt && outstanding === 0) resolve();
      };
      const req = http.get({ host: '127.0.0.1', port, path: '/', agent }, (res) => {
        res.resume();
        res.on('end', () => done(true));
        res.on('error', () => done(false));
      });
      req.setTimeout(20_000, () => req.destroy());
      req.on('error', () => done(false));
    };
    const tick = (): void => {
      const now = performance.now();
      while (next <= now && next < stopAt) {
        send(next);
        next += -Math.log(1 - Math.random()) / (rate / 1000);
      }
      if (next < stopAt) setTimeout(tick, 1);
      else if (outstanding === 0) resolve();
    };
    tick();
  });
  agent.destroy();
  latencies.sort((a, b) => a - b);
  const at = (q: number): number =>
    latencies[Math.min(latencies.length - 1, Math.floor(latencies.length * q))] ?? NaN;
  return { p50Ms: at(0.5), p99Ms: at(0.99), done: latencies.length, errors };
}

async function measure(
  busyUs: number,
  stallMs: number,
  rate: number,
  seconds: number,
  inCluster: boolean,
  handles: number,
) {
  const child = fork(
    __filename,
    [inCluster ? 'primary' : 'server', String(busyUs), String(stallMs), String(handles)],
    {
      stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
    },
  );
  const port = await new Promise<number>((resolve) =>
    child.on('message', (m: { type: string; port?: number }) => {
      if (m.type === 'ready') resolve(m.port!);
    }),
  );
  const summary = await load(port, rate, seconds);
  const stats = await new Promise<ServerStats>((resolve) => {
    child.on('message', (m: { type: string; stats?: ServerStats }) => {
      if (m.type === 'stats') resolve(m.stats!);
    });
    child.send({ type: 'stats' });
  });
  child.send({ type: 'stop' });
  await new Promise((resolve) => child.once('exit', resolve));
  const peak = stats.depths.reduce((m, [, d]) => Math.max(m, d), 0);
  const queuedMs = stats.depths.filter(([, d]) => d > 0).length * 100;
  return { summary, stats, peak, queuedMs };
}

async function main(): Promise<void> {
  const role = process.argv[2];
  if (role === 'server') {
    return serve(Number(process.argv[3]), Number(process.argv[4]), Number(process.argv[5]));
  }
  if (role === 'primary') {
    if (cluster.isPrimary) {
      // The primary accepts (round robin, Linux's default) and hands each connection over.
      const worker = cluster.fork({ ACCEPT_RATE_PORT: '0' });
      worker.on('message', (m) => process.send!(m));
      process.on('message', (m) => worker.send(m as object));
      worker.on('exit', () => process.exit(0));
      return;
    }
    return serve(Number(process.argv[3]), Number(process.argv[4]), 1);
  }
  const rate = Number(arg('rate', '2000'));
  const seconds = Number(arg('seconds', '6'));
  const busy = arg('busy', '50,300,400').split(',').map(Number);
  const stalls = arg('stall', '0').split(',').map(Number);
  const handleCounts = arg('handles', '1').split(',').map(Number);
  const inCluster = process.argv.includes('--cluster');
  const rows: string[] = [];
  for (const b of busy) {
    for (const stall of stalls) {
      for (const handles of handleCounts) {
        const r = await measure(b, stall, rate, seconds, inCluster, handles);
        const s = r.summary;
        rows.push(
          `| ${b} | ${stall} | ${handles} | ${s.p50Ms.toFixed(1)} | ${s.p99Ms.toFixed(1)} | ${s.done} | ${s.errors} | ${r.stats.connections} | ${r.stats.maxAcceptsPerTurn} | ${r.peak} | ${r.queuedMs} |`,
        );
      }
    }
  }
  process.stdout.write(
    `accept rate of a busy Node server (node ${process.version}, libuv ${process.versions.uv}), ` +
      `${rate} req/s open loop for ${seconds} s, keep-alive pool of up to 4,000 sockets, ` +
      `backlog 4096${inCluster ? ', node:cluster (one worker)' : ''}\n` +
      '| busy µs/request | one stall, ms | accept handles | p50 ms | p99 ms | answered | errors | connections accepted | most accepts in one turn | peak accept queue | ms with a queue |\n' +
      '|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n' +
      rows.join('\n') +
      '\n',
  );
}

main().catch((e: unknown) => {
  console.error(e);
  process.exit(1);
});
