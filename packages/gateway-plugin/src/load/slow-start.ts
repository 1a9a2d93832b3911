/**
 * Slow start: a backend (re-)entering the eligible set ramps up linearly from
 * `slowStartMinFactor` to 1 over `slowStartMs`, as Envoy's slow start with
 * aggression 1.0. The factor is a pure function of the admission time: reading
 * it changes nothing (a finished ramp is recognised by its age, not cleared).
 */
export class SlowStart {
  private admittedAtMs: number | undefined;

  constructor(
    private readonly slowStartMs: number,
    private readonly minFactor: number,
  ) {}

  /** Starts (or restarts) the ramp; slowStartMs 0 disables it. */
  admit(nowMs: number): void {
    this.admittedAtMs = this.slowStartMs > 0 ? nowMs : undefined;
  }

  /** 0 < factor <= 1 while ramping up, 1 when settled. */
  factor(nowMs: number): number {
    if (this.admittedAtMs === undefined) return 1;
    const elapsed = nowMs - this.admittedAtMs;
    if (elapsed >= this.slowStartMs) return 1;
    const ramp = Math.max(0, elapsed) / this.slowStartMs;
    return this.minFactor + (1 - this.minFactor) * ramp;
  }
}
