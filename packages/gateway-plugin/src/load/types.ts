/**
 * The load interface the balancer and the strategies read: one estimate per
 * backend, written by the balancer (request start and end, agent reports,
 * admission) and read on every pick. load/ owns it; strategies/types.ts
 * re-exports `EndpointLoad` for the strategies. Every read method is pure: it
 * changes no state, so what a backend scores depends only on the writes it
 * received (load/read-purity.test.ts).
 */
import type { BackendState, HealthVerdict, MetricsReport } from '@loadwise/protocol';

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
  /**
   * Optional: the standard error of expectedWaitMs relative to it, for a figure
   * nobody has refreshed lately (0 otherwise, or when unknown). The default
   * strategy lets such a candidate win a tie within it, so a backend whose
   * last samples were unlucky is not left out until its figure decays
   * (strategies/p2c-strategy.ts, samplingBand).
   */
  expectedWaitError?(nowMs: number): number;
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

/** What the estimate is made of, for the status endpoint and for tests. */
export interface LoadSnapshot {
  inFlight: number;
  hiddenInFlight: number;
  capacity: number;
  capacitySource: 'reported' | 'learned' | 'cohort' | 'default';
  serviceTimeMs: number;
  /**
   * `cpu`: `s` is c / cpuThroughputRps (load/cpu-capacity.ts): the backend is CPU-bound, or
   * the latency's service time is below that floor.
   */
  serviceTimeSource: 'local' | 'reported' | 'cohort' | 'default' | 'cpu';
  /** Requests per second the CPU the backend can get would drain; undefined without CPU evidence. */
  cpuThroughputRps: number | undefined;
  penaltyFactor: number;
  /** Overload signal 0..1: a decaying share of recent answers that were "overloaded". */
  overload: number;
  slowStartFactor: number;
  expectedWaitMs: number;
  reportAgeMs: number | undefined;
  freshReport: boolean;
}

/** The EndpointLoad made by createEndpointLoad, with the extras the balancer may use. */
export interface LoadEstimate extends EndpointLoad {
  /**
   * A request ended for a reason that says nothing about the backend (the
   * client stalled its body, or the gateway could not send it): in-flight
   * goes down, no latency or error sample is taken.
   */
  onRequestCancel(nowMs: number): void;
  /** The backend's response head arrived: an answer, whatever its body does (stallMs). */
  onResponseHead(): void;
  /**
   * expectedWaitMs; without `stall`, leaving out the floor of requests left unanswered
   * (endpoint-load.ts stallMs): saturation is judged without it, as that floor keeps new
   * requests away, and with nothing sent, nothing answers to end it.
   */
  expectedWaitMs(nowMs: number, stall?: boolean): number;
  reportVerdict(nowMs: number): HealthVerdict | undefined;
  reportState(nowMs: number): BackendState | undefined;
  /** The fresh report says every slot is busy and requests wait; false when none is fresh. */
  reportSaturated(nowMs: number): boolean;
  /**
   * This gateway's requests in flight past which a first attempt waits in the
   * gateway's queue (docs/gateway.md, "Saturation"); undefined: no such bound.
   */
  saturationBound?(nowMs: number): number | undefined;
  /**
   * onRequestEnd, with the backend's answer "overloaded" (a 503 with
   * Retry-After, or a 503/429 while it reports itself saturated): the request
   * neither succeeded nor failed. It raises a bounded, decaying overload
   * signal that lowers the backend's share, leaves the error rate alone, and
   * (like a failure) says nothing good about its speed. `refused`: answered but not
   * served (a 429 that is not overload, such as a client's rate limit): a success for the
   * error rate and the penalties, but its time, a refusal's, never lowers the service time.
   */
  onRequestEnd(
    nowMs: number,
    latencyMs: number,
    ok: boolean,
    overloaded?: boolean,
    refused?: boolean,
  ): void;
  watchInFlight(listener: () => void): () => void;
  snapshot(nowMs: number): LoadSnapshot;
  dispose(): void;
  /**
   * An unsigned report (the balancer's `allowUnsigned`): the expected wait is
   * multiplied by `factor` (>= 1, bounded by the caller:
   * registry/unsigned-report.ts) until the report would be stale. Nothing
   * else of it counts, so it can only make the backend look busier, by a
   * bounded amount, for a bounded time.
   */
  onUnsignedReport(factor: number, intervalMs: number, receivedAtMs: number): void;
}
