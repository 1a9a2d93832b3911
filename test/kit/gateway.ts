/**
 * A real gateway for the tests: an Express app with `app.use(loadBalance(opts))`,
 * its event log, and the usual fleet + gateway setup of the end-to-end tests.
 */
import http from 'node:http';
import express from 'express';
import {
  loadBalance,
  startEmbeddedBroker,
  type BalancerEvents,
  type BalancerSnapshot,
  type BackendSnapshot,
  type LoadBalanceOptions,
  type LoadBalancerMiddleware,
} from '@loadwise/gateway-plugin';
import { uniquePrefix } from './brokers';
import { listen, type TestServer } from './http';
import { eventually, startFleet, type Fleet, type FleetBackendSpec } from './fleet';

export interface LoggedEvent {
  name: keyof BalancerEvents;
  atMs: number;
  data: Record<string, unknown>;
}

export interface TestGateway extends TestServer {
  lb: LoadBalancerMiddleware;
  /** Every balancer event so far, in order. */
  events: LoggedEvent[];
  snapshot(): BalancerSnapshot;
  backend(id: string): BackendSnapshot;
}

const EVENT_NAMES: (keyof BalancerEvents)[] = [
  'backend-up',
  'backend-down',
  'backend-ejected',
  'backend-restored',
  'backend-draining',
  'backend-added',
  'backend-removed',
  'metrics-stale',
  'saturation',
  'overload',
  'accept-queue',
  'panic',
  'broker-connected',
  'broker-lost',
  'broker-unreachable',
  'invalid-message',
];

export const quietLogger = { info: () => {}, warn: () => {}, error: () => {} };

/**
 * `app.use(loadBalance(opts))` on 127.0.0.1, port 0, in the test process (so tests
 * read its snapshot and events directly); `setup` builds the app itself instead
 * (middleware before the balancer, a mount path). WebSocket upgrades go to the
 * balancer.
 */
export async function startGateway(
  opts: LoadBalanceOptions,
  setup?: (app: express.Express, lb: LoadBalancerMiddleware) => void,
  waitReady = true,
): Promise<TestGateway> {
  // The gateway shares this process with jest, the fleet's agents, often the embedded
  // broker and forced GCs: its event-loop delay measures the harness, not the gateway,
  // and a 503 LW_GW_OVERLOADED from it failed a saturation test in a CI run. Overload
  // shedding is off unless a test turns it on (test/gateway/overload.test.ts and
  // test/chaos/overload.test.ts do).
  // Warm-up is off too: its loopback requests cost every test a few hundred ms, and
  // its preconnect GETs would show in the backends' request counts. The tests of the
  // warm-up itself (test/gateway/warm-up.test.ts) turn it on.
  const lb = loadBalance({ overload: false, logger: quietLogger, warmUp: false, ...opts });
  const events: LoggedEvent[] = [];
  for (const name of EVENT_NAMES) {
    lb.balancer.on(name, ((data: Record<string, unknown>) =>
      events.push({ name, atMs: Date.now(), data })) as never);
  }
  const app = express();
  if (setup) setup(app, lb);
  else app.use(lb);
  const srv = await listen(http.createServer(app));
  srv.server.on('upgrade', lb.upgrade);
  if (waitReady) await lb.ready();
  return {
    ...srv,
    lb,
    events,
    snapshot: () => lb.balancer.snapshot(),
    backend(id) {
      const b = lb.balancer.snapshot().backends.find((x) => x.id === id);
      if (!b) throw new Error(`gateway has no backend ${id}`);
      return b;
    },
    async close() {
      // Clients first: a request still running must not hold lb.close() for its grace.
      const closed = srv.close();
      await lb.close();
      await closed;
    },
  };
}

/**
 * One balancer over `url` (backend `b`; no active checks, no overload shedding, no warm-up,
 * quiet) in an Express app of its own that `build` sets up (default: `app.use(lb)`; it may
 * add listeners to the server too, `routeUpgrades(app)`), on 127.0.0.1 port 0. Closing it
 * closes the server, then the balancer without grace.
 */
export async function expressGateway(
  url: string,
  opts: Partial<LoadBalanceOptions> = {},
  build: (app: express.Express, lb: LoadBalancerMiddleware, server: http.Server) => void = (
    app,
    lb,
  ) => app.use(lb),
): Promise<TestServer & { lb: LoadBalancerMiddleware }> {
  const lb = loadBalance({
    backends: [{ id: 'b', url }],
    healthCheck: false,
    overload: false,
    warmUp: false,
    logger: quietLogger,
    ...opts,
  });
  const app = express();
  const server = http.createServer(app);
  build(app, lb, server);
  const s = await listen(server);
  return {
    ...s,
    lb,
    close: async () => {
      await s.close();
      await lb.close({ graceMs: 0 });
    },
  };
}

/**
 * A gateway for the proxy's own tests (test/gateway/): no active health checks, and
 * returned before its broker (if any) connects, for the tests of that connection.
 */
export function startLocalGateway(
  opts: LoadBalanceOptions,
  setup?: (app: express.Express, lb: LoadBalancerMiddleware) => void,
): Promise<TestGateway> {
  return startGateway({ healthCheck: false, ...opts }, setup, false);
}

/** Value of a counter series in the gateway's Prometheus registry (0 when absent). */
export async function counter(
  gw: TestGateway,
  name: string,
  labels: Record<string, string>,
): Promise<number> {
  const metric = gw.lb.balancer.metricsRegistry.getSingleMetric(`loadwise_${name}`);
  if (!metric) throw new Error(`no metric loadwise_${name}`);
  const { values } = await metric.get();
  let sum = 0;
  for (const v of values) {
    if (Object.entries(labels).every(([k, want]) => v.labels[k] === want)) sum += v.value;
  }
  return sum;
}

/**
 * The usual end-to-end setup: a fleet of real backends with their agents on
 * `brokerUrl` (under a fresh topic prefix), signing their reports with the
 * fleet's key, a gateway over them that holds the key, and a wait until every
 * backend has a fresh report. Extra gateway options go in `gateway`. If the
 * gateway fails to start, the fleet is stopped here.
 */
export async function startFleetGateway(opts: {
  brokerUrl: string;
  label: string;
  backends: FleetBackendSpec[];
  gateway?: Partial<LoadBalanceOptions>;
}): Promise<{ fleet: Fleet; gw: TestGateway }> {
  const prefix = uniquePrefix(opts.label);
  const fleet = await startFleet({ brokerUrl: opts.brokerUrl, prefix, backends: opts.backends });
  let gw: TestGateway | undefined;
  try {
    gw = await startGateway({
      backends: fleet.backendConfig(),
      broker: opts.brokerUrl,
      topicPrefix: prefix,
      keys: fleet.keys,
      ...opts.gateway,
    });
    const started = gw;
    await eventually(
      () => started.snapshot().backends.every((b) => b.reportFresh),
      15_000,
      'fresh reports',
    );
    return { fleet, gw };
  } catch (err) {
    await gw?.close();
    await fleet.close();
    throw err;
  }
}

/**
 * A fleet and its gateway (startFleetGateway) on an embedded broker of their own, for
 * one test file or describe block: started in beforeAll, closed in afterAll (gateway,
 * fleet, broker), `beforeClose` first (a paused backend resumed so that it can stop).
 * Read `fleet` and `gw` inside tests and hooks, once started.
 */
export function fleetGatewayOnEmbeddedBroker(
  opts: Omit<Parameters<typeof startFleetGateway>[0], 'brokerUrl'> & {
    beforeClose?: (fleet: Fleet) => void;
  },
): { readonly fleet: Fleet; readonly gw: TestGateway } {
  const { beforeClose, ...start } = opts;
  let broker: { url: string; close(): Promise<void> } | undefined;
  let fleet: Fleet | undefined;
  let gw: TestGateway | undefined;
  beforeAll(async () => {
    broker = await startEmbeddedBroker();
    ({ fleet, gw } = await startFleetGateway({ brokerUrl: broker.url, ...start }));
  });
  afterAll(async () => {
    if (fleet) beforeClose?.(fleet);
    await gw?.close();
    await fleet?.close();
    await broker?.close();
  });
  return {
    get fleet() {
      if (!fleet) throw new Error('the fleet has not started');
      return fleet;
    },
    get gw() {
      if (!gw) throw new Error('the gateway has not started');
      return gw;
    },
  };
}

/**
 * Waits (up to `timeoutMs`) until every backend of `gw` is healthy. Health read at one
 * instant can fail on a starved machine: one probe that timed out reports "down" until
 * the agent's next report ends it; a state that stays (an ejection, a forged drain) still
 * fails, naming every backend's state.
 */
export function everyBackendHealthy(gw: TestGateway, timeoutMs = 5_000): Promise<void> {
  return eventually(
    () => gw.snapshot().backends.every((b) => b.state === 'healthy'),
    timeoutMs,
    () =>
      `every backend healthy (${gw
        .snapshot()
        .backends.map((b) => b.state)
        .join(',')})`,
  );
}

/** A promise and the function that resolves it. */
function deferred(): { promise: Promise<void>; resolve: () => void } {
  let resolve!: () => void;
  const promise = new Promise<void>((r) => (resolve = r));
  return { promise, resolve };
}

/**
 * An async middleware in front of the balancer (a session lookup, say) that
 * holds the request until `letGo()`: for the tests of a client that leaves
 * meanwhile. `reached`: the request is inside it; `clientGone`: the server
 * saw its response close; `balancerRan`: the balancer was called with it.
 */
export function heldBeforeBalancer(): {
  mount(app: express.Express, lb: LoadBalancerMiddleware): void;
  reached: Promise<void>;
  clientGone: Promise<void>;
  balancerRan: Promise<void>;
  letGo(): void;
} {
  const reached = deferred();
  const gone = deferred();
  const released = deferred();
  const ran = deferred();
  return {
    mount(app, lb) {
      app.use((_req, res, next) => {
        res.once('close', gone.resolve);
        reached.resolve();
        void released.promise.then(() => next());
      });
      app.use((req, res, next) => {
        lb(req, res, next);
        ran.resolve();
      });
    },
    reached: reached.promise,
    clientGone: gone.promise,
    balancerRan: ran.promise,
    letGo: released.resolve,
  };
}

/** A logger that keeps its warnings (fields and message), and says nothing. */
export function warningLogger() {
  const warnings: Array<{ fields: Record<string, unknown>; msg: string }> = [];
  const logger = {
    info: () => {},
    error: () => {},
    warn: (fields: object | string, msg?: string) =>
      warnings.push({ fields: fields as Record<string, unknown>, msg: msg ?? '' }),
  };
  return { logger, warnings };
}
