/**
 * loadwise quick start (`npm start`): an embedded MQTT broker, three backends
 * of different capacity each with its own health agent (the real CLI, as child
 * processes), and a gateway, `app.use(loadBalance(...))`, that routes by the
 * load they report.
 *
 *   npm start                            # gateway on :8080; prints where to send requests
 *   npm start -- --load                  # also drives load and prints routing once a second
 *   npm start -- --port 9090 --load --rate 600
 *   npm start -- --workers 2             # 2 gateway workers on the port (node:cluster, runWorkers)
 *
 * Ctrl-C stops everything: load, gateway, agents, backends, broker; so do
 * SIGTERM, SIGHUP (without --workers: with them it reloads the workers) and a
 * stdout whose reader went away (`npm start | head -3`). The signing keys'
 * folders are removed on every exit but SIGKILL.
 */
import cluster from 'node:cluster';
import { randomBytes } from 'node:crypto';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import express from 'express';
import {
  closeListener,
  gatewayServerOptions,
  loadBalance,
  routeUpgrades,
  runWorkers,
  startEmbeddedBroker,
  type BalancerSnapshot,
  type WorkerContext,
} from '@loadwise/gateway-plugin';
import { integerArg, parseFlags, refuse, type Usage } from './lib/args';
import { onLostOutput } from './lib/output';
import { listenOrSay } from './lib/port';
import { createRunKey } from './lib/run-key';
import { quantile, startLoadDriver, type LoadDriver } from './lib/load-driver';
import {
  startAgentProcess,
  startBackendProcess,
  type ManagedChild,
  type StartedBackend,
} from './lib/processes';

/** Three backends as in the design brief's measurement: 800, 800 and 200 req/s. */
const FLEET = [
  { id: 'b1', slots: 8, serviceMs: 10 },
  { id: 'b2', slots: 8, serviceMs: 10 },
  { id: 'b3', slots: 4, serviceMs: 20 },
] as const;
const TOPIC_PREFIX = 'loadwise';
const STATUS_PATH = '/_lb/status';
const METRICS_PATH = '/_lb/metrics';
const DASHBOARD_PATH = '/_lb/dashboard';
/**
 * The --load scenario, in seconds of a 30 s cycle: from 10 s to 20 s another
 * client (that the gateway cannot see) keeps 16 requests running on b1, so b1
 * has its 8 slots busy and 8 queued; then it stops.
 */
const CYCLE_S = 30;
const HIDDEN_FROM_S = 10;
const HIDDEN_UNTIL_S = 20;
const HIDDEN_IN_FLIGHT = 16;
const HIDDEN_TARGET = 'b1';

interface Args {
  port: number;
  load: boolean;
  ratePerSec: number;
  intervalMs: number;
  steady: boolean;
  /** Gateway workers (node:cluster); undefined: the gateway runs in this process. */
  workers: number | undefined;
}

const OPTIONS = {
  port: { type: 'string', default: '8080' },
  load: { type: 'boolean', default: false },
  rate: { type: 'string', default: '300' },
  'interval-ms': { type: 'string', default: '500' },
  steady: { type: 'boolean', default: false },
  workers: { type: 'string' },
} as const;

const USAGE: Usage<typeof OPTIONS> = {
  usage:
    'npm start -- [--port 8080] [--load [--rate 300] [--steady]] [--interval-ms 500] [--workers N]',
  flags: {
    port: ['<n>', 'gateway port on 127.0.0.1 (0: any free port)'],
    load: ['', 'drive load through the gateway and print routing once a second'],
    rate: ['<n>', 'that load, in requests per second (1..2000)'],
    steady: [
      '',
      `no hidden-load scenario (by default, every ${CYCLE_S} s another client\nloads ${HIDDEN_TARGET} from second ${HIDDEN_FROM_S} to ${HIDDEN_UNTIL_S})`,
    ],
    'interval-ms': ['<ms>', 'how often each agent reports (100..60000)'],
    workers: [
      '<n>',
      'run n gateway workers on the port, one process each (1..16, node:cluster);\nwithout it the gateway runs in the quick start process',
    ],
  },
};

function parse(): Args {
  const { values } = parseFlags(
    'quick-start',
    OPTIONS,
    'npm start -- --help lists the options',
    USAGE,
  );
  const int = (name: string, text: string, min: number, max: number): number =>
    integerArg('quick-start', name, text, min, max);
  // Without --load there is no load to keep steady: taken in silence, it did nothing.
  if (values.steady && !values.load) refuse('quick-start', '--steady goes with --load');
  return {
    port: int('port', values.port, 0, 65535),
    load: values.load,
    ratePerSec: int('rate', values.rate, 1, 2000),
    intervalMs: int('interval-ms', values['interval-ms'], 100, 60_000),
    steady: values.steady,
    workers: values.workers === undefined ? undefined : int('workers', values.workers, 1, 16),
  };
}

const say = (line: string): void => {
  process.stdout.write(`${line}\n`);
};

function pct(x: number | null | undefined): string {
  return (x === null || x === undefined ? '-' : `${Math.round(x * 100)}%`).padStart(4);
}

function num(x: number | null | undefined): string {
  return x === null || x === undefined ? '-' : String(x);
}

async function setHiddenLoad(backend: StartedBackend, hiddenInFlight: number): Promise<void> {
  const res = await fetch(`${backend.url}/admin/config`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ hiddenInFlight }),
  });
  await res.body?.cancel();
}

/** One line per second: what each agent reports, and where the last second's requests went. */
function printSecond(snapshot: BalancerSnapshot, driver: LoadDriver | undefined): void {
  const w = driver?.takeWindow();
  let served = 0;
  if (w) for (const n of w.servedBy.values()) served += n;
  const cells = snapshot.backends.map((b) => {
    const r = b.lastReport;
    const share = w ? pct(served === 0 ? 0 : (w.servedBy.get(b.id) ?? 0) / served) : '';
    const report = r
      ? `cpu ${pct(r.cpuUtilization)} busy ${num(r.inFlight)}/${num(r.concurrencyLimit)} queued ${num(r.queued).padStart(2)}`
      : 'no report yet';
    const state = b.state === 'healthy' ? '' : ` ${b.state.toUpperCase()}`;
    return `${b.id}${w ? ` ${share}` : ''} [${report}${b.reportFresh ? '' : ' STALE'}]${state}`;
  });
  let tail = '';
  if (w) {
    const ok = w.statuses.get('2xx') ?? 0;
    // Failed: answered with a non-2xx status, or no answer at all (refused, reset, timed out).
    let failed = w.errors;
    for (const [cls, n] of w.statuses) if (cls !== '2xx') failed += n;
    const p50 = quantile(w.latenciesMs, 0.5);
    const p99 = quantile(w.latenciesMs, 0.99);
    tail = ` | ${ok} ok, ${failed} failed, p50 ${p50?.toFixed(0) ?? '-'} ms, p99 ${p99?.toFixed(0) ?? '-'} ms`;
  }
  say(`${cells.join('  ')}${tail}`);
}

/** What a gateway needs from the rest of the quick start; a worker gets it in the environment. */
interface GatewayConfig {
  backends: { id: string; url: string }[];
  brokerUrl: string;
  /** One key per agent, bound to its backend; secrets in base64. */
  keys: { keyId: string; secret: string; backends: string[] }[];
  dashboardToken: string;
  port: number;
}
const CONFIG_ENV = 'LOADWISE_QUICK_START_CONFIG';

/**
 * The HTTP server of a gateway, with bounds for slow clients (docs/gateway.md,
 * "Slow and hostile clients"): a head must arrive within 10 s, a whole request
 * within 60 s, checked every 2 s (Node's default: 60 s, 300 s, checked every 30 s);
 * and request classes that declare Express's per-request fields ("The gateway's server").
 */
function gatewayServer(handler: () => http.RequestListener): http.Server {
  const server = http.createServer(
    { ...gatewayServerOptions(), connectionsCheckingInterval: 2_000 },
    (req, res) => handler()(req, res),
  );
  server.headersTimeout = 10_000;
  server.requestTimeout = 60_000;
  server.maxHeadersCount = 100;
  return server;
}

/** The gateway: the middleware is all a user adds to an Express app. */
function createGateway(cfg: GatewayConfig, worker?: WorkerContext) {
  const lb = loadBalance({
    backends: cfg.backends,
    // Each worker is a gateway of its own on the broker (its client id says which).
    broker: worker
      ? { url: cfg.brokerUrl, clientIdPrefix: `quick-start-${worker.id}` }
      : cfg.brokerUrl,
    topicPrefix: TOPIC_PREFIX,
    keys: cfg.keys.map((k) => ({ ...k, secret: Buffer.from(k.secret, 'base64') })),
    statusPath: STATUS_PATH,
    metricsPath: METRICS_PATH,
    // Open on purpose: the demo listens on 127.0.0.1 only, and its output shows the status.
    statusToken: false,
    decisionHeader: true,
    // The --load driver stands for many users but comes from one address.
    maxInFlightPerClient: false,
    // A fresh read-only token per run: the URL printed below is the only way in.
    dashboard: { path: DASHBOARD_PATH, token: cfg.dashboardToken },
  });
  const app = express();
  if (worker) {
    const served = `${worker.id} pid ${process.pid}`;
    app.use((_req, res, next) => {
      res.setHeader(WORKER_HEADER, served);
      next();
    });
  }
  app.use(lb);
  return { lb, app };
}
const WORKER_HEADER = 'x-loadwise-worker';

/** A worker of `--workers N`: one gateway on the shared port, until the primary says stop. */
async function startWorkerGateway(worker: WorkerContext): Promise<{ close(): Promise<void> }> {
  const cfg = JSON.parse(process.env[CONFIG_ENV] ?? '') as GatewayConfig;
  const { lb, app } = createGateway(cfg, worker);
  const server = gatewayServer(() => app);
  server.on('upgrade', routeUpgrades(app));
  await lb.ready();
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(cfg.port, '127.0.0.1', () => resolve());
  });
  return {
    // Stop listening; the open connections are served until they end (a reload
    // replaces this worker under load: none is cut, none refused).
    close: async () => {
      await Promise.all([closeListener(server), lb.close({ graceMs: 5_000, server })]);
    },
  };
}

const workersLog = (line: string): void => say(`workers: ${line}`);

async function fetchSnapshot(gw: string): Promise<BalancerSnapshot | undefined> {
  try {
    const res = await fetch(`${gw}${STATUS_PATH}`, { signal: AbortSignal.timeout(2_000) });
    return (await res.json()) as BalancerSnapshot;
  } catch {
    return undefined;
  }
}

/** Set once stop() has begun: what fails after it (the broker closed under the start-up) is no error. */
let stopping = false;

async function main(): Promise<void> {
  const args = parse();
  if (cluster.isWorker) {
    await runWorkers({ workers: args.workers ?? 1, start: startWorkerGateway, log: workersLog });
    return;
  }
  const children: ManagedChild[] = [];
  const cleanups: (() => Promise<void> | void)[] = [];
  const stop = async (code: number): Promise<void> => {
    if (stopping) return;
    stopping = true;
    // Newest first: load, gateway, then agents and backends, then the broker.
    for (const c of cleanups.reverse()) {
      try {
        await c();
      } catch (err) {
        process.stderr.write(`quick-start: cleanup: ${(err as Error).message}\n`);
      }
    }
    process.exit(code);
  };
  process.on('SIGINT', () => {
    if (stopping) {
      // Second Ctrl-C: do not wait for anyone.
      for (const c of children) c.signal('SIGKILL');
      process.exit(130);
    }
    say('\nstopping: load, gateway, agents, backends, broker...');
    void stop(0);
  });
  process.on('SIGTERM', () => void stop(0));
  // A closed terminal: without a handler SIGHUP ended the process at once, no cleanup run.
  // With --workers it reloads them once they run (onHup below replaces this).
  const hupStops = (): void => void stop(0);
  process.on('SIGHUP', hupStops);
  // `npm start | head -3`: head has its lines; stop as for Ctrl-C, exit 0, not `write EPIPE`.
  onLostOutput(() => void stop(0));

  // 0. The gateway's port first: if it is taken, say so before starting anything.
  // Until the gateway is ready, whoever connects gets a 503 with Retry-After
  // at once: a server without a request handler would leave them waiting.
  // With --workers the workers listen there once everything else runs.
  let handler: http.RequestListener = (_req, res) => {
    res.writeHead(503, {
      'content-type': 'application/json; charset=utf-8',
      'retry-after': '1',
      connection: 'close',
    });
    res.end('{"error":{"code":"STARTING","message":"the quick start is still starting"}}');
  };
  const server = gatewayServer(() => handler);
  if (!(await listenOrSay('quick-start', server, args.port, 'npm start -- --port'))) return stop(1);
  if (args.workers !== undefined) {
    await new Promise<void>((r) => server.close(() => r()));
  }

  // 1. The broker. Port 0: 1883 may be taken by a real Mosquitto.
  const broker = await startEmbeddedBroker();
  cleanups.push(() => broker.close());
  say(`embedded MQTT broker on ${broker.url}`);

  // 2. Backends, each a child process.
  const backends: StartedBackend[] = await Promise.all(
    // Each in a process group of its own, as the agents: a terminal's Ctrl-C goes to the
    // whole foreground group, and the backends stopped at once while the gateway (its
    // workers, with --workers) still drained, so its last requests failed. stop() ends
    // them after the gateway, and --exit-with-parent if this process is killed.
    FLEET.map((spec) => startBackendProcess({ ...spec, ownGroup: true })),
  );
  children.push(...backends.map((b) => b.process));

  // 3. A signing key per agent for this run, bound to its backend: the gateway
  // refuses unsigned reports by default (anyone on a broker could forge them),
  // and what one agent's key signs for another backend (SECURITY.md). In
  // production the key file comes from `openssl rand -base64 32` and your
  // secret store.
  const runKeys = backends.map((b) => createRunKey(`quick-start-${b.id}`, [b.id]));
  cleanups.push(() => runKeys.forEach((k) => k.remove()));
  say(
    `signing keys for this run in ${runKeys.map((k) => k.file).join(', ')} (one per agent, bound to its backend: agents sign, the gateway verifies)`,
  );
  const agents = backends.map((b, i) =>
    startAgentProcess({
      backendId: b.id,
      brokerUrl: broker.url,
      prefix: TOPIC_PREFIX,
      backendPort: b.port,
      servicePid: b.process.pid,
      intervalMs: args.intervalMs,
      drainGraceMs: 200,
      extraArgs: ['--key-file', runKeys[i]!.file],
      // Killed outright (SIGKILL: no cleanup runs), the quick start takes its agents with
      // it, as the backends' --exit-with-parent does for them.
      exitWithParent: true,
      ownGroup: true,
    }),
  );
  children.push(...agents);
  cleanups.push(async () => {
    await Promise.all(agents.map((a) => a.stop('SIGTERM')));
    await Promise.all(backends.map((b) => b.process.stop('SIGTERM')));
  });
  for (const [i, b] of backends.entries()) {
    const spec = FLEET[i]!;
    say(
      `backend ${b.id} on ${b.url}: ${spec.slots} slots x ${spec.serviceMs} ms = ${(spec.slots * 1000) / spec.serviceMs} req/s (pid ${b.process.pid}, agent pid ${agents[i]!.pid})`,
    );
  }

  // 4. The gateway, in this process or in --workers N processes.
  const cfg: GatewayConfig = {
    backends: backends.map((b) => ({ id: b.id, url: b.url })),
    brokerUrl: broker.url,
    keys: runKeys.map(({ key }) => ({
      keyId: key.keyId,
      secret: key.secret.toString('base64'),
      backends: key.backends ?? [],
    })),
    dashboardToken: randomBytes(18).toString('base64url'),
    port: args.port,
  };
  let snapshot: () => Promise<BalancerSnapshot | undefined>;
  let port: number;
  if (args.workers === undefined) {
    const { lb, app } = createGateway(cfg);
    cleanups.push(() => lb.close());
    server.on('upgrade', routeUpgrades(app));
    // Cleanups run newest first: the server stops taking requests before the gateway closes.
    cleanups.push(
      () =>
        new Promise<void>((resolve) => {
          server.close(() => resolve());
          server.closeAllConnections();
        }),
    );
    // Ready: the broker connected and the warm-up done (its request path compiled, its
    // backend pools open). Until then the 503 above answers, not a cold gateway.
    await lb.ready();
    handler = app;
    snapshot = () => Promise.resolve(lb.balancer.snapshot());
    port = (server.address() as AddressInfo).port;
  } else {
    const pool = await runWorkers({
      workers: args.workers,
      start: startWorkerGateway,
      env: { [CONFIG_ENV]: JSON.stringify(cfg) },
      // Ctrl-C reaches the workers too (they close themselves); the cleanups
      // below close the pool before the agents, backends and broker.
      handleSignals: false,
      log: workersLog,
    });
    cleanups.push(() => pool!.close());
    // SIGHUP: replace the workers one at a time (a deploy), no connection refused.
    // Kept until the process exits: removed at the start of stop() (as it was), a SIGHUP
    // while the pool closed got Node's default action and killed the quick start mid-stop.
    const onHup = (): void => {
      if (stopping) return say('SIGHUP: ignored while stopping');
      say('SIGHUP: reloading the gateway workers one at a time');
      pool!.reload().then(
        (r) => say(`reloaded: ${r.replaced.map((w) => `${w.id} pid ${w.newPid}`).join(', ')}`),
        (err: unknown) => say(`reload failed: ${(err as Error).message}`),
      );
    };
    process.removeListener('SIGHUP', hupStops);
    process.on('SIGHUP', onHup);
    // Every worker crashed too often to be restarted: stop the rest too.
    void pool!.done.then((code) => {
      if (code !== 0) void stop(code);
    });
    port = await pool!.listening();
    const gwUrl = `http://127.0.0.1:${port}`;
    // Each request's status comes from whichever worker answers it.
    snapshot = () => fetchSnapshot(gwUrl);
  }
  // Routing works without reports (local signals), but the demo is clearer once every agent has spoken.
  const deadline = Date.now() + 10_000;
  while (Date.now() < deadline) {
    const s = await snapshot();
    if (s && s.backends.every((b) => b.reportFresh)) break;
    await new Promise((r) => setTimeout(r, 100));
  }
  const gw = `http://127.0.0.1:${port}`;
  say(`gateway listening on ${gw}`);
  say('');
  say('Send requests through it:');
  say(
    `  curl -i ${gw}/hello                 # x-served-by and x-loadwise-decision say who served it and why`,
  );
  if (args.workers !== undefined) {
    say(`                                        # and ${WORKER_HEADER}: which gateway worker`);
    say(
      `  kill -HUP ${process.pid}                    # reload the workers one at a time, none refused`,
    );
  }
  say(`  curl -s ${gw}${STATUS_PATH}          # what the gateway knows about every backend (JSON)`);
  say(`  curl -s ${gw}${METRICS_PATH}         # Prometheus metrics`);
  say('');
  say(`dashboard: ${gw}${DASHBOARD_PATH}?token=${cfg.dashboardToken}`);
  say('');

  // 5. Once a second: each agent's last report, and (with --load) where traffic went.
  let driver: LoadDriver | undefined;
  if (args.load) {
    driver = startLoadDriver({ url: `${gw}/work`, ratePerSec: args.ratePerSec });
    cleanups.push(() => driver!.stop());
    say(
      `driving ${args.ratePerSec} req/s through the gateway. Each line: backend, its share of the`,
    );
    say(
      "last second's requests, [its agent's report: host CPU, busy slots/slots, queued requests].",
    );
    if (!args.steady) {
      say(
        `Every ${CYCLE_S} s, from second ${HIDDEN_FROM_S} to ${HIDDEN_UNTIL_S}, another client keeps ${HIDDEN_IN_FLIGHT} requests running on ${HIDDEN_TARGET}: watch its share fall while its queue is full, and come back.`,
      );
    }
  } else {
    say("Agents' reports once a second (run with --load to see routing follow the load):");
  }
  const target = backends.find((b) => b.id === HIDDEN_TARGET)!;
  let second = 0;
  let hidden = false;
  const timer = setInterval(() => {
    second++;
    void snapshot().then((s) => {
      if (s && !stopping) printSecond(s, driver);
    });
    if (!args.load || args.steady) return;
    const inCycle = second % CYCLE_S;
    const want = inCycle >= HIDDEN_FROM_S && inCycle < HIDDEN_UNTIL_S;
    if (want !== hidden) {
      hidden = want;
      say(
        want
          ? `-- another client now keeps ${HIDDEN_IN_FLIGHT} requests running on ${HIDDEN_TARGET} (load the gateway does not see) --`
          : `-- the other client stopped; ${HIDDEN_TARGET} is free again --`,
      );
      setHiddenLoad(target, want ? HIDDEN_IN_FLIGHT : 0).catch(() => undefined);
    }
  }, 1000);
  cleanups.push(() => clearInterval(timer));
}

main().catch((err: unknown) => {
  // Stopping (Ctrl-C, a lost stdout) during the start-up: stop() exits once it is done.
  if (stopping) return;
  process.stderr.write(`quick-start: ${(err as Error).stack ?? String(err)}\n`);
  // Children are killed by the exit handler in lib/processes, key folders removed by lib/run-key's.
  process.exit(1);
});
