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
 * An ejection ends early when the backend's own health signals show it went
 * down and came back while ejected: the agent's verdict (its local probe) or
 * the gateway's active check was `down` and is `up` again. That is a restart,
 * a new incarnation, and ejection is only a guess from failed requests: kept
 * out for the rest of base × times ejected (up to minutes in a crash loop), a
 * restarted backend would wait long after it is serving. Envoy does the same
 * with `successful_active_health_check_uneject_host` (on by default). A
 * backend that never looked down to those signals (it answers its probe but
 * fails requests) serves its whole ejection.
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

export class OutlierDetector {
  private readonly lastEjectionEndMs = new WeakMap<Backend, number>();
  /** Ejected backends whose health signals said `down` during the ejection. */
  private readonly seenDown = new WeakSet<Backend>();

  constructor(
    private readonly config: OutlierConfig,
    private readonly registry: Registry,
    private readonly events: BalancerEmitter,
    private readonly now: () => number,
  ) {}

  onSuccess(backend: Backend): void {
    backend.consecutiveFailures = 0;
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
    this.seenDown.delete(backend);
    if (lookedDown(backend)) this.seenDown.add(backend);
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

  private tick(backend: Backend): void {
    backend.ejectionTimer = undefined;
    const until = backend.ejectedUntilMs;
    if (until === undefined) return;
    const nowMs = this.now();
    if (lookedDown(backend)) this.seenDown.add(backend);
    else if (this.seenDown.has(backend)) return this.restore(backend); // down, then up: restarted
    if (nowMs >= until) return this.restore(backend);
    this.arm(backend, nowMs);
  }

  private restore(backend: Backend): void {
    if (backend.ejectionTimer) clearTimeout(backend.ejectionTimer);
    backend.ejectionTimer = undefined;
    this.seenDown.delete(backend);
    backend.ejectedUntilMs = undefined;
    backend.consecutiveFailures = 0;
    this.lastEjectionEndMs.set(backend, this.now());
    this.registry.recompute(); // back in the eligible set: slow start begins there
  }
}
