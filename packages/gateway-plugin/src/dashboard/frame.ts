/**
 * What the dashboard sends once per tick: a frame (every figure the page
 * shows now) and a point (the few numbers the charts plot, kept in the
 * history for viewers who arrive later). Both are built from one
 * `balancer.snapshot()` plus read-only looks at the balancer: nothing here
 * changes routing state.
 */
import type { Balancer } from '../balancer';
import type { BackendStateName, ShedReason } from '../observability';
import { redactUrl } from '../observability/event-log';

export interface FrameBackend {
  id: string;
  url: string;
  state: BackendStateName;
  /** Why it is not healthy; null when healthy. */
  reason: string | null;
  /** The agent's last report still steers routing (false: stale or none yet). */
  fresh: boolean;
  reportAgeMs: number | null;
  /** Slow-start ramp, 0 < f <= 1 (1: settled). */
  slowStart: number;
  /** Time left of an ejection, ms; null when not ejected. */
  ejectedForMs: number | null;
  /** From the last report (null: not reported). */
  cpu: number | null;
  mem: number | null;
  busy: number | null;
  queued: number | null;
  slots: number | null;
  verdict: string | null;
  agentState: string | null;
  /** What this gateway sees. */
  inFlight: number;
  latencyMs: number | null;
  expectedWaitMs: number | null;
  share: number;
  windowRequests: number;
  ejections: number;
  requests: number;
  failures: number;
}

export interface Frame {
  /** Wall clock, ms since the epoch. */
  t: number;
  strategy: string;
  panic: boolean;
  overloaded: boolean;
  eventLoopDelayMs: number | null;
  /** The overload threshold; null when overload protection is off. */
  maxEventLoopDelayMs: number | null;
  /** connected: null when no broker is configured; url without credentials. */
  broker: { connected: boolean | null; url: string | null };
  /** The saturation wait queue: waiting now, capacity, longest wait. */
  queue: { length: number; size: number; timeoutMs: number };
  inFlight: number;
  trafficWindowMs: number;
  /** Running totals since the gateway started. */
  retries: number;
  shed: Record<ShedReason, number>;
  dropped: Record<string, number>;
  backends: FrameBackend[];
}

/**
 * Per-backend chart values: [share 0..1, expected wait ms, latency ms, cpu
 * 0..1, outstanding in the backend as reported (busy + queued: includes load
 * from other clients), in flight from this gateway].
 */
export type PointBackend = [
  number,
  number | null,
  number | null,
  number | null,
  number | null,
  number,
];

export interface Point {
  t: number;
  /** True for the marker that breaks the lines where nobody watched (no samples). */
  gap?: true;
  eventLoopDelayMs: number | null;
  queue: number;
  inFlight: number;
  /** Totals, so the page plots rates (difference between points). */
  shed: number;
  retries: number;
  backends: Record<string, PointBackend>;
}

const round = (x: number | null, digits = 1): number | null =>
  x === null || !Number.isFinite(x) ? null : Number(x.toFixed(digits));

export function buildFrame(balancer: Balancer): Frame {
  const s = balancer.snapshot();
  const nowMs = balancer.now();
  const totals = balancer.metrics.totals();
  const o = balancer.options;
  return {
    t: Date.parse(s.takenAt),
    strategy: s.strategy,
    panic: s.panic,
    overloaded: s.overloaded,
    eventLoopDelayMs: round(s.eventLoopDelayMs),
    maxEventLoopDelayMs: o.overload?.maxEventLoopDelayMs ?? null,
    broker: {
      connected: s.brokerConnected,
      url: balancer.brokerUrl === undefined ? null : redactUrl(balancer.brokerUrl),
    },
    queue: {
      length: s.saturationQueueLength,
      size: o.saturation.queueSize,
      timeoutMs: o.saturation.queueTimeoutMs,
    },
    inFlight: s.inFlight,
    trafficWindowMs: s.trafficWindowMs,
    retries: totals.retries,
    shed: totals.shed,
    dropped: totals.invalidMessages,
    backends: s.backends.map((b) => {
      const until = balancer.registry.get(b.id)?.ejectedUntilMs;
      const r = b.lastReport;
      return {
        id: b.id,
        url: b.url,
        state: b.state,
        reason: b.stateReason,
        fresh: b.reportFresh,
        reportAgeMs: b.reportAgeMs,
        slowStart: round(b.slowStartFactor, 3)!,
        ejectedForMs: until === undefined ? null : Math.max(0, until - nowMs),
        cpu: round(r?.cpuUtilization ?? null, 3),
        mem: round(r?.memoryUtilization ?? null, 3),
        busy: r?.inFlight ?? null,
        queued: r?.queued ?? null,
        slots: r?.concurrencyLimit ?? null,
        verdict: r?.verdict ?? null,
        agentState: r?.agentState ?? null,
        inFlight: b.inFlight,
        latencyMs: round(b.latencyMs),
        expectedWaitMs: round(b.expectedWaitMs),
        share: round(b.trafficShare, 3)!,
        windowRequests: b.windowRequests,
        ejections: b.ejections,
        requests: b.requestsTotal,
        failures: b.failuresTotal,
      };
    }),
  };
}

export function pointOf(f: Frame): Point {
  const backends: Record<string, PointBackend> = {};
  for (const b of f.backends) {
    const outstanding =
      b.busy === null && b.queued === null ? null : (b.busy ?? 0) + (b.queued ?? 0);
    backends[b.id] = [b.share, b.expectedWaitMs, b.latencyMs, b.cpu, outstanding, b.inFlight];
  }
  let shed = 0;
  for (const n of Object.values(f.shed)) shed += n;
  return {
    t: f.t,
    eventLoopDelayMs: f.eventLoopDelayMs,
    queue: f.queue.length,
    inFlight: f.inFlight,
    shed,
    retries: f.retries,
    backends,
  };
}
