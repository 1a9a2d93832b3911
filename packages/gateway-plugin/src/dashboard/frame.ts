/**
 * What the dashboard sends once per tick: a frame (every figure the page
 * shows now) and a point (the few numbers the charts plot, kept in the
 * history for viewers who arrive later). Both are built from one
 * `balancer.snapshot()` plus read-only looks at the balancer: nothing here
 * changes routing state.
 */
import type { Balancer } from '../balancer';
import type { BackendSnapshot, BackendStateName, ShedReason } from '../observability';
import { redactUrl } from '@loadwise/protocol';

/**
 * Backends a frame details, and the history keeps lines for, at most. Up to
 * this many a frame lists every backend, as it always did. Above it every
 * tick carried every row (1.25 MB a second per viewer at 3,000 backends) and
 * every history point six numbers per backend (111 MB for a minute at 250 ms,
 * kept after the viewers left), for a table and charts nobody can read at
 * that size: a frame lists the backends that matter (not healthy, recently
 * changed or stale, then the busiest) and counts the rest, and the page says
 * how many it does not show. 100 rows and lines still fit a page, and keep a
 * frame near 50 KB.
 */
export const MAX_DETAILED_BACKENDS = 100;

/** How long a backend named by an event (ejected, down, up, drained …) counts as recently changed. */
const RECENT_MS = 60_000;

/**
 * How much busier a backend must be than one already listed to take its
 * place: without it, backends of nearly equal traffic swapped places every
 * tick, and each swap rebuilds the page's charts and breaks their lines.
 */
const INCUMBENT_BONUS = 1.25;

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
  /**
   * Every backend when there are at most MAX_DETAILED_BACKENDS, else that
   * many (the ones that matter most); snapshot order either way.
   */
  backends: FrameBackend[];
  /** The whole fleet, including the backends `backends` leaves out. */
  fleet: FleetSummary;
}

export interface FleetSummary {
  /** Backends in the balancer. */
  total: number;
  /** Backends not in `backends` (0 up to MAX_DETAILED_BACKENDS). */
  omitted: number;
  /** Backends in each state. */
  states: Record<BackendStateName, number>;
  /** Backends without a fresh report where one is expected (a broker is configured, or one arrived once). */
  stale: number;
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

/** What counts as a backend the operator must see (dashboard.js `isStale` says the same). */
const isStale = (b: BackendSnapshot, hasBroker: boolean): boolean =>
  !b.reportFresh && (b.reportAgeMs !== null || hasBroker);

/**
 * Picks the backends a frame details when there are more than
 * MAX_DETAILED_BACKENDS. It remembers its last pick, so the ones listed stay
 * listed while they still matter about as much (see INCUMBENT_BONUS).
 */
export class BackendPicker {
  private picked = new Set<string>();

  /**
   * @param recentlyChanged ids of backends named by an event since a time
   *   (the dashboard's event ring); they rank right after the unhealthy ones.
   */
  constructor(
    private readonly recentlyChanged: (sinceMs: number) => Set<string> = () => new Set(),
  ) {}

  pick(all: BackendSnapshot[], nowMs: number, hasBroker: boolean): BackendSnapshot[] {
    if (all.length <= MAX_DETAILED_BACKENDS) {
      this.picked = new Set(all.map((b) => b.id));
      return all;
    }
    const recent = this.recentlyChanged(nowMs - RECENT_MS);
    // Rank 0: not healthy; 1: recently changed, ramping up or stale; 2: the rest. Within a
    // rank, the busiest first (what this gateway sends it now and in its traffic window).
    const ranked = all.map((b, index) => {
      const rank =
        b.state !== 'healthy'
          ? 0
          : recent.has(b.id) || b.slowStartFactor < 1 || isStale(b, hasBroker)
            ? 1
            : 2;
      const incumbent = this.picked.has(b.id);
      const traffic = b.windowRequests + b.inFlight;
      return { b, index, rank, incumbent, score: incumbent ? traffic * INCUMBENT_BONUS : traffic };
    });
    ranked.sort(
      (x, y) =>
        x.rank - y.rank ||
        y.score - x.score ||
        Number(y.incumbent) - Number(x.incumbent) ||
        x.index - y.index,
    );
    const chosen = ranked.slice(0, MAX_DETAILED_BACKENDS).sort((x, y) => x.index - y.index);
    this.picked = new Set(chosen.map((x) => x.b.id));
    return chosen.map((x) => x.b);
  }
}

function summarize(all: BackendSnapshot[], shown: number, hasBroker: boolean): FleetSummary {
  const states: Record<BackendStateName, number> = { healthy: 0, ejected: 0, draining: 0, down: 0 };
  let stale = 0;
  for (const b of all) {
    states[b.state]++;
    if (isStale(b, hasBroker)) stale++;
  }
  return { total: all.length, omitted: all.length - shown, states, stale };
}

/**
 * One frame. `picker` chooses the backends it details above
 * MAX_DETAILED_BACKENDS; the stream keeps one, so its choice is steady.
 */
export function buildFrame(balancer: Balancer, picker = new BackendPicker()): Frame {
  const s = balancer.snapshot();
  const nowMs = balancer.now();
  const hasBroker = s.brokerConnected !== null;
  const shown = picker.pick(s.backends, nowMs, hasBroker);
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
    backends: shown.map((b) => {
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
    fleet: summarize(s.backends, shown.length, hasBroker),
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
