/**
 * The penalty of the expected wait (load/endpoint-load.ts): a product of
 * bounded factors (each >= 1), capped at `maxPenaltyFactor`, then multiplied
 * by the factor of an allowed unsigned report while it counts. Each factor is a
 * `LoadPenalty` with its own state, fed by the write paths; endpoint-load.ts
 * lists the factors in use. A new signal that should make a backend look
 * busier is one more `LoadPenalty` and one more entry in that list.
 */
import type { ReportDigest } from './report-digest';

export interface LoadPenalty {
  /** A request ended: ok, or failed, or answered "overloaded" (neither). */
  onRequestEnd?(nowMs: number, ok: boolean, overloaded: boolean): void;
  /**
   * A scheduled report arrived (early reports repeat the last scheduled one's
   * figures and are not passed on). `share` is this gateway's share of the
   * backend's traffic, 0..1 (load/hidden-load.ts).
   */
  onReport?(d: ReportDigest, share: number): void;
  /** The backend was (re-)admitted: forget what described the previous incarnation. */
  reset?(): void;
  /**
   * The factor at `nowMs`, >= 1; `r` is the fresh report (undefined when none
   * is fresh). Runs on every pick: no allocation, no state change.
   */
  factor(nowMs: number, r: ReportDigest | undefined, share: number): number;
}

export class Penalties {
  /** Factor of the last unsigned report and until when it counts (onUnsignedReport). */
  private unsignedFactor = 1;
  private unsignedUntilMs = -Infinity;

  constructor(
    private readonly maxFactor: number,
    private readonly list: readonly LoadPenalty[],
  ) {}

  onRequestEnd(nowMs: number, ok: boolean, overloaded: boolean): void {
    const list = this.list;
    for (let i = 0; i < list.length; i++) list[i]!.onRequestEnd?.(nowMs, ok, overloaded);
  }

  onReport(d: ReportDigest, share: number): void {
    const list = this.list;
    for (let i = 0; i < list.length; i++) list[i]!.onReport?.(d, share);
  }

  reset(): void {
    const list = this.list;
    for (let i = 0; i < list.length; i++) list[i]!.reset?.();
  }

  /**
   * An unsigned report (registry/unsigned-report.ts bounds `factor`): it
   * multiplies the capped penalty until `untilMs`, and nothing else of it counts.
   */
  onUnsignedReport(factor: number, untilMs: number): void {
    this.unsignedFactor = factor >= 1 && factor < Infinity ? factor : 1;
    this.unsignedUntilMs = untilMs;
  }

  factor(nowMs: number, r: ReportDigest | undefined, share: number): number {
    const list = this.list;
    let f = 1;
    for (let i = 0; i < list.length; i++) f *= list[i]!.factor(nowMs, r, share);
    if (!(f < this.maxFactor)) f = this.maxFactor;
    return nowMs <= this.unsignedUntilMs ? f * this.unsignedFactor : f;
  }
}
