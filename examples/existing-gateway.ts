/**
 * loadwise in an existing Express 5 gateway: two services behind one app,
 * each a balancer with two backends (the example backend with
 * `trackRequests()`) and a real health agent per backend, all on one broker.
 *
 *   node examples/dist/existing-gateway.js [--port 8080] [--broker mqtt://127.0.0.1:1883]
 *        [--prefix loadwise] [--token <app token>] [--status-token <ops token>]
 *        [--interval-ms 1000] [--rate-limit 100]
 *   node examples/dist/existing-gateway.js --help
 *
 * The tokens default to $GATEWAY_TOKEN and $LB_TOKEN (else app-token and
 * ops-token-123; an empty variable is unset). Without --broker an embedded one
 * is started. A flag it cannot use is one line on stderr and exit 2, before
 * anything starts. What the app does, in order:
 *   request id  → /health (the gateway's own) → /_lb/metrics (ops token) →
 *   rate limit  → Bearer auth → /_lb/status (ops token, X-Loadwise-Token) →
 *   /api/users  (express.json() runs first: the balancer forwards the parsed body) →
 *   /api/orders (body streamed) → 404
 * WebSocket upgrades go through the same app (`routeUpgrades`), so the rate
 * limit, the auth and the mount paths apply to them too. SIGTERM (or Ctrl-C)
 * is the graceful shutdown recipe: stop accepting, let requests in flight
 * finish, then stop.
 *
 * Prints one JSON line per backend ({"event":"backend","service","id","url"})
 * and one once listening ({"event":"listening","port"}), then human lines.
 */
import { randomUUID } from 'node:crypto';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import express from 'express';
import { Registry } from 'prom-client';
import {
  GatewayError,
  gatewayServerOptions,
  loadBalance,
  metricsHandler,
  routeUpgrades,
  startEmbeddedBroker,
  statusHandler,
  type LoadBalancerMiddleware,
} from '@loadwise/gateway-plugin';
import { assertValidPrefix, ProtocolError, redactUrl } from '@loadwise/protocol';
import { integerArg, parseFlags, type Usage } from './lib/args';
import { exitIfPortTaken, listenOrSay } from './lib/port';
import { createRunKey } from './lib/run-key';
import {
  startAgentProcess,
  startBackendProcess,
  type ManagedChild,
  type StartedBackend,
} from './lib/processes';

const SERVICES = ['users', 'orders'] as const;
type Service = (typeof SERVICES)[number];

interface Args {
  port: number;
  broker: string | undefined;
  prefix: string;
  token: string;
  statusToken: string;
  intervalMs: number;
  rateLimit: number;
}

/** The built-in tokens: printed in the curl hints, where any other token is a placeholder. */
const DEFAULT_TOKEN = 'app-token';
const DEFAULT_STATUS_TOKEN = 'ops-token-123';

const OPTIONS = {
  port: { type: 'string', default: '8080' },
  broker: { type: 'string' },
  prefix: { type: 'string', default: 'loadwise' },
  // `||`: an empty variable is unset. With `??`, LB_TOKEN= gave the status and metrics
  // handlers an empty token, whose TypeError was a stack trace and exit 1.
  token: { type: 'string', default: process.env.GATEWAY_TOKEN || DEFAULT_TOKEN },
  'status-token': { type: 'string', default: process.env.LB_TOKEN || DEFAULT_STATUS_TOKEN },
  'interval-ms': { type: 'string', default: '1000' },
  'rate-limit': { type: 'string', default: '100' },
} as const;

// The tokens' values are never printed: they may come from the environment.
const USAGE: Usage<typeof OPTIONS> = {
  usage:
    'node examples/dist/existing-gateway.js [--port 8080] [--broker mqtt://127.0.0.1:1883]\n' +
    '         [--prefix loadwise] [--token <app token>] [--status-token <ops token>]\n' +
    '         [--interval-ms 1000] [--rate-limit 100]',
  flags: {
    port: ['<n>', 'gateway port on 127.0.0.1 (0: any free port; default 8080)'],
    broker: ['<url>', 'MQTT broker of the agents and balancers (default: an embedded one)'],
    prefix: ['<prefix>', 'MQTT topic prefix (default loadwise)'],
    token: [
      '<token>',
      'Bearer token the app requires on every path but /health and /_lb/metrics\n(default $GATEWAY_TOKEN, else app-token)',
    ],
    'status-token': [
      '<token>',
      'ops token of /_lb/metrics and /_lb/status, in x-loadwise-token\n(default $LB_TOKEN, else ops-token-123)',
    ],
    'interval-ms': ['<ms>', 'how often each agent reports (100..60000, default 1000)'],
    'rate-limit': ['<n>', 'requests per second per client address (1..1000000, default 100)'],
  },
};

/** One line naming the mistake, exit 2: the flags' rule (lib/args.ts). */
function refuse(what: string): never {
  process.stderr.write(`existing-gateway: ${what}\n`);
  process.exit(2);
}

/**
 * The balancers' own checks of --broker and --prefix, made before anything starts: they
 * threw once the four backends and agents ran, a GatewayError printed with its stack and
 * exit 1 (`--broker http://x`, `--prefix 'a b'`).
 */
function checkBrokerAndPrefix(broker: string | undefined, prefix: string): void {
  if (broker !== undefined) {
    let scheme: string | undefined;
    try {
      scheme = new URL(broker).protocol;
    } catch {
      // not a URL: said below
    }
    if (scheme === undefined) refuse(`--broker ${redactUrl(broker)}: not a URL`);
    // What loadBalance() takes (tcp:// and ssl:// are mqtt.js's names for mqtt:// and mqtts://).
    if (!['mqtt:', 'mqtts:', 'ws:', 'wss:', 'tcp:', 'ssl:'].includes(scheme))
      refuse(
        `--broker ${redactUrl(broker)}: expected mqtt://, mqtts://, ws://, wss://, tcp:// or ssl://`,
      );
  }
  try {
    assertValidPrefix(prefix);
  } catch (err) {
    if (!(err instanceof ProtocolError)) throw err;
    refuse(`--prefix: ${err.message.replace(/^LW_PROTO_\w+: /, '')}`);
  }
}

function parse(): Args {
  const { values } = parseFlags('existing-gateway', OPTIONS, undefined, USAGE);
  const int = (name: string, text: string, min: number, max: number): number =>
    integerArg('existing-gateway', name, text, min, max);
  // An empty token would let anyone in (the handlers refuse it with a TypeError).
  if (values.token === '') refuse('--token must not be empty');
  if (values['status-token'] === '') refuse('--status-token must not be empty');
  checkBrokerAndPrefix(values.broker, values.prefix);
  return {
    port: int('port', values.port, 0, 65535),
    broker: values.broker,
    prefix: values.prefix,
    token: values.token,
    statusToken: values['status-token'],
    intervalMs: int('interval-ms', values['interval-ms'], 100, 60_000),
    rateLimit: int('rate-limit', values['rate-limit'], 1, 1_000_000),
  };
}

const say = (line: string): void => void process.stdout.write(`${line}\n`);

/** A request id: the client's `x-request-id` if it sent a sane one, else a new one; echoed back and forwarded. */
function requestId(): express.RequestHandler {
  return (req, res, next) => {
    const given = req.headers['x-request-id'];
    const id = typeof given === 'string' && /^[\w.-]{1,64}$/.test(given) ? given : randomUUID();
    req.headers['x-request-id'] = id;
    res.setHeader('x-request-id', id);
    next();
  };
}

/** A fixed one-second window per client address: enough for an example, not for production. */
function rateLimit(perSecond: number): express.RequestHandler {
  let windowStart = Date.now();
  const counts = new Map<string, number>();
  return (req, res, next) => {
    const now = Date.now();
    if (now - windowStart >= 1000) {
      windowStart = now;
      counts.clear();
    }
    const key = req.socket.remoteAddress ?? '';
    const n = (counts.get(key) ?? 0) + 1;
    counts.set(key, n);
    if (n <= perSecond) return next();
    res.setHeader('retry-after', '1');
    res.status(429).json({ error: 'rate limited' });
  };
}

/** `Authorization: Bearer <token>` or 401. */
function bearerAuth(token: string): express.RequestHandler {
  return (req, res, next) => {
    if (req.headers.authorization === `Bearer ${token}`) return next();
    res.setHeader('www-authenticate', 'Bearer realm="gateway"');
    res.status(401).json({ error: 'unauthorized' });
  };
}

async function main(): Promise<void> {
  const args = parse();
  await exitIfPortTaken('existing-gateway', args.port);
  const cleanups: (() => Promise<void> | void)[] = [];
  // Graceful shutdown: refuse new connections, let requests in flight finish
  // (each balancer answers 503 LW_GW_DRAINING to new requests meanwhile), then
  // stop the agents, backends and broker this example started. From the first
  // moment: installed once it was up, a Ctrl-C while it started met Node's default,
  // and the run's key was left in /tmp.
  let stopping = false;
  // Set once built: shutdown() then stops it listening.
  const built: { server?: http.Server } = {};
  let all: LoadBalancerMiddleware[] = [];
  const shutdown = async (signal: string, code = 0): Promise<void> => {
    if (stopping) return;
    stopping = true;
    if (signal) say(`${signal}: draining`);
    if (built.server?.listening) built.server.close();
    const server = built.server;
    await Promise.all(all.map((lb) => lb.close({ graceMs: 10_000, ...(server && { server }) })));
    for (const c of cleanups.reverse()) await c();
    if (signal) say('stopped');
    process.exit(code);
  };
  process.on('SIGTERM', () => void shutdown('SIGTERM'));
  process.on('SIGINT', () => void shutdown('SIGINT'));

  // The broker: the given one (Mosquitto, ...) or an embedded one.
  let brokerUrl = args.broker;
  if (brokerUrl === undefined) {
    const broker = await startEmbeddedBroker();
    cleanups.push(() => broker.close());
    brokerUrl = broker.url;
    // Stopped meanwhile: shutdown() closed what it was given and exits.
    if (stopping) return void (await broker.close());
  }

  // Two backends per service, each with its agent; the agent's --service-name
  // matches the balancer's `service`, so each balancer hears only its own.
  const backends = new Map<Service, StartedBackend[]>();
  const children: ManagedChild[] = [];
  // The gateway refuses unsigned reports by default: agents sign with a run's key.
  const runKey = createRunKey('existing-gateway');
  cleanups.push(() => runKey.remove());
  const started = await Promise.all(
    SERVICES.map((service) =>
      Promise.all(
        [1, 2].map((n) => startBackendProcess({ id: `${service}-${n}`, slots: 8, serviceMs: 10 })),
      ),
    ),
  );
  if (stopping) {
    // Stopped while they started: these were not in the cleanups shutdown() ran.
    await Promise.all(started.flat().map((b) => b.process.stop()));
    return;
  }
  for (const [i, service] of SERVICES.entries()) {
    backends.set(service, started[i]!);
    for (const b of started[i]!) {
      children.push(b.process);
      children.push(
        startAgentProcess({
          backendId: b.id,
          brokerUrl,
          prefix: args.prefix,
          backendPort: b.port,
          servicePid: b.process.pid,
          intervalMs: args.intervalMs,
          drainGraceMs: 200,
          extraArgs: ['--service-name', service, '--key-file', runKey.file],
          // Killed outright (SIGKILL: no cleanup runs), it takes its agents with it, as the
          // backends' --exit-with-parent does for them. Left behind, an agent polled its
          // backend's old port for minutes, and a test server that got the port saw it.
          exitWithParent: true,
        }),
      );
      say(JSON.stringify({ event: 'backend', service, id: b.id, url: b.url }));
    }
  }
  cleanups.push(async () => {
    // Agents first (they say goodbye), then their backends.
    await Promise.all(children.filter((c) => c.name.startsWith('agent')).map((c) => c.stop()));
    await Promise.all(children.filter((c) => c.name.startsWith('backend')).map((c) => c.stop()));
  });

  // One balancer per service, one metrics registry for both.
  const registry = new Registry();
  const lbs = {} as Record<Service, LoadBalancerMiddleware>;
  let metrics: express.RequestHandler;
  let status: express.RequestHandler;
  try {
    for (const service of SERVICES) {
      lbs[service] = loadBalance({
        service,
        backends: backends.get(service)!.map((b) => ({ id: b.id, url: b.url })),
        broker: brokerUrl,
        topicPrefix: args.prefix,
        metricsRegistry: registry,
        keys: [runKey.key],
        decisionHeader: true,
      });
    }
    metrics = metricsHandler(registry, { token: args.statusToken });
    status = statusHandler({ balancers: Object.values(lbs), token: args.statusToken });
  } catch (err) {
    // What parse() did not foresee of the balancers' checks: still one line and exit 2,
    // once the backends and agents it started are stopped.
    if (!(err instanceof GatewayError || err instanceof TypeError)) throw err;
    process.stderr.write(`existing-gateway: ${err.message}\n`);
    await Promise.all(Object.values(lbs).map((lb) => lb.close({ graceMs: 0 })));
    for (const c of cleanups.reverse()) await c();
    process.exit(2);
  }
  all = Object.values(lbs);

  const app = express();
  app.use(requestId());
  app.get('/health', (_req, res) => {
    res.json({ status: 'ok', brokerConnected: all.map((lb) => lb.balancer.brokerConnected) });
  });
  app.get('/_lb/metrics', metrics);
  app.use(rateLimit(args.rateLimit));
  app.use(bearerAuth(args.token));
  // Behind the app's own Bearer auth: the ops token travels in X-Loadwise-Token.
  app.get('/_lb/status', status);
  app.use('/api/users', express.json(), lbs.users);
  app.use('/api/orders', lbs.orders);
  app.use((_req, res) => void res.status(404).json({ error: 'not found' }));

  // The app is complete before the port opens: no request can arrive before it.
  // gatewayServerOptions() declares the fields Express adds to every request, and
  // express.json()'s too (docs/gateway.md, "The gateway's server").
  // The server timeouts a gateway facing clients needs (docs/gateway.md, "What your
  // http.Server must do"): Node's defaults hold a slowloris head for 60 s and a request
  // for 300 s, checked every 30 s.
  const server = (built.server = http.createServer(
    {
      ...gatewayServerOptions({ requestFields: ['body', '_body'] }),
      connectionsCheckingInterval: 2_000,
    },
    app,
  ));
  server.headersTimeout = 10_000;
  server.requestTimeout = 60_000;
  server.on('upgrade', routeUpgrades(app));
  // Traffic once every balancer is ready (subscribed and warmed up, or told the broker is
  // out of reach: it resolves after its timeout, with a warning of its own, and the
  // balancers route on local signals), as docs/gateway.md's recipes do. It listened
  // first, and its first requests met balancers still warming up.
  const ready = await Promise.all(all.map((lb) => lb.ready())).then(
    () => true,
    (err: Error) => {
      // Stopped while it waited: the closing balancers' LW_GW_CLOSED is no error.
      if (!stopping) process.stderr.write(`existing-gateway: ${err.message}\n`);
      return false;
    },
  );
  // Stopped while it waited: shutdown() closes the balancers and exits.
  if (stopping) return;
  // Taken since the check: one line, and what it started is stopped.
  if (!(await listenOrSay('existing-gateway', server, args.port))) return shutdown('', 1);
  const port = (server.address() as AddressInfo).port;
  say(JSON.stringify({ event: 'listening', port }));
  // Neither the broker's credentials nor a token of the user's are printed (the tokens may
  // come from the environment): the built-in tokens are, any other is a placeholder.
  say(`gateway on http://127.0.0.1:${port} (broker ${redactUrl(brokerUrl)})`);
  const token = args.token === DEFAULT_TOKEN ? DEFAULT_TOKEN : '<app token>';
  const ops = args.statusToken === DEFAULT_STATUS_TOKEN ? DEFAULT_STATUS_TOKEN : '<ops token>';
  say(`  curl -H 'authorization: Bearer ${token}' http://127.0.0.1:${port}/api/users/hello`);
  say(
    `  curl -H 'authorization: Bearer ${token}' -H 'x-loadwise-token: ${ops}' http://127.0.0.1:${port}/_lb/status`,
  );
  if (ready)
    say(
      all.every((lb) => lb.balancer.brokerConnected !== false)
        ? 'every balancer is connected to the broker'
        : 'routing on local signals: the broker did not answer yet (still reconnecting)',
    );
}

main().catch((err: unknown) => {
  process.stderr.write(`existing-gateway: ${(err as Error).stack ?? String(err)}\n`);
  process.exit(1);
});
