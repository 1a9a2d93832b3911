/**
 * Passive health: Envoy's outlier detection, consecutive-failure flavour.
 *
 * A connect error, reset, timeout (and a 5xx when failOn5xx) is a failure; a
 * response is a success and resets the count. `consecutiveFailures` in a row
 * eject the backend for baseEjectionMs × times ejected, capped at
 * maxEjectionMs (Envoy `base_ejection_time`, `max_ejection_time`). At most
 * maxEjectionPercent of the backends are ejected at once, but at least one may
 * be (Envoy ejects one host regardless of the percentage). When the ejection
 * expires the backend is eligible again and ramps up through slow start
 * (registry.ts starts the ramp when it re-enters the eligible set).
 *
 * Envoy decrements the times-ejected multiplier while a host stays healthy;
 * we reset it after a full maxEjectionMs without a new ejection, same intent.
 *
 * An ejection ends early when the backend went down and came back while
 * ejected, and that was a restart: a new incarnation, which ejection, only a
 * guess from failed requests, says nothing about. Kept out for the rest of
 * base × times ejected (up to minutes in a crash loop), a restarted backend
 * would wait long after it is serving. Envoy does the same with
 * `successful_active_health_check_uneject_host` (on by default). What counts:
 * - this gateway's own active check failed and passes again;
 * - the agent's verdict (its local probe) is `up` in a report of another
 *   agent run (`epochMs`) or another service process (`process.pid`) than
 *   the report at the ejection, whether or not it said `down` in between: a
 *   container or service restarted faster than the agent's probe interval
 *   (a crash under load ejects in milliseconds, the restart takes one) was
 *   never seen down, and served its whole ejection (30 s and up) while it
 *   answered. Without a report at the ejection to compare with, only a
 *   verdict that went `down` and came back `up` counts.
 * A verdict that only toggles within one run and one process is not a
 * restart: a backend answering every request with a fast 500 and its agent
 * alternating down/up every 300 ms was ejected 6 times in 15 s at 40 req/s,
 * each ejection over in ~0.5 s, and failed 30 client requests (2 when its
 * agent told the truth). A backend that never looked down to those signals
 * (it answers its probe but fails requests) serves its whole ejection too.
 *
 * The agent signs whatever its host tells it to, a new run and a new pid
 * included, so an early end is a trial: a backend ejected again before it
 * answered one request successfully since then serves that next ejection in
 * full, whatever its signals say. The times-ejected multiplier is kept
 * across an early end, as across any; an end on the active check alone
 * keeps what this gateway learned about the backend too (its error
 * penalty: registry.ts, Backend.keepFiguresOnEntry), as that proves a path,
 * not a new process.
 */
import type { BalancerEmitter } from '../events';
import type { Backend } from '../registry/backend';
import type { Registry } from '../registry/registry';

export interface OutlierConfig {
  consecutiveFailures: number;
  baseEjectionMs: number;
  maxEjectionMs: number;
  maxEjectionPercent: number;
}

/** While a backend is ejected, its health flags are re-read this often (see tick). */
export const RECOVERY_CHECK_MS = 250;

function lookedDown(b: Backend): boolean {
  return b.checkDown || b.verdictDown;
}

/** Which agent run and service process the backend's last report came from. */
interface Incarnation {
  epochMs: number | undefined;
  pid: number | undefined;
}

function incarnationOf(b: Backend): Incarnation {
  return { epochMs: b.lastReport?.epochMs, pid: b.lastReport?.process?.pid };
}

export class OutlierDetector {
  private readonly lastEjectionEndMs = new WeakMap<Backend, number>();
  /** Ejected backends this gateway's active check saw down during the ejection. */
  private readonly seenCheckDown = new WeakSet<Backend>();
  /** Ejected backends whose agent's verdict was `down` during the ejection. */
  private readonly seenVerdictDown = new WeakSet<Backend>();
  /** The agent run and service process of each ejected backend when it was ejected. */
  private readonly ejectedIncarnation = new WeakMap<Backend, Incarnation>();
  /** Ended an ejection early and has not answered a request successfully since. */
  private readonly onTrial = new WeakSet<Backend>();
  /** Ejected again while on trial: this ejection is served in full. */
  private readonly noEarlyEnd = new WeakSet<Backend>();

  constructor(
    private readonly config: OutlierConfig,
    private readonly registry: Registry,
    private readonly events: BalancerEmitter,
    private readonly now: () => number,
  ) {}

  onSuccess(backend: Backend): void {
    backend.consecutiveFailures = 0;
    this.onTrial.delete(backend);
  }

  /** Records a failure; returns true when it ejected the backend. */
  onFailure(backend: Backend): boolean {
    backend.failures++;
    backend.consecutiveFailures++;
    // A copy taken out of the registry (its id moved): its id's live entry is another.
    if (backend.retired || backend.ejectedUntilMs !== undefined) return false;
    if (backend.consecutiveFailures < this.config.consecutiveFailures) return false;
    if (!this.mayEject()) return false;
    this.eject(backend);
    return true;
  }

  private mayEject(): boolean {
    let total = 0;
    let ejected = 0;
    for (const b of this.registry.backends.values()) {
      total++;
      if (b.ejectedUntilMs !== undefined) ejected++;
    }
    if (ejected === 0) return true;
    return ((ejected + 1) / total) * 100 <= this.config.maxEjectionPercent;
  }

  private eject(backend: Backend): void {
    const nowMs = this.now();
    const lastEnd = this.lastEjectionEndMs.get(backend);
    if (lastEnd !== undefined && nowMs - lastEnd > this.config.maxEjectionMs)
      backend.timesEjected = 0;
    backend.timesEjected++;
    backend.ejectionsTotal++;
    const durationMs = Math.min(
      this.config.baseEjectionMs * backend.timesEjected,
      this.config.maxEjectionMs,
    );
    backend.ejectedUntilMs = nowMs + durationMs;
    const failures = backend.consecutiveFailures;
    // Failed again after an early end without one success in between: that "restart"
    // changed nothing, and its signals do not end this ejection.
    this.noEarlyEnd.delete(backend);
    if (this.onTrial.has(backend)) this.noEarlyEnd.add(backend);
    this.onTrial.delete(backend);
    backend.keepFiguresOnEntry = false;
    this.seenCheckDown.delete(backend);
    this.seenVerdictDown.delete(backend);
    this.ejectedIncarnation.set(backend, incarnationOf(backend));
    this.noteDown(backend);
    this.arm(backend, nowMs);
    this.registry.recompute();
    this.events.emit('backend-ejected', {
      id: backend.id,
      durationMs,
      consecutiveFailures: failures,
    });
  }

  /** The next look at an ejected backend: a recovery check, or the end of the ejection. */
  private arm(backend: Backend, nowMs: number): void {
    const left = (backend.ejectedUntilMs ?? nowMs) - nowMs;
    const delayMs = left < RECOVERY_CHECK_MS ? (left > 0 ? left : 0) : RECOVERY_CHECK_MS;
    backend.ejectionTimer = setTimeout(() => this.tick(backend), delayMs);
    backend.ejectionTimer.unref();
  }

  private noteDown(backend: Backend): void {
    if (backend.checkDown) this.seenCheckDown.add(backend);
    if (backend.verdictDown) this.seenVerdictDown.add(backend);
  }

  private tick(backend: Backend): void {
    backend.ejectionTimer = undefined;
    const until = backend.ejectedUntilMs;
    if (until === undefined) return;
    const nowMs = this.now();
    this.noteDown(backend);
    if (!lookedDown(backend) && !this.noEarlyEnd.has(backend)) {
      // Restarted: this gateway saw it down and back, or the agent reports another run or
      // another process than at the ejection.
      const reincarnated = this.reincarnated(backend);
      if (this.seenCheckDown.has(backend) || reincarnated) {
        return this.restore(backend, true, !reincarnated);
      }
    }
    if (nowMs >= until) return this.restore(backend, false);
    this.arm(backend, nowMs);
  }

  /**
   * The last report is of another agent run or another service process than the one at the
   * ejection; with no report then (a gateway that had heard none yet), only after the agent's
   * verdict said `down` while it was ejected: its first report is no restart.
   */
  private reincarnated(backend: Backend): boolean {
    const then = this.ejectedIncarnation.get(backend);
    const now = incarnationOf(backend);
    const another =
      (now.epochMs !== undefined && now.epochMs !== then?.epochMs) ||
      (now.pid !== undefined && now.pid !== then?.pid);
    return another && (then?.epochMs !== undefined || this.seenVerdictDown.has(backend));
  }

  /**
   * Ends the ejection: `early` on a restart (a trial, see the top of this file);
   * `sameProcess` when only this gateway's active check vouches for it (no report of
   * another run or process).
   */
  private restore(backend: Backend, early: boolean, sameProcess = false): void {
    if (backend.ejectionTimer) clearTimeout(backend.ejectionTimer);
    backend.ejectionTimer = undefined;
    this.seenCheckDown.delete(backend);
    this.seenVerdictDown.delete(backend);
    this.ejectedIncarnation.delete(backend);
    this.noEarlyEnd.delete(backend);
    if (early) this.onTrial.add(backend);
    backend.keepFiguresOnEntry = sameProcess;
    backend.ejectedUntilMs = undefined;
    backend.consecutiveFailures = 0;
    this.lastEjectionEndMs.set(backend, this.now());
    this.registry.recompute(); // back in the eligible set: slow start begins there
  }
}
