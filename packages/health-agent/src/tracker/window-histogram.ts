/**
 * A sliding-window latency histogram with fixed memory.
 *
 * The window is a ring of `slotCount` slots of `slotMs` each; a slot is reset
 * lazily when the clock enters it again, so there is no timer. Each slot holds
 * counts in log-spaced buckets (upper bound MIN_MS × GROWTH^i), the same idea
 * as HdrHistogram / Prometheus native histograms at coarse resolution: with a
 * growth of 1.2 and linear interpolation inside a bucket, a percentile is off
 * by at most ~10% of its value, and memory is slotCount × BUCKETS counters no
 * matter how many requests arrive.
 */
export const MIN_MS = 0.1;
export const GROWTH = 1.2;
/** 0.1 ms × 1.2^80 ≈ 215 s; slower requests land in the last bucket. */
export const BUCKETS = 81;
const LOG_GROWTH = Math.log(GROWTH);

export function bucketIndex(ms: number): number {
  if (!(ms > MIN_MS)) return 0;
  const i = Math.ceil(Math.log(ms / MIN_MS) / LOG_GROWTH - 1e-9);
  return i >= BUCKETS ? BUCKETS - 1 : i;
}

export function bucketUpperMs(i: number): number {
  return MIN_MS * Math.pow(GROWTH, i);
}

export interface WindowStats {
  count: number;
  /** Of `count`, those answered (not left by their client first): the error rate's denominator. */
  answered: number;
  errors: number;
  sumMs: number;
  /** Span of time the figures cover, ms (shorter than the window right after start). */
  spanMs: number;
  p50Ms: number;
  p90Ms: number;
  p99Ms: number;
}

export class WindowHistogram {
  private readonly slotEpoch: Float64Array;
  private readonly slotCount: Uint32Array;
  private readonly slotErrors: Uint32Array;
  private readonly slotAnswered: Uint32Array;
  private readonly slotSumMs: Float64Array;
  private readonly slotMaxMs: Float64Array;
  private readonly buckets: Uint32Array;
  private readonly merged = new Uint32Array(BUCKETS);

  constructor(
    readonly slotMs: number,
    readonly slots: number,
    private readonly startedAtMs: number,
  ) {
    this.slotEpoch = new Float64Array(slots).fill(-1);
    this.slotCount = new Uint32Array(slots);
    this.slotErrors = new Uint32Array(slots);
    this.slotAnswered = new Uint32Array(slots);
    this.slotSumMs = new Float64Array(slots);
    this.slotMaxMs = new Float64Array(slots);
    this.buckets = new Uint32Array(slots * BUCKETS);
  }

  /** `answered`: false for a request its client left before the answer (counted, never an error). */
  record(nowMs: number, latencyMs: number, error: boolean, answered = true): void {
    const epoch = Math.floor(nowMs / this.slotMs);
    const s = epoch % this.slots;
    if (this.slotEpoch[s] !== epoch) {
      this.slotEpoch[s] = epoch;
      this.slotCount[s] = 0;
      this.slotErrors[s] = 0;
      this.slotAnswered[s] = 0;
      this.slotSumMs[s] = 0;
      this.slotMaxMs[s] = 0;
      this.buckets.fill(0, s * BUCKETS, (s + 1) * BUCKETS);
    }
    this.slotCount[s]!++;
    if (error) this.slotErrors[s]!++;
    if (answered) this.slotAnswered[s]!++;
    this.slotSumMs[s]! += latencyMs;
    if (latencyMs > this.slotMaxMs[s]!) this.slotMaxMs[s] = latencyMs;
    this.buckets[s * BUCKETS + bucketIndex(latencyMs)]!++;
  }

  stats(nowMs: number): WindowStats {
    const epoch = Math.floor(nowMs / this.slotMs);
    const oldest = epoch - this.slots + 1;
    const merged = this.merged;
    merged.fill(0);
    let count = 0;
    let errors = 0;
    let answered = 0;
    let sumMs = 0;
    let maxMs = 0;
    for (let s = 0; s < this.slots; s++) {
      const e = this.slotEpoch[s]!;
      if (e < oldest || e > epoch || this.slotCount[s] === 0) continue;
      count += this.slotCount[s]!;
      errors += this.slotErrors[s]!;
      answered += this.slotAnswered[s]!;
      sumMs += this.slotSumMs[s]!;
      if (this.slotMaxMs[s]! > maxMs) maxMs = this.slotMaxMs[s]!;
      const base = s * BUCKETS;
      for (let b = 0; b < BUCKETS; b++) merged[b]! += this.buckets[base + b]!;
    }
    const windowStart = Math.max(oldest * this.slotMs, this.startedAtMs);
    const spanMs = Math.max(nowMs - windowStart, 1);
    return {
      count,
      answered,
      errors,
      sumMs,
      spanMs,
      p50Ms: this.quantile(0.5, count, maxMs),
      p90Ms: this.quantile(0.9, count, maxMs),
      p99Ms: this.quantile(0.99, count, maxMs),
    };
  }

  /** Nearest-rank quantile, interpolated linearly inside its bucket and capped at the window's maximum. */
  private quantile(q: number, count: number, maxMs: number): number {
    if (count === 0) return 0;
    const rank = Math.max(1, Math.ceil(q * count));
    let seen = 0;
    for (let b = 0; b < BUCKETS; b++) {
      const n = this.merged[b]!;
      if (n === 0) continue;
      if (seen + n >= rank) {
        const lower = b === 0 ? 0 : bucketUpperMs(b - 1);
        const upper = bucketUpperMs(b);
        const value = lower + ((upper - lower) * (rank - seen)) / n;
        return Math.min(value, maxMs);
      }
      seen += n;
    }
    return maxMs;
  }
}
