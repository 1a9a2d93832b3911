/**
 * Prometheus metrics of a gateway (prom-client 15). The request path calls the
 * `on*` methods. The two that run for every request (`onPick`, `onResponse`)
 * only add to plain numbers kept per backend: the counters take the sums at
 * scrape time (their `collect` hook), and the latency histogram is our own
 * allocation-free one (latency-histogram.ts). Together they cost ~35 ns per
 * request instead of ~700 ns through prom-client's label hashing. Rare events
 * (errors, ejections, retries, sheds, dropped messages) go straight to cached
 * prom-client children. Gauges (in-flight, report age, state, traffic share,
 * panic, ...) are read from a BalancerSnapshot at scrape time
 * (`setSnapshotSource`; snapshot-gauges.ts), so the request path never
 * touches them. The per-backend families write their own exposition from
 * label strings escaped once per backend (exposition.ts).
 *
 * Several balancers in one gateway (one per service) may share a registry:
 * the metric families are created once per registry and prefix, every series
 * carries the balancer's `service` label, and each scrape collects every
 * balancer. prom-client itself refuses a second metric of the same name.
 */
import { Counter, Registry } from 'prom-client';
import { GatewayError } from '../errors';
import { BackendLatencyHistogram } from './latency-histogram';
import {
  BackendLabelCache,
  SnapshotGauge,
  type MemberScrape,
  type SnapshotSourceOfScrape,
} from './snapshot-gauges';
import type { BackendSnapshot, BalancerSnapshot } from './snapshot';

export const DEFAULT_METRICS_PREFIX = 'loadwise_';

/** Upstream latency buckets, seconds: 1 ms to 10 s, about 2.5x apart. */
export const LATENCY_BUCKETS_S = [
  0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10,
];

/** Why a request to a backend failed, for `backend_errors_total{kind}`. */
export type UpstreamErrorKind = 'connect' | 'reset' | 'timeout' | '5xx';
export const UPSTREAM_ERROR_KINDS: readonly UpstreamErrorKind[] = [
  'connect',
  'reset',
  'timeout',
  '5xx',
];

/** Why the gateway answered 503 itself, for `shed_total{reason}`. */
export type ShedReason = 'saturated' | 'overloaded' | 'no-backend' | 'draining';
export const SHED_REASONS: readonly ShedReason[] = [
  'saturated',
  'overloaded',
  'no-backend',
  'draining',
];

const STATUS_CLASSES = ['1xx', '2xx', '3xx', '4xx', '5xx'] as const;

export interface GatewayMetricsOptions {
  /** Registry to register in (default: a new one, so two balancers in a process never clash). */
  registry?: Registry;
  /** Metric name prefix (default 'loadwise_'). */
  prefix?: string;
  /**
   * The `service` label on every series. Balancers sharing a registry must
   * each have their own (none is a value too: at most one balancer without).
   */
  service?: string;
  /** Snapshot source for the gauges; may also be set later with setSnapshotSource. */
  getSnapshot?: () => BalancerSnapshot;
}

export interface GatewayMetrics {
  readonly registry: Registry;
  /** A response arrived from the backend (any status), `latencyMs` from send to response headers or end. */
  onResponse(backendId: string, statusCode: number, latencyMs: number): void;
  /** A request to the backend failed (no response, or a 5xx counted as failure). */
  onError(backendId: string, kind: UpstreamErrorKind): void;
  /** The strategy picked this backend. */
  onPick(backendId: string, strategy: string): void;
  /** Passive outlier detection ejected the backend. */
  onEjection(backendId: string): void;
  /** A failed attempt on this backend is retried on another one. */
  onRetry(backendId: string): void;
  /** The gateway answered 503 itself. */
  onShed(reason: ShedReason): void;
  /** A wire message was dropped; `code` is the LW_PROTO_* (or LW_GW_*) code. */
  onInvalidMessage(code: string): void;
  /** The gateway refused or failed a request because of the request itself (LW_GW_* code). */
  onRequestRejected(code: string): void;
  /** A WebSocket was closed after `webSockets.idleTimeoutMs` without a byte either way. */
  onWebSocketIdleClosed(): void;
  /** A request body streamed from dispatch because `requestBuffering.maxTotalBytes` was held. */
  onBodyBufferFull(): void;
  /**
   * A backend left for good (discovery forgot it): its series leave the
   * registry, so a fleet that scales in and out does not grow the scrape.
   */
  forgetBackend(backendId: string): void;
  /** The gauges of the next scrape read this snapshot (instead of the source's, once). */
  collect(snapshot: BalancerSnapshot): void;
  setSnapshotSource(getSnapshot: (() => BalancerSnapshot) | undefined): void;
  /**
   * The balancer closed: its gauges stop, its counts so far stay in the
   * registry, and its `service` may join the registry again.
   */
  release(): void;
  /** Running totals of the rare counters, as plain numbers (read by the dashboard; never reset). */
  totals(): GatewayTotals;
}

export interface GatewayTotals {
  retries: number;
  shed: Record<ShedReason, number>;
  /** Dropped wire messages by code (bounded: protocol and gateway drop codes only). */
  invalidMessages: Record<string, number>;
}

interface CounterChild {
  inc(value?: number): void;
}

/** Counts not yet handed to prom-client, flushed into `child` at scrape time. */
interface Pending {
  child: CounterChild;
  count: number;
}

/** The state of one backend, created on its first event. */
interface BackendChildren {
  /** Responses per status class (index 0 = 1xx ... 4 = 5xx), flushed at scrape. */
  statusClass: (Pending | undefined)[];
  errors: Partial<Record<UpstreamErrorKind, CounterChild>>;
  latency: ReturnType<BackendLatencyHistogram['seriesOf']>;
  /** Picks per strategy name, flushed at scrape. */
  picks: Map<string, Pending>;
  ejections: CounterChild | undefined;
  retries: CounterChild | undefined;
}

/** One balancer's share of a registry's metric families. */
interface Member {
  service: string | undefined;
  children: Map<string, BackendChildren>;
  getSnapshot: (() => BalancerSnapshot) | undefined;
  /** A snapshot given to collect(), read by the next scrape instead of getSnapshot(). */
  pending: BalancerSnapshot | undefined;
  /** Label strings of its gauges, escaped once per backend. */
  labels: BackendLabelCache;
}

type Labels = Record<string, string>;

/** The metric families of one registry and prefix, shared by every balancer registered there. */
interface Families {
  members: Set<Member>;
  requests: Counter<string>;
  errors: Counter<string>;
  latency: BackendLatencyHistogram;
  picks: Counter<string>;
  ejections: Counter<string>;
  retries: Counter<string>;
  sheds: Counter<string>;
  invalidMessages: Counter<string>;
  rejected: Counter<string>;
  webSocketIdleClosed: Counter<string>;
  bodyBufferFull: Counter<string>;
}

const familiesOf = new WeakMap<Registry, Map<string, Families>>();

const flush = (pending: Pending | undefined): void => {
  if (pending !== undefined && pending.count > 0) {
    pending.child.inc(pending.count);
    pending.count = 0;
  }
};

/** `labels` with the member's service first, when it has one. */
function withService(member: Member, labels: Labels): Labels {
  return member.service === undefined ? labels : { service: member.service, ...labels };
}

function createFamilies(registry: Registry, p: string): Families {
  const registers = [registry];
  const members = new Set<Member>();
  const requests = new Counter({
    name: `${p}backend_requests_total`,
    help: 'Responses received from each backend, by status class',
    labelNames: ['service', 'backend', 'status_class'] as const,
    registers,
    collect() {
      for (const m of members) for (const c of m.children.values()) c.statusClass.forEach(flush);
    },
  });
  const errors = new Counter({
    name: `${p}backend_errors_total`,
    help: 'Failed requests to each backend, by kind (connect, reset, timeout, 5xx)',
    labelNames: ['service', 'backend', 'kind'] as const,
    registers,
  });
  const latency = new BackendLatencyHistogram(
    `${p}backend_latency_seconds`,
    'Time from sending a request to a backend to its response, seconds',
    LATENCY_BUCKETS_S,
    registry,
  );
  const picks = new Counter({
    name: `${p}picks_total`,
    help: 'Backends chosen by the routing strategy',
    labelNames: ['service', 'backend', 'strategy'] as const,
    registers,
    collect() {
      for (const m of members) for (const c of m.children.values()) c.picks.forEach(flush);
    },
  });
  const ejections = new Counter({
    name: `${p}ejections_total`,
    help: 'Backends ejected by passive outlier detection',
    labelNames: ['service', 'backend'] as const,
    registers,
  });
  const retries = new Counter({
    name: `${p}retries_total`,
    help: 'Failed attempts on a backend retried on another backend',
    labelNames: ['service', 'backend'] as const,
    registers,
  });
  const sheds = new Counter({
    name: `${p}shed_total`,
    help: 'Requests the gateway answered 503 itself, by reason (saturated, overloaded, no-backend, draining; draining also counts the 502 of a request cut at the end of close())',
    labelNames: ['service', 'reason'] as const,
    registers,
  });
  const invalidMessages = new Counter({
    name: `${p}invalid_messages_total`,
    help: 'MQTT messages dropped, by error code',
    labelNames: ['service', 'code'] as const,
    registers,
  });

  const rejected = new Counter({
    name: `${p}rejected_requests_total`,
    help: 'Requests the gateway answered itself because of the request (bad framing or path, body timeout, per-client limit, proxy error), by error code',
    labelNames: ['service', 'code'] as const,
    registers,
  });
  const bodyBufferFull = new Counter({
    name: `${p}request_buffer_full_total`,
    help: 'Request bodies dispatched before they were read (streamed) because requestBuffering.maxTotalBytes was held',
    labelNames: ['service'] as const,
    registers,
  });
  const webSocketIdleClosed = new Counter({
    name: `${p}websocket_idle_closed_total`,
    help: 'WebSockets closed after webSockets.idleTimeoutMs without a byte in either direction',
    labelNames: ['service'] as const,
    registers,
  });

  // Snapshot gauges: one snapshot per balancer per scrape, shared by every
  // gauge family. A scrape through metricsHandler (exposition.ts) keeps it in its memo; one
  // through registry.metrics() (prom-client reads every family in the same
  // tick) keeps it until the next turn of the event loop.
  let tickSnapshots: MemberScrape[] | undefined;
  const takeSnapshots = (): MemberScrape[] => {
    const taken: MemberScrape[] = [];
    for (const m of members) {
      const snapshot = m.pending ?? m.getSnapshot?.();
      m.pending = undefined;
      if (snapshot !== undefined)
        taken.push({ snapshot, cache: m.labels, backends: m.labels.of(snapshot.backends) });
    }
    return taken;
  };
  const source: SnapshotSourceOfScrape = {
    snapshots(scrape) {
      if (scrape !== undefined) {
        let taken = scrape.memo.get(source) as MemberScrape[] | undefined;
        if (taken === undefined) {
          taken = takeSnapshots();
          scrape.memo.set(source, taken);
        }
        return taken;
      }
      if (tickSnapshots === undefined) {
        tickSnapshots = takeSnapshots();
        setImmediate(() => {
          tickSnapshots = undefined;
        }).unref();
      }
      return tickSnapshots;
    },
  };
  const backendGauge = (
    name: string,
    help: string,
    read: (b: BackendSnapshot) => number | undefined,
  ): SnapshotGauge =>
    new SnapshotGauge(`${p}${name}`, help, { kind: 'backend', read }, source, registry);
  const gatewayGauge = (
    name: string,
    help: string,
    read: (s: BalancerSnapshot) => number,
  ): SnapshotGauge =>
    new SnapshotGauge(`${p}${name}`, help, { kind: 'gateway', read }, source, registry);

  // Registered in the order of the prom-client gauges they replace (the exposition's order).
  backendGauge('backend_in_flight', 'Requests outstanding on each backend', (b) => b.inFlight);
  gatewayGauge('in_flight', 'Requests this gateway is proxying now', (s) => s.inFlight);
  backendGauge(
    'backend_report_age_seconds',
    'Age of the last agent report of each backend, seconds (absent: none yet)',
    (b) => (b.reportAgeMs !== null ? b.reportAgeMs / 1000 : undefined),
  );
  backendGauge(
    'backend_report_fresh',
    '1 while the last agent report is younger than its freshness limit',
    (b) => (b.reportFresh ? 1 : 0),
  );
  new SnapshotGauge(
    `${p}backend_state`,
    '1 for the current routing state of each backend, 0 for the others',
    { kind: 'state' },
    source,
    registry,
  );
  backendGauge(
    'backend_traffic_share',
    'Share of the requests in the last window sent to each backend, 0..1',
    (b) => b.trafficShare,
  );
  backendGauge(
    'backend_reported_cpu_utilization',
    'CPU utilization (0..1) in the last agent report',
    (b) => b.lastReport?.cpuUtilization ?? undefined,
  );
  backendGauge(
    'backend_reported_queued',
    'Requests queued in the backend, per the last agent report',
    (b) => b.lastReport?.queued ?? undefined,
  );
  gatewayGauge('panic', '1 while too few backends are healthy (panic mode)', (s) =>
    s.panic ? 1 : 0,
  );
  gatewayGauge(
    'overloaded',
    '1 while the gateway sheds load for its own event loop or accept queue',
    (s) => (s.overloaded ? 1 : 0),
  );
  gatewayGauge(
    'saturation_queue_length',
    'Requests waiting for a free backend slot',
    (s) => s.saturationQueueLength,
  );
  gatewayGauge(
    'websockets_open',
    'WebSockets open through this gateway (upgrades taken and not closed)',
    (s) => s.openWebSockets,
  );
  gatewayGauge(
    'request_buffer_bytes',
    'Bytes of request bodies read before dispatch (requestBuffering) and held now, against its maxTotalBytes',
    (s) => s.requestBufferBytes,
  );
  gatewayGauge(
    'streams_open',
    'Streamed answers in the stream lane (running past streams.afterMs), not counted as in flight',
    (s) => s.openStreams,
  );
  // prom-client always exposed a label-less gauge: "not applicable" reads as 0.
  gatewayGauge(
    'event_loop_delay_seconds',
    'Event-loop delay the overload protection measured last, seconds (0 when it is off)',
    (s) => (s.eventLoopDelayMs ?? 0) / 1000,
  );
  gatewayGauge(
    'accept_queue_depth',
    'Connections waiting in the listen socket accept queue at the last sample (0 when off or not Linux)',
    (s) => s.acceptQueueDepth ?? 0,
  );
  gatewayGauge(
    'broker_connected',
    '1 while connected to the MQTT broker (0 when disconnected or none is configured)',
    (s) => (s.brokerConnected === true ? 1 : 0),
  );

  return {
    members,
    requests,
    errors,
    latency,
    picks,
    ejections,
    retries,
    sheds,
    invalidMessages,
    rejected,
    webSocketIdleClosed,
    bodyBufferFull,
  };
}

/** The families of `registry` under `prefix`, created on first use. */
function familiesFor(registry: Registry, prefix: string): Families {
  let byPrefix = familiesOf.get(registry);
  if (byPrefix === undefined) {
    byPrefix = new Map();
    familiesOf.set(registry, byPrefix);
  }
  let f = byPrefix.get(prefix);
  if (f === undefined) {
    try {
      f = createFamilies(registry, prefix);
    } catch (err) {
      // prom-client: "A metric with the name ... has already been registered."
      throw new GatewayError(
        'LW_GW_INVALID_OPTION',
        `metricsRegistry: ${(err as Error).message} (another library registered a ${prefix}* metric; pick another prefix or registry)`,
      );
    }
    byPrefix.set(prefix, f);
  }
  return f;
}

export function createGatewayMetrics(opts: GatewayMetricsOptions = {}): GatewayMetrics {
  const registry = opts.registry ?? new Registry();
  const f = familiesFor(registry, opts.prefix ?? DEFAULT_METRICS_PREFIX);
  const member: Member = {
    service: opts.service,
    children: new Map(),
    getSnapshot: opts.getSnapshot,
    pending: undefined,
    labels: new BackendLabelCache(opts.service),
  };
  for (const other of f.members) {
    if (other.service === member.service) {
      throw new GatewayError(
        'LW_GW_INVALID_OPTION',
        member.service === undefined
          ? 'metricsRegistry is already used by a balancer without a service: give each balancer sharing a registry its own `service`'
          : `metricsRegistry is already used by a balancer of service ${member.service}: give each balancer sharing a registry its own \`service\``,
      );
    }
  }
  f.members.add(member);
  const L = (labels: Labels): Labels => withService(member, labels);
  const children = member.children;

  const childrenOf = (id: string): BackendChildren => {
    let c = children.get(id);
    if (c === undefined) {
      c = {
        statusClass: [],
        errors: {},
        latency: f.latency.seriesOf(id, member.service),
        picks: new Map(),
        ejections: undefined,
        retries: undefined,
      };
      children.set(id, c);
    }
    return c;
  };
  const shedChildren = new Map<string, CounterChild>();
  const invalidChildren = new Map<string, CounterChild>();
  const rejectedChildren = new Map<string, CounterChild>();
  let webSocketIdleChild: CounterChild | undefined;
  let bodyBufferFullChild: CounterChild | undefined;
  // Plain copies of the rare counters: prom-client reads its own asynchronously.
  let retriesTotal = 0;
  const shedTotals: Record<ShedReason, number> = {
    saturated: 0,
    overloaded: 0,
    'no-backend': 0,
    draining: 0,
  };
  const invalidTotals = new Map<string, number>();

  return {
    registry,
    onResponse(backendId, statusCode, latencyMs) {
      const c = childrenOf(backendId);
      // Out-of-range codes (a broken upstream) count as 5xx rather than minting a new label.
      const idx = statusCode >= 100 && statusCode < 600 ? Math.floor(statusCode / 100) - 1 : 4;
      let pending = c.statusClass[idx];
      if (pending === undefined) {
        pending = {
          child: f.requests.labels(L({ backend: backendId, status_class: STATUS_CLASSES[idx]! })),
          count: 0,
        };
        c.statusClass[idx] = pending;
      }
      pending.count++;
      if (latencyMs >= 0 && Number.isFinite(latencyMs))
        f.latency.observe(c.latency, latencyMs / 1000);
    },
    onError(backendId, kind) {
      const c = childrenOf(backendId);
      let child = c.errors[kind];
      if (child === undefined) {
        child = f.errors.labels(L({ backend: backendId, kind }));
        c.errors[kind] = child;
      }
      child.inc();
    },
    onPick(backendId, strategy) {
      const c = childrenOf(backendId);
      let pending = c.picks.get(strategy);
      if (pending === undefined) {
        pending = { child: f.picks.labels(L({ backend: backendId, strategy })), count: 0 };
        c.picks.set(strategy, pending);
      }
      pending.count++;
    },
    onEjection(backendId) {
      const c = childrenOf(backendId);
      c.ejections ??= f.ejections.labels(L({ backend: backendId }));
      c.ejections.inc();
    },
    onRetry(backendId) {
      const c = childrenOf(backendId);
      c.retries ??= f.retries.labels(L({ backend: backendId }));
      c.retries.inc();
      retriesTotal++;
    },
    onShed(reason) {
      let child = shedChildren.get(reason);
      if (child === undefined) {
        child = f.sheds.labels(L({ reason }));
        shedChildren.set(reason, child);
      }
      child.inc();
      shedTotals[reason]++;
    },
    onInvalidMessage(code) {
      let child = invalidChildren.get(code);
      if (child === undefined) {
        child = f.invalidMessages.labels(L({ code }));
        invalidChildren.set(code, child);
      }
      child.inc();
      invalidTotals.set(code, (invalidTotals.get(code) ?? 0) + 1);
    },
    onRequestRejected(code) {
      let child = rejectedChildren.get(code);
      if (child === undefined) {
        child = f.rejected.labels(L({ code }));
        rejectedChildren.set(code, child);
      }
      child.inc();
    },
    forgetBackend(backendId) {
      const c = children.get(backendId);
      if (c === undefined) return;
      children.delete(backendId);
      const backend = { backend: backendId };
      c.statusClass.forEach((pending, i) => {
        if (pending) f.requests.remove(L({ ...backend, status_class: STATUS_CLASSES[i]! }));
      });
      for (const kind of Object.keys(c.errors)) f.errors.remove(L({ ...backend, kind }));
      for (const strategy of c.picks.keys()) f.picks.remove(L({ ...backend, strategy }));
      if (c.ejections) f.ejections.remove(L(backend));
      if (c.retries) f.retries.remove(L(backend));
      f.latency.remove(backendId, member.service);
    },
    onWebSocketIdleClosed() {
      webSocketIdleChild ??= f.webSocketIdleClosed.labels(L({}));
      webSocketIdleChild.inc();
    },
    onBodyBufferFull() {
      bodyBufferFullChild ??= f.bodyBufferFull.labels(L({}));
      bodyBufferFullChild.inc();
    },
    collect(s) {
      member.pending = s;
    },
    totals: () => ({
      retries: retriesTotal,
      shed: { ...shedTotals },
      invalidMessages: Object.fromEntries(invalidTotals),
    }),
    setSnapshotSource(fn) {
      member.getSnapshot = fn;
    },
    release() {
      for (const c of children.values()) {
        c.statusClass.forEach(flush);
        c.picks.forEach(flush);
      }
      member.getSnapshot = undefined;
      member.pending = undefined;
      f.members.delete(member);
    },
  };
}
