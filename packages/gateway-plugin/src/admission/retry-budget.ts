/**
 * A retry budget (Finagle `RetryBudget`, Envoy `retry_budget`): retries may
 * add at most `ratio` of the requests seen over a sliding window, plus a small
 * floor per second so a quiet gateway can still retry. Without it, a backend
 * failing under load turns every request into 1 + maxRetries requests and the
 * retries themselves become the overload (a retry storm).
 *
 * The window is a ring of one-second buckets: O(1) per request, no allocation.
 */
export interface RetryBudgetConfig {
  budgetRatio: number;
  minRetriesPerSec: number;
  budgetWindowMs: number;
}

const BUCKET_MS = 1000;

export class RetryBudget {
  private readonly requests: Float64Array;
  private readonly retries: Float64Array;
  private headBucket = 0;

  constructor(
    private readonly config: RetryBudgetConfig,
    private readonly now: () => number,
  ) {
    const buckets = Math.max(1, Math.ceil(config.budgetWindowMs / BUCKET_MS));
    this.requests = new Float64Array(buckets);
    this.retries = new Float64Array(buckets);
    this.headBucket = Math.floor(now() / BUCKET_MS);
  }

  /** Counts an original (first-attempt) request. */
  onRequest(): void {
    this.requests[this.advance()]! += 1;
  }

  /** Spends one retry if the budget allows; returns false when it is exhausted. */
  tryRetry(): boolean {
    const slot = this.advance();
    let requests = 0;
    let retries = 0;
    for (let i = 0; i < this.requests.length; i++) {
      requests += this.requests[i]!;
      retries += this.retries[i]!;
    }
    const windowSec = (this.requests.length * BUCKET_MS) / 1000;
    const allowed = this.config.minRetriesPerSec * windowSec + this.config.budgetRatio * requests;
    if (retries + 1 > allowed) return false;
    this.retries[slot]! += 1;
    this.spentBucket = this.headBucket;
    return true;
  }

  /** The second (bucket number) of the last retry spent: refund() gives it back there. */
  private spentBucket = -1;

  /**
   * Gives back the retry tryRetry() just spent, in the same turn of the event loop: the
   * retry found no backend to go to (every one tried, or saturated) and never happened.
   */
  refund(): void {
    // Where it was spent, not where the clock is now: the pick between may have crossed
    // into the next second, whose bucket holds none of it.
    this.advance();
    const n = this.retries.length;
    if (this.spentBucket < 0 || this.spentBucket <= this.headBucket - n) return;
    const slot = this.spentBucket % n;
    if (this.retries[slot]! > 0) this.retries[slot]! -= 1;
    this.spentBucket = -1;
  }

  /** Moves the ring to the current second, zeroing buckets that fell out of the window. */
  private advance(): number {
    const bucket = Math.floor(this.now() / BUCKET_MS);
    const n = this.requests.length;
    if (bucket > this.headBucket) {
      const steps = Math.min(bucket - this.headBucket, n);
      for (let i = 1; i <= steps; i++) {
        const slot = (this.headBucket + i) % n;
        this.requests[slot] = 0;
        this.retries[slot] = 0;
      }
      this.headBucket = bucket;
    }
    return this.headBucket % n;
  }
}
