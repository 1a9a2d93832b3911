/**
 * The gateway under test: an Express app with `app.use(loadBalance(opts))`,
 * fed by the backends' health agents through the broker.
 */
import { appendFileSync, readFileSync } from 'node:fs';
import type { AddressInfo } from 'node:net';
import { execFile } from 'node:child_process';
import { performance } from 'node:perf_hooks';
import { createServer, type Server } from 'node:http';
import express from 'express';
import {
  multiAccept,
  closeListener,
  gatewayServerOptions,
  loadBalance,
  runWorkers,
  type LoadBalanceOptions,
} from '@loadwise/gateway-plugin';
import { parseKeyFile } from '@loadwise/protocol';
import { round } from '../lib/stats';
import { closeServer, fail, onShutdown, readConfig, tell } from './child';
import { answerDiagMessages, keepClientsAlive, startDiag } from './gateway-diag';
import { internals } from '@loadwise/gateway-plugin/internals';

interface LoadwiseConfig {
  options: LoadBalanceOptions;
  /** The agents' key file (keys cannot travel in the JSON config: they are Buffers). */
  keyFile?: string;
  port?: number;
  /** Run the gateway as this many workers (runWorkers, node:cluster) on one port. */
  workers?: number;
  /** A replaced worker spreads its connections' ends over this long (closeListener drainMs). */
  drainMs?: number;
  /**
   * Instrumentation for the cold-start scenario: every `traceEveryMs` the
   * waiting queue, the requests in flight per backend and the overload state,
   * plus every saturation/overload event, sent to the parent on `diag`.
   */
  traceEveryMs?: number;
  /**
   * Listen backlog; absent: 511, Node's default for `app.listen` (capped by
   * net.core.somaxconn). Always passed explicitly and stated in the ready message.
   */
  backlog?: number;
  /** Accept handles on the listen socket (multiAccept, cluster/multi-accept.ts); absent: 1. */
  acceptHandles?: number;
  /**
   * Serve with Node's own request and response classes, as `app.listen` does,
   * instead of gatewayServerOptions()'s (docs/gateway.md, "The gateway's server").
   */
  nodeServerClasses?: boolean;
  /**
   * Listen first, then `await lb.ready()`: a restarted gateway takes connections
   * while it warms up (the real balancer serves them meanwhile) instead of refusing
   * them (docs/operations.md, "Restarting a single instance").
   */
  listenBeforeReady?: boolean;
}

/** Node's default listen backlog (net.Server#listen), which `app.listen` uses. */
const NODE_DEFAULT_BACKLOG = 511;

/**
 * The gateway as the docs deploy it (docs/operations.md): `loadBalance`, then
 * `await lb.ready()` (the broker connected and the product's warm-up done, unless
 * the options say `warmUp: false`), then listen. A restarted gateway refuses
 * connections until then instead of serving a flood cold; `listenBeforeReady`
 * listens first and warms up while it serves.
 */
async function startGateway(cfg: LoadwiseConfig) {
  const keys = cfg.keyFile ? parseKeyFile(readFileSync(cfg.keyFile, 'utf8')) : undefined;
  const balancer = loadBalance({ ...cfg.options, ...(keys ? { keys } : {}) });
  const app = express();
  app.disable('x-powered-by');
  app.use(balancer);
  const backlog = cfg.backlog ?? NODE_DEFAULT_BACKLOG;
  // As docs/gateway.md deploys it: the server built with gatewayServerOptions(); the
  // nodeServerClasses variant is `app.listen` (Node's request and response classes).
  const server: Server = cfg.nodeServerClasses
    ? createServer(app)
    : createServer(gatewayServerOptions(), app);
  keepClientsAlive(server);
  /** Listens; resolves with the process's age (ms) when it does. */
  const listen = async (): Promise<number> => {
    server.listen({ port: cfg.port ?? 0, host: '127.0.0.1', backlog });
    await new Promise<void>((resolve, reject) => {
      server.once('listening', resolve);
      server.once('error', reject);
    });
    // In a worker pool the primary accepts: multiAccept is for a single process.
    if (cfg.acceptHandles !== undefined && cfg.workers === undefined) {
      await multiAccept(server, { handles: cfg.acceptHandles, backlog });
    }
    // Taking connections before ready(): the restart variant counts the gateway back from here.
    if (cfg.listenBeforeReady) tell({ type: 'listening' });
    return Math.round(process.uptime() * 1000);
  };
  const listenedAtMs = cfg.listenBeforeReady ? await listen() : undefined;
  const readyFrom = performance.now();
  await balancer.ready();
  const readyMs = Math.round(performance.now() - readyFrom);
  // A marker in a traced gateway's stdout (bench/cold-start/v8-trace.ts): the warm-up ends here.
  if (process.env.LOADWISE_BENCH_GATEWAY_STDOUT) process.stdout.write('[loadwise ready]\n');
  return { balancer, server, backlog, readyMs, listenedAtMs: listenedAtMs ?? (await listen()) };
}

/**
 * The primary of a worker pool: says ready with the shared port and the
 * workers' pids (their CPU counts as the gateway's). Diag figures are per
 * process, so this variant reports none.
 */
async function mainWorkers(cfg: LoadwiseConfig, workers: number): Promise<void> {
  const pool = await runWorkers({
    workers,
    handleSignals: false,
    log: () => undefined,
    start: async () => {
      const { balancer, server } = await startGateway(cfg);
      return {
        // The graceful recipe (docs/gateway.md, Every core), as a reload
        // closes a worker under load: stop listening, serve what comes on the
        // open connections (Connection: close) until they end, then stop.
        // closeServer() would cut those requests, and http's server.close()
        // closes idle keep-alive ones a client may be sending on (ECONNRESET).
        close: async () => {
          await Promise.all([
            closeListener(server, { drainMs: cfg.drainMs ?? 0 }),
            balancer.close({ graceMs: 10_000 }),
          ]);
        },
      };
    },
  });
  if (!pool) return; // a worker: start() runs it
  const port = await pool.listening();
  process.on('message', (m: { type?: string }) => {
    if (m.type === 'diag') tell({ type: 'diag' });
  });
  onShutdown(() => pool.close());
  // The restart variant's rolling reload, as an operator sends it (runWorkers'
  // own SIGHUP handling is off here with handleSignals: false).
  process.on('SIGHUP', () => {
    const from = performance.now();
    pool.reload().then(
      (r) =>
        tell({
          type: 'reloaded',
          ms: Math.round(performance.now() - from),
          replaced: r.replaced.length,
        }),
      (err: unknown) => tell({ type: 'reloaded', error: String(err) }),
    );
  });
  tell({ type: 'ready', port, workerPids: [...pool.pids().values()] });
}

/**
 * Diagnosis only (the cpu-bound scenario's routing): with LOADWISE_BENCH_LOAD_TRACE=<file>
 * in the environment, every 250 ms one JSON line per backend with its load snapshot (expected
 * wait, service time and its source, CPU throughput) and the CPU evidence behind it, appended
 * to that file. Off by default.
 */
function startLoadTrace(balancer: ReturnType<typeof loadBalance>): NodeJS.Timeout | undefined {
  const file = process.env.LOADWISE_BENCH_LOAD_TRACE;
  if (!file) return undefined;
  const b = internals(balancer);
  const timer = setInterval(() => {
    const now = Date.now();
    const lines: string[] = [];
    for (const be of b.registry.backends.values()) {
      const load = be.load as unknown as {
        snapshot(nowMs: number): object;
        cpu?: { last?: object };
      };
      lines.push(
        JSON.stringify({
          t: now,
          id: be.id,
          ...load.snapshot(now),
          cpu: load.cpu?.last,
        }),
      );
    }
    appendFileSync(file, lines.join('\n') + '\n');
  }, 250);
  timer.unref();
  return timer;
}

async function main(): Promise<void> {
  const cfg = readConfig<LoadwiseConfig>();
  if (cfg.workers !== undefined) return mainWorkers(cfg, cfg.workers);
  const diag = startDiag();
  const { balancer, server, backlog, readyMs, listenedAtMs } = await startGateway(cfg);
  const trace: Array<Record<string, unknown>> = [];
  const acceptQueue: Array<[number, number, number]> = [];
  const t0 = Date.now();
  let tracer: NodeJS.Timeout | undefined;
  if (cfg.traceEveryMs) {
    const b = internals(balancer);
    tracer = setInterval(() => {
      const inFlight: Record<string, number> = {};
      let sockets = 0;
      // Per backend, the estimate behind each pick: [s ms, its source, expected wait ms, hidden
      // in flight, slots, penalty factor, slow-start factor] (docs/strategies.md).
      const estimates: Record<string, unknown[]> = {};
      const nowMs = Date.now();
      for (const be of b.registry.backends.values()) {
        inFlight[be.id] = be.load.inFlight;
        const s = be.load.snapshot(nowMs);
        estimates[be.id] = [
          round(s.serviceTimeMs, 2),
          s.serviceTimeSource,
          round(s.expectedWaitMs, 2),
          round(s.hiddenInFlight, 2),
          round(s.capacity, 2),
          round(s.penaltyFactor, 2),
          round(s.slowStartFactor, 2),
        ];
        for (const list of Object.values(be.agent.sockets)) sockets += list?.length ?? 0;
      }
      const port = (server.address() as AddressInfo | null)?.port;
      // The listen socket's accept queue (ss: Recv-Q) and its bound (Send-Q), read by a child
      // process so that this event loop does not parse the host's socket table.
      execFile('ss', ['-ltnH', `sport = :${port}`], (err, out) => {
        const m = /^\S+\s+(\d+)\s+(\d+)/.exec(out);
        if (!err && m) acceptQueue.push([Date.now() - t0, Number(m[1]), Number(m[2])]);
      });
      trace.push({
        t: Date.now() - t0,
        queued: b.queue.length,
        active: b.flow.active,
        sockets,
        overloaded: b.overload?.overloaded ?? false,
        // What the accept-queue guard last read, and the share it sheds.
        guardDepth: b.acceptQueue?.depth ?? null,
        guardShare: b.acceptQueue?.shedShare ?? 0,
        inFlight,
        estimates,
      });
    }, cfg.traceEveryMs);
    tracer.unref();
    b.on('saturation', (e) => trace.push({ t: Date.now() - t0, event: 'saturation', ...e }));
    b.on('overload', (e) => trace.push({ t: Date.now() - t0, event: 'overload', ...e }));
  }
  const loadTrace = startLoadTrace(balancer);
  answerDiagMessages({
    reset: () => diag.reset(),
    read: () => ({ ...diag.read(), trace, acceptQueue }),
  });
  onShutdown(async () => {
    if (tracer) clearInterval(tracer);
    if (loadTrace) clearInterval(loadTrace);
    await closeServer(server);
    await balancer.close();
  });
  const port = (server.address() as AddressInfo).port;
  // How long `lb.ready()` took, and the process's age when it listened (the restart variant).
  tell({
    type: 'ready',
    port,
    backlog,
    readyMs,
    uptimeMs: listenedAtMs,
    listenedFirst: cfg.listenBeforeReady === true,
  });
}

main().catch(fail);
