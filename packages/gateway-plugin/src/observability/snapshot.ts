/**
 * The balancer's state as the status endpoint serves it and the metrics
 * collector reads it at scrape time. The balancer builds it on demand
 * (`balancer.snapshot()`), never per request. Every field is JSON-safe: a
 * figure that is not known is `null`, not `undefined`, so it stays visible
 * in the served JSON.
 */

/**
 * What a backend is, for routing:
 * - `healthy`: eligible for new requests;
 * - `ejected`: passive outlier detection took it out for a while;
 * - `draining`: its agent reported `draining` (in-flight requests finish);
 * - `down`: an active health check, the agent's verdict or an `offline` status.
 *
 * A configured backend starts `healthy` and is routed on local signals until
 * a check or a report says otherwise: there is no "not decided yet" state.
 */
export type BackendStateName = 'healthy' | 'ejected' | 'draining' | 'down';

export const BACKEND_STATE_NAMES: readonly BackendStateName[] = [
  'healthy',
  'ejected',
  'draining',
  'down',
];

/** The load figures of the backend's last agent report (null fields: not reported). */
export interface ReportedLoad {
  /** Host CPU busy share, 0..1 (the cgroup's share when a quota is set and reported). */
  cpuUtilization: number | null;
  /** Host (or cgroup) memory use, 0..1. */
  memoryUtilization: number | null;
  /** Requests the backend is serving now, as its tracker counts them. */
  inFlight: number | null;
  /** Requests waiting for a slot in the backend. */
  queued: number | null;
  /** Requests the backend serves at once (worker slots), when reported. */
  concurrencyLimit: number | null;
  /** The agent's verdict from its local probe: 'up' | 'degraded' | 'down'. */
  verdict: string | null;
  /** Agent lifecycle state from the report or the retained status: 'online' | 'draining' | 'offline'. */
  agentState: string | null;
}

export interface BackendSnapshot {
  id: string;
  /** Proxy target URL (from configuration, or an allowed signed registration). */
  url: string;
  origin: 'config' | 'discovery';
  weight: number;
  state: BackendStateName;
  /** Why it is not healthy, for humans (e.g. 'active health check failed'); null when healthy. */
  stateReason: string | null;
  /** Requests this gateway has outstanding on the backend. */
  inFlight: number;
  /** Latency this gateway observes (Peak EWMA), ms; null before the first response. */
  latencyMs: number | null;
  /** The strategy's expected wait for a request sent now, ms (load-aware metric); null if not computed. */
  expectedWaitMs: number | null;
  /**
   * Where the expected wait's service time comes from: `local` (this gateway's
   * latencies), `reported` (the agent's), `cohort`, `default`, or `cpu` (c /
   * the CPU it can get per CPU per request: the backend is CPU-bound, or its
   * latency's service time is below that floor, docs/strategies.md).
   */
  serviceTimeSource: 'local' | 'reported' | 'cohort' | 'default' | 'cpu';
  /** Requests per second the CPU the backend can get would drain; null without CPU evidence. */
  cpuThroughputRps: number | null;
  /** Age of the last agent report, ms; null if no report ever arrived. */
  reportAgeMs: number | null;
  /** Whether that report is younger than its freshness limit (so it steers routing). */
  reportFresh: boolean;
  /**
   * Key id of the last signed report or status applied for this backend;
   * null if none. Which key speaks for which backend, before binding each
   * key to its own (docs/protocol.md, "Signing and replay protection").
   */
  signedBy: string | null;
  /** The last report's load figures; null if no report ever arrived. */
  lastReport: ReportedLoad | null;
  /** Share of the requests this gateway sent in the last window that went here, 0..1. */
  trafficShare: number;
  /** Requests sent to it in that window. */
  windowRequests: number;
  /** Slow-start ramp, 0 < factor <= 1 (1: settled). */
  slowStartFactor: number;
  /** Times passive outlier detection ejected it since it was added. */
  ejections: number;
  /** Requests sent and failed (connect/reset/timeout/5xx) since it was added. */
  requestsTotal: number;
  failuresTotal: number;
}

export interface BalancerSnapshot {
  /** Wall-clock time the snapshot was taken, ISO 8601. */
  takenAt: string;
  /** The balancer's `service` option; null when it has none. */
  service: string | null;
  strategy: string;
  /** Too few healthy backends: traffic spreads over every routable one (Envoy panic mode). */
  panic: boolean;
  /** Requests waiting for a backend slot because every eligible backend is saturated. */
  saturationQueueLength: number;
  /** Requests this gateway is proxying now, over all backends. */
  inFlight: number;
  /** WebSockets open through this balancer (upgrades taken, waiting for their 101 or open). */
  openWebSockets: number;
  /**
   * Streamed answers in the stream lane (`streams`): running past `streams.afterMs`,
   * not counted in `inFlight` nor in their backend's.
   */
  openStreams: number;
  /**
   * Bytes of request bodies this balancer holds now, read before dispatch
   * (`requestBuffering`, its `maxTotalBytes`, and bodies kept for retries) and not yet
   * relayed an answer.
   */
  requestBufferBytes: number;
  /** The gateway's own event-loop delay (last sample), ms; null when overload protection is off. */
  eventLoopDelayMs: number | null;
  /**
   * Whether the gateway is shedding new requests (503 LW_GW_OVERLOADED): its event
   * loop is too slow, or connections wait in its accept queue.
   */
  overloaded: boolean;
  /**
   * Connections waiting in the listen socket's accept queue at the last sample (the
   * deepest of the ports requests came in on); null when the accept-queue signal is
   * off or absent (not Linux), or before the first request.
   */
  acceptQueueDepth: number | null;
  /** MQTT connection to the broker; null when no broker is configured. */
  brokerConnected: boolean | null;
  /** The window `trafficShare` covers, ms. */
  trafficWindowMs: number;
  backends: BackendSnapshot[];
}
