/**
 * How fast backends finish requests, for `Retry-After` on a saturated 503:
 * with N requests ahead and R completions per second, a new request could
 * start in about N / R seconds. Counted in a ring of one-second buckets over
 * the last few seconds; injectable clock.
 */
const BUCKET_MS = 1000;
const MAX_RETRY_AFTER_SEC = 60;

export class DrainRate {
  private readonly buckets: Float64Array;
  private headBucket: number;

  constructor(
    private readonly now: () => number,
    windowSec = 5,
  ) {
    this.buckets = new Float64Array(windowSec);
    this.headBucket = Math.floor(now() / BUCKET_MS);
  }

  onCompletion(): void {
    this.buckets[this.advance()]! += 1;
  }

  /** Completions per second over the window. */
  perSecond(): number {
    this.advance();
    let sum = 0;
    for (const v of this.buckets) sum += v;
    return sum / this.buckets.length;
  }

  /**
   * Seconds until `ahead` requests have drained at the current rate, rounded
   * up and clamped to [1, 60]; `fallbackSec` when nothing completes at all.
   */
  retryAfterSec(ahead: number, fallbackSec: number): number {
    const rate = this.perSecond();
    const sec = rate > 0 ? Math.ceil((ahead + 1) / rate) : fallbackSec;
    return Math.min(MAX_RETRY_AFTER_SEC, Math.max(1, Math.ceil(sec)));
  }

  private advance(): number {
    const bucket = Math.floor(this.now() / BUCKET_MS);
    const n = this.buckets.length;
    if (bucket > this.headBucket) {
      const steps = Math.min(bucket - this.headBucket, n);
      for (let i = 1; i <= steps; i++) this.buckets[(this.headBucket + i) % n] = 0;
      this.headBucket = bucket;
    }
    return this.headBucket % n;
  }
}
