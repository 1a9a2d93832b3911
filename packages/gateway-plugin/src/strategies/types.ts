/**
 * The contract between the balancer (registry, health, proxy) and the routing
 * strategies. The balancer owns backends and their lifecycle; it hands a
 * strategy the eligible endpoints whenever that set changes, and asks it for a
 * synchronous pick per request. A strategy never reads CPU fields itself: it
 * compares `load` figures (lower is better), computed by src/load.
 */
import type { MetricsReport } from '@loadwise/protocol';

/** Per-backend load state, updated in place by the balancer, read by strategies. */
export interface EndpointLoad {
  /** Requests this gateway has sent to the backend and not yet finished. */
  readonly inFlight: number;
  /** Called by the balancer when it sends a request to the backend. */
  onRequestStart(nowMs: number): void;
  /** Called when that request finishes (response end, error or timeout). */
  onRequestEnd(nowMs: number, latencyMs: number, ok: boolean): void;
  /** A decoded, validated agent report arrived. */
  onReport(report: MetricsReport, receivedAtMs: number): void;
  /** True while the last report is younger than its freshness limit. */
  hasFreshReport(nowMs: number): boolean;
  /** Age of the last report, undefined if none ever arrived. */
  reportAgeMs(nowMs: number): number | undefined;
  /** Latency this gateway observes (Peak EWMA), undefined before the first response. */
  latencyMs(nowMs: number): number | undefined;
  /**
   * Expected time until a new request sent now would finish, in ms: the
   * default strategy's metric. Fuses local in-flight and latency with the
   * agent's report while it is fresh; falls back to local signals when stale;
   * a backend with no data gets a neutral estimate, never zero.
   */
  expectedWaitMs(nowMs: number): number;
  /** Starts (or restarts) slow start: a newcomer or re-admitted backend ramps up. */
  admit(nowMs: number): void;
  /** 0 < factor <= 1 while ramping up, 1 when settled. */
  slowStartFactor(nowMs: number): number;
  /**
   * Optional (added by the strategies author, compatible): subscribe to
   * changes of `inFlight`, so a strategy can keep an index (least-in-flight's
   * heap) instead of scanning every endpoint per pick. Returns the unsubscribe.
   */
  watchInFlight?(listener: () => void): () => void;
  /** Optional: the fresh report's health verdict, undefined when none is fresh (balancer eligibility). */
  reportVerdict?(nowMs: number): 'up' | 'degraded' | 'down' | undefined;
  /** Optional: the fresh report's lifecycle state, undefined when none is fresh. */
  reportState?(nowMs: number): 'online' | 'draining' | 'offline' | undefined;
}

export interface Endpoint {
  readonly id: string;
  /** Static weight from configuration (default 1). */
  readonly weight: number;
  readonly load: EndpointLoad;
}

export interface PickContext {
  nowMs: number;
  /** Key for consistent hashing / affinity (from a header, cookie or client address). */
  hashKey?: string;
  /** Endpoints not to pick (a retry must go to a different backend). */
  exclude?: ReadonlySet<Endpoint>;
  /** When true, fill `Pick.reason` (for the opt-in decision header). */
  explain?: boolean;
}

export interface Pick {
  endpoint: Endpoint;
  reason?: string;
}

export interface Strategy {
  readonly name: string;
  /** The eligible set changed: rebuild whatever `pick` reads. Never called per request. */
  setEndpoints(endpoints: readonly Endpoint[]): void;
  /** Synchronous, no I/O. Undefined only when every endpoint is excluded or none is set. */
  pick(ctx: PickContext): Pick | undefined;
  /** Optional (compatible addition): drop subscriptions to endpoint loads; the strategy is not used again. */
  dispose?(): void;
}
