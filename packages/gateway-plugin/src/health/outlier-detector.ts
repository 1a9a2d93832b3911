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

export class OutlierDetector {
  private readonly lastEjectionEndMs = new WeakMap<Backend, number>();

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
    if (backend.ejectedUntilMs !== undefined) return false;
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
    backend.ejectionTimer = setTimeout(() => this.restore(backend), durationMs);
    backend.ejectionTimer.unref();
    this.registry.recompute();
    this.events.emit('backend-ejected', {
      id: backend.id,
      durationMs,
      consecutiveFailures: failures,
    });
  }

  private restore(backend: Backend): void {
    backend.ejectionTimer = undefined;
    backend.ejectedUntilMs = undefined;
    backend.consecutiveFailures = 0;
    this.lastEjectionEndMs.set(backend, this.now());
    this.registry.recompute(); // back in the eligible set: slow start begins there
  }
}
