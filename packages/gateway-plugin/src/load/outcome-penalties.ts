/**
 * Penalties from this gateway's own answers (load/penalties.ts): the error
 * rate and the share of "overloaded" answers (503 + Retry-After: the backend
 * is alive and says it is full, not an error). Both are count-based EWMAs
 * (one step per answer), decayed by time on read so they are forgotten when
 * traffic stops; both are forgotten when the backend is re-admitted.
 */
import { ERROR_EWMA_ALPHA, OVERLOAD_EWMA_ALPHA, type ResolvedLoadOptions } from './load-options';
import type { LoadPenalty } from './penalties';
import type { ReportDigest } from './report-digest';

/** A count-based EWMA of a yes/no outcome, 0..1, decaying with time since the last outcome. */
class DecayingShare {
  private share = 0;
  private stampMs = 0;

  constructor(
    private readonly alpha: number,
    private readonly decayMs: number,
  ) {}

  add(nowMs: number, hit: boolean): void {
    this.share = this.value(nowMs) * (1 - this.alpha) + (hit ? this.alpha : 0);
    this.stampMs = nowMs;
  }

  reset(): void {
    this.share = 0;
  }

  value(nowMs: number): number {
    if (this.share === 0) return 0;
    return this.share * Math.exp(-Math.max(0, nowMs - this.stampMs) / this.decayMs);
  }
}

/**
 * 1 + errorPenalty × the error rate: this gateway's, or the fresh report's
 * weighted by this gateway's share of the traffic, whichever is higher. An
 * overloaded answer is not a failure: it leaves the rate alone.
 */
export class ErrorPenalty implements LoadPenalty {
  private readonly errors: DecayingShare;

  constructor(private readonly o: ResolvedLoadOptions) {
    this.errors = new DecayingShare(ERROR_EWMA_ALPHA, o.decayMs);
  }

  onRequestEnd(nowMs: number, ok: boolean, overloaded: boolean): void {
    if (!overloaded) this.errors.add(nowMs, !ok);
  }

  reset(): void {
    this.errors.reset();
  }

  factor(nowMs: number, r: ReportDigest | undefined, share: number): number {
    let errors = this.errors.value(nowMs);
    if (r !== undefined) {
      const reported = r.errorRate * share;
      if (reported > errors) errors = reported;
    }
    return 1 + this.o.errorPenalty * errors;
  }
}

/** 1 + overloadPenalty × the decaying share of recent answers that were "overloaded". */
export class OverloadPenalty implements LoadPenalty {
  private readonly overloaded: DecayingShare;

  constructor(private readonly o: ResolvedLoadOptions) {
    this.overloaded = new DecayingShare(OVERLOAD_EWMA_ALPHA, o.overloadDecayMs);
  }

  onRequestEnd(nowMs: number, _ok: boolean, overloaded: boolean): void {
    this.overloaded.add(nowMs, overloaded);
  }

  reset(): void {
    this.overloaded.reset();
  }

  /** The overload signal 0..1 (the snapshot's `overload`). */
  value(nowMs: number): number {
    return this.overloaded.value(nowMs);
  }

  factor(nowMs: number): number {
    const overload = this.overloaded.value(nowMs);
    return overload > 0 ? 1 + this.o.overloadPenalty * overload : 1;
  }
}
