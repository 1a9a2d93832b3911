/**
 * The set of backends and the eligible subset the strategy picks from.
 *
 * Like grpc-js's load balancer pushing a new picker on every state change, the
 * registry recomputes the eligible set whenever a flag changes (report, check,
 * ejection) and hands it to `strategy.setEndpoints` only when it differs; the
 * per-request pick never rebuilds anything.
 *
 * Eligibility:
 * - draining, or offline by the agent's own word: excluded, always (HAProxy
 *   agent `drain`/`maint`; the agent's Last Will only makes metrics stale);
 * - ejected, failing active checks, or agent verdict `down`: "unhealthy";
 * - panic (Envoy): when healthy backends are fewer than panicThresholdPercent
 *   of the routable ones, spread over every routable backend instead, because
 *   piling all traffic on the few left would take them down too. A discovered
 *   backend whose agent is lost and which the gateway's own signals fail too
 *   (Backend.presumedGone) is neither routable nor picked in panic.
 */
import { serverOf } from './server';
import type { Message, MetricsReport, StatusMessage } from '@loadwise/protocol';
import type { Strategy } from '../strategies/types';
import type { BalancerEmitter } from '../events';
import type { Backend } from './backend';
import { unsignedPenalty } from './unsigned-report';

/** Backends whose reports may go stale in one sweep with a log line each. */
export const STALE_LINES = 3;

export class Registry {
  readonly backends = new Map<string, Backend>();
  /** Each backend by its server (serverOf): discovery refuses a second id for one. */
  private readonly byServer = new Map<string, Backend>();
  /** Backends discovery added (for `discovery.maxBackends`). */
  discoveredCount = 0;
  private eligibleNow: readonly Backend[] = [];
  private panicNow = false;
  /** Routable backends at the last recompute (the panic event when none is left). */
  private routableNow = 0;
  /** A recompute is due (recomputeSoon): reading the set does it first. */
  private pending: NodeJS.Immediate | undefined;
  /** Called after the eligible set changed (the balancer lets waiting requests retry). */
  onEligibleChange: (() => void) | undefined;

  /** What the strategy currently picks from. Replaced, never mutated. */
  get eligible(): readonly Backend[] {
    if (this.pending !== undefined) this.recompute();
    return this.eligibleNow;
  }

  get panic(): boolean {
    if (this.pending !== undefined) this.recompute();
    return this.panicNow;
  }

  constructor(
    private readonly strategy: Strategy,
    private readonly events: BalancerEmitter,
    private readonly panicThresholdPercent: number,
    private readonly now: () => number,
  ) {}

  /**
   * Adds a backend; `newcomer` starts slow start (a discovered one, not the
   * initial set). `recompute: false` leaves the eligible set to one
   * recompute() after a batch: the initial set, added one by one with a
   * recompute each, cost O(n²) (215 ms for 1,000 backends, 1.2 s for 3,000).
   */
  add(backend: Backend, newcomer: boolean, recompute = true): void {
    this.backends.set(backend.id, backend);
    this.byServer.set(serverOf(backend.target), backend);
    if (backend.origin === 'discovery') this.discoveredCount++;
    // A discovered backend ramps up when it first becomes eligible; the
    // initial set does not (slow start among equals would change nothing).
    backend.rampOnEntry = newcomer;
    if (recompute) this.recompute();
  }

  /**
   * Takes a backend out (discovery forgot it): it is no longer picked, checked or shown.
   * `recompute: false`, as for add: a sweep that forgets many recomputes once.
   */
  remove(backend: Backend, recompute = true): void {
    if (this.backends.get(backend.id) !== backend) return;
    this.backends.delete(backend.id);
    const server = serverOf(backend.target);
    if (this.byServer.get(server) === backend) this.byServer.delete(server);
    if (backend.origin === 'discovery') this.discoveredCount--;
    if (recompute) this.recompute();
  }

  /** The backend whose server (serverOf) `server` is, if any. */
  atServer(server: string): Backend | undefined {
    return this.byServer.get(server);
  }

  /**
   * Recomputes before anything reads the set again, and at the latest once the current
   * I/O is done: a burst of registrations (a gateway subscribing gets every retained one
   * at once) recomputed the whole set for each, O(n²): 2.1 s for 3,000.
   */
  recomputeSoon(): void {
    if (this.pending !== undefined) return;
    this.pending = setImmediate(() => {
      if (this.pending !== undefined) this.recompute();
    });
    // The balancer's own timers keep a gateway alive, not this.
    this.pending.unref();
  }

  get(id: string): Backend | undefined {
    return this.backends.get(id);
  }

  /** Applies a decoded status or metrics message to a known backend. */
  applyMessage(backend: Backend, message: Message, receivedAtMs: number): void {
    if (message.kind === 'metrics') this.applyMetrics(backend, message, receivedAtMs);
    else if (message.kind === 'status') this.applyStatus(backend, message);
  }

  /**
   * An unsigned report the balancer allows (`allowUnsigned`): a bounded
   * penalty on the backend's expected wait, nothing else. Eligibility, state,
   * verdict, the report shown on the status page and the load model's inputs
   * stay what signed reports and local signals made them, so no recompute.
   */
  applyUnsigned(
    backend: Backend,
    report: MetricsReport,
    receivedAtMs: number,
    maxPenalty: number,
  ): void {
    backend.heardUnsigned = true;
    backend.load.onUnsignedReport(
      unsignedPenalty(report, maxPenalty),
      report.intervalMs,
      receivedAtMs,
    );
  }

  private applyMetrics(backend: Backend, report: MetricsReport, receivedAtMs: number): void {
    const then = backend.lastReport;
    // A report of another agent run or service process: whatever was kept of the one
    // before (an ejection ended on the active check alone, while it was still out for
    // another reason: draining, offline) does not describe this one, which comes back
    // through admit() and slow start.
    if (
      backend.keepFiguresOnEntry &&
      (report.epochMs !== then?.epochMs || report.process?.pid !== then?.process?.pid)
    )
      backend.keepFiguresOnEntry = false;
    backend.load.onReport(report, receivedAtMs);
    backend.lastReport = report;
    // Fresh now: the next sweep that finds it stale announces metrics-stale,
    // even if the report goes stale between two sweeps.
    backend.wasFresh = true;
    const wasOut = backend.drainingOrOffline || backend.verdictDown;
    backend.agentLost = false;
    backend.agentState = report.state;
    backend.verdictDown = report.health.verdict === 'down';
    if (backend.verdictDown) backend.fullPassesSinceVerdict = 0;
    if (wasOut !== (backend.drainingOrOffline || backend.verdictDown)) this.recompute();
    else if (backend.conditionNow() !== backend.condition) this.recompute();
  }

  private applyStatus(backend: Backend, status: StatusMessage): void {
    if (status.will === true) {
      if (Registry.willChangesNothing(backend)) return;
      // The Last Will says the agent died, not the service: keep routing on local
      // signals (HAProxy: an unreachable agent is not an error). A backend its
      // agent was draining stays drained.
      backend.agentLost = true;
      if (backend.agentState !== 'draining') backend.agentState = 'offline';
    } else {
      backend.agentState = status.state;
      backend.agentLost = false;
    }
    this.recompute();
  }

  /**
   * A Last Will would change nothing: the agent is lost already, or it took
   * the backend offline itself (a stop sends a signed `offline`; its will
   * never comes, as the broker sends a will only for a connection that broke).
   * An agent builds and signs its will once per run, and the replay rules
   * accept any will of the current run (protocol/src/replay.ts): whoever
   * captured one could otherwise replay it to put a stopped backend back in
   * rotation, or to end a drain, until the agent's next message.
   */
  static willChangesNothing(backend: Backend): boolean {
    return backend.agentLost || backend.agentState === 'offline';
  }

  /** Recomputes eligibility; pushes a new set to the strategy only if it changed. */
  recompute(): void {
    if (this.pending !== undefined) {
      clearImmediate(this.pending);
      this.pending = undefined;
    }
    let routable = 0;
    let healthyCount = 0;
    for (const b of this.backends.values()) {
      // A discovered backend whose agent and service both failed (presumedGone) is not
      // routable: 8 crashed of 10 put a gateway in panic and spread traffic over the dead
      // addresses until their leases ended (145 backend errors, 11-16 × 503 per 200 requests).
      if (b.drainingOrOffline || b.presumedGone) continue;
      routable++;
      if (!b.unhealthy) healthyCount++;
    }
    const panic = routable > 0 && (healthyCount / routable) * 100 < this.panicThresholdPercent;
    const next: Backend[] = [];
    for (const b of this.backends.values()) {
      if (b.drainingOrOffline || b.presumedGone) continue;
      if (panic || !b.unhealthy) next.push(b);
    }
    const panicChanged = panic !== this.panicNow;
    this.panicNow = panic;
    // None routable any more is said whatever panic was: a healthy fleet whose pods all
    // crashed at once never turned panic on, and nothing said why every request got 503.
    const emptied = routable === 0 && this.routableNow > 0;
    this.routableNow = routable;
    const changed =
      next.length !== this.eligibleNow.length || next.some((b, i) => b !== this.eligibleNow[i]);
    if (changed) {
      this.rampNewcomers(this.eligibleNow, next);
      this.eligibleNow = next;
      this.strategy.setEndpoints(next.map((b) => b.endpoint));
    }
    for (const b of this.backends.values()) this.announce(b);
    // After the backends' own events: the panic a backend-down caused was logged before it.
    if (panicChanged || emptied)
      this.events.emit('panic', { panic, healthy: healthyCount, routable });
    if (changed) this.onEligibleChange?.();
  }

  /**
   * Slow start (Envoy) begins when a backend re-enters the eligible set,
   * whatever brought it back (ejection expired, check passed, agent online
   * again, discovered): not when one reason for its absence ended while
   * another still holds, or the ramp would be over before it serves again.
   * Except after an ejection the active check alone ended early
   * (Backend.keepFiguresOnEntry): the same process, its figures kept.
   */
  private rampNewcomers(before: readonly Backend[], after: readonly Backend[]): void {
    const was = new Set(before);
    const is = new Set(after);
    for (const b of before) if (!is.has(b)) b.rampOnEntry = true;
    const nowMs = this.now();
    for (const b of after) {
      if (!was.has(b) && b.rampOnEntry) {
        b.rampOnEntry = false;
        // Not a new incarnation (an ejection ended early on the active check alone): the
        // failures that ejected it still describe it. Wiped, a backend failing every request
        // came back with a clean slate each time its signals said down and up.
        if (b.keepFiguresOnEntry) b.keepFiguresOnEntry = false;
        else b.load.admit(nowMs);
      }
    }
  }

  /** Emits the event of a backend's condition change, once per transition. */
  private announce(b: Backend): void {
    const now = b.conditionNow();
    const before = b.condition;
    if (now === before) return;
    b.condition = now;
    if (now === 'ejected') return; // the outlier detector emits backend-ejected with its details
    if (now === 'draining') this.events.emit('backend-draining', { id: b.id });
    else if (now === 'down') this.events.emit('backend-down', { id: b.id, reason: b.downReason() });
    else if (before === 'ejected') this.events.emit('backend-restored', { id: b.id });
    else this.events.emit('backend-up', { id: b.id });
  }

  /**
   * Emits metrics-stale when a backend's report passes its freshness limit;
   * returns the backends whose reports went stale in this sweep. More than
   * STALE_LINES at once (a broker outage) have their events `quiet`: the
   * caller logs them as one line. A line each was 100 lines for one 6 s
   * outage with 100 backends, 1,000 for a fleet of 1,000, on every blip.
   */
  sweepFreshness(nowMs: number): Backend[] {
    const stale: Backend[] = [];
    for (const b of this.backends.values()) {
      const fresh = b.load.hasFreshReport(nowMs);
      if (b.wasFresh && !fresh) stale.push(b);
      b.wasFresh = fresh;
      if (fresh) b.everFresh = true;
    }
    const quiet = stale.length > STALE_LINES;
    for (const b of stale) {
      this.events.emit('metrics-stale', { id: b.id, ageMs: b.load.reportAgeMs(nowMs), quiet });
    }
    return stale;
  }

  close(): void {
    if (this.pending !== undefined) clearImmediate(this.pending);
    this.pending = undefined;
    for (const b of this.backends.values()) b.close();
  }
}
