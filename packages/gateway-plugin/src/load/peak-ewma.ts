/**
 * Peak EWMA of latency, after Finagle's `PeakEwma` (finagle-core
 * loadbalancer/PeakEwma.scala) and tower's `PeakEwma` (tower/src/load/
 * peak_ewma.rs): a sample above the estimate replaces it at once (peaks count
 * immediately), a sample below it is blended in with a weight that depends on
 * the time since the previous sample, `w = exp(-dtMs / decayMs)`, because the
 * samples form an unevenly spaced series (Eckner, "Algorithms for unevenly
 * spaced time series", 2012).
 *
 * One difference, on purpose: on read, Finagle and tower decay the estimate
 * towards 0 so an idle, once-slow host gets probed again. A zero estimate makes
 * a host look free (docs/architecture.md, rule 2: a prototype that
 * scored unknown latency as zero sent its first 70 requests to the slowest
 * backend), so we decay a peak towards the windowed minimum latency instead:
 * the spike is forgotten, the host's demonstrated best is not.
 */
/** Weight of one sample in the plain mode's variance of the samples (about the last 32). */
const VARIANCE_WEIGHT = 1 / 32;

export class PeakEwma {
  private costMs = 0;
  private stampMs = 0;
  private samples = 0;
  /** Windowed minimum over two alternating windows of `minWindowMs` (like BBR's min RTT filter). */
  private minCurrentMs = Infinity;
  private minPreviousMs = Infinity;
  private minWindowStartMs = 0;
  /** Plain mode: the variance of the samples around the estimate (VARIANCE_WEIGHT per sample). */
  private variance = 0;
  /**
   * Plain mode: the sum of the squared weights the estimate gives its samples,
   * the variance of the estimate in units of one sample's (1 after the first,
   * about 1 / (2 × samples per decayMs) in a steady stream).
   */
  private weightSq = 0;

  /**
   * @param peak false makes it a plain time-weighted EWMA: samples above the
   *   estimate are blended like the others and a read does not decay (a mean,
   *   not a peak detector).
   */
  constructor(
    private readonly decayMs: number,
    private readonly minWindowMs: number,
    private readonly peak = true,
  ) {}

  get count(): number {
    return this.samples;
  }

  /** Time of the last sample, or undefined before the first. */
  get lastSampleMs(): number | undefined {
    return this.samples === 0 ? undefined : this.stampMs;
  }

  observe(nowMs: number, latencyMs: number): void {
    // Callers pass measured durations; guard anyway so no NaN or negative value enters the state.
    const rtt = latencyMs > 0 && Number.isFinite(latencyMs) ? latencyMs : 0;
    if (this.samples === 0) {
      this.costMs = rtt;
      this.minWindowStartMs = nowMs;
      this.variance = 0;
      this.weightSq = 1;
    } else if (this.peak && rtt > this.costMs) {
      this.costMs = rtt;
    } else {
      const w = Math.exp(-Math.max(0, nowMs - this.stampMs) / this.decayMs);
      const a = 1 - w;
      const diff = rtt - this.costMs;
      this.costMs = this.costMs * w + rtt * a;
      if (!this.peak) {
        // The samples' spread, per sample (West's incremental variance at a fixed weight): a
        // time weight would collapse it to the last sample after a gap, just when the estimate
        // rests on that one sample. weightSq follows the estimate's own recursion, squared.
        const v = VARIANCE_WEIGHT;
        this.variance = (1 - v) * (this.variance + v * diff * diff);
        this.weightSq = w * w * this.weightSq + a * a;
      }
    }
    this.stampMs = Math.max(this.stampMs, nowMs);
    this.samples++;
    if (nowMs - this.minWindowStartMs >= this.minWindowMs) {
      // Two or more windows passed without a sample: the previous minimum is out of date too.
      this.minPreviousMs =
        nowMs - this.minWindowStartMs >= 2 * this.minWindowMs ? Infinity : this.minCurrentMs;
      this.minCurrentMs = Infinity;
      this.minWindowStartMs = nowMs;
    }
    if (rtt < this.minCurrentMs) this.minCurrentMs = rtt;
  }

  /**
   * Plain mode: the standard error of the estimate relative to it, from the
   * samples' spread and how many of them it rests on (0 before two samples).
   */
  relativeError(): number {
    if (this.samples < 2 || !(this.costMs > 0)) return 0;
    return Math.sqrt(this.variance * this.weightSq) / this.costMs;
  }

  /** Forgets every sample: the backend behind it is a new incarnation (restarted, re-admitted). */
  reset(): void {
    this.costMs = 0;
    this.variance = 0;
    this.weightSq = 0;
    this.stampMs = 0;
    this.samples = 0;
    this.minCurrentMs = Infinity;
    this.minPreviousMs = Infinity;
    this.minWindowStartMs = 0;
  }

  /** The lowest latency seen over the last one to two windows; undefined before the first sample. */
  minMs(): number | undefined {
    if (this.samples === 0) return undefined;
    const m = Math.min(this.minCurrentMs, this.minPreviousMs);
    return m === Infinity ? this.costMs : m;
  }

  /** The estimate at `nowMs`: a peak fades towards the windowed minimum with the time since the last sample. */
  valueMs(nowMs: number): number | undefined {
    if (this.samples === 0) return undefined;
    if (!this.peak) return this.costMs;
    const floor = Math.min(this.minCurrentMs, this.minPreviousMs, this.costMs);
    const w = Math.exp(-Math.max(0, nowMs - this.stampMs) / this.decayMs);
    return floor + (this.costMs - floor) * w;
  }
}
