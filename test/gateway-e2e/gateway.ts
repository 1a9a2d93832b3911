/**
 * A real gateway for the end-to-end tests: an Express app with
 * `app.use(loadBalance(opts))` on 127.0.0.1, port 0, in the test process (so
 * tests read its snapshot and events directly), plus an event log.
 */
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import express from 'express';
import {
  loadBalance,
  type BalancerEvents,
  type BalancerSnapshot,
  type BackendSnapshot,
  type LoadBalanceOptions,
  type LoadBalancerMiddleware,
} from '@loadwise/gateway-plugin';
import { uniquePrefix } from '../kit/brokers';
import { eventually, startFleet, type Fleet, type FleetBackendSpec } from '../kit/fleet';

export interface LoggedEvent {
  name: keyof BalancerEvents;
  atMs: number;
  data: Record<string, unknown>;
}

export interface TestGateway {
  url: string;
  lb: LoadBalancerMiddleware;
  /** Every balancer event so far, in order. */
  events: LoggedEvent[];
  snapshot(): BalancerSnapshot;
  backend(id: string): BackendSnapshot;
  close(): Promise<void>;
}

const EVENT_NAMES: (keyof BalancerEvents)[] = [
  'backend-up',
  'backend-down',
  'backend-ejected',
  'backend-restored',
  'backend-draining',
  'backend-added',
  'metrics-stale',
  'saturation',
  'overload',
  'panic',
  'broker-connected',
  'broker-lost',
  'broker-unreachable',
  'invalid-message',
];

/** Logs go to an array, not the console: tests assert on them when they matter. */
export const quietLogger = {
  lines: [] as string[],
  info(msg: string) {
    this.lines.push(`info ${msg}`);
  },
  warn(msg: string) {
    this.lines.push(`warn ${msg}`);
  },
  error(msg: string) {
    this.lines.push(`error ${msg}`);
  },
};

export async function startGateway(opts: LoadBalanceOptions): Promise<TestGateway> {
  // The gateway shares this process with jest, the fleet's agents, often the embedded
  // broker and forced GCs: its event-loop delay measures the harness, not the gateway,
  // and a 503 LW_GW_OVERLOADED from it failed a saturation test in a CI run. Overload
  // shedding is off unless a test turns it on (as test/gateway/kit.ts does; it is tested
  // in test/gateway/overload.test.ts and test/chaos/overload.test.ts).
  const lb = loadBalance({ overload: false, logger: quietLogger, ...opts });
  const events: LoggedEvent[] = [];
  for (const name of EVENT_NAMES) {
    lb.balancer.on(name, ((data: Record<string, unknown>) =>
      events.push({ name, atMs: Date.now(), data })) as never);
  }
  const app = express();
  app.use(lb);
  const server = http.createServer(app);
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  await lb.ready();
  const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  return {
    url,
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
      server.closeAllConnections();
      await lb.close();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
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
