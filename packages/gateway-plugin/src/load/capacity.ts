/**
 * `c` of the expected wait (load/endpoint-load.ts): how many requests the
 * backend serves at once, >= 1. In order of trust:
 *
 * - reported: the agent's concurrencyLimit (configuration, kept when reports
 *   go stale; dropped by a scheduled report without one), else
 *   the agent's in-flight while requests were queued (every slot busy: a fact
 *   about the backend);
 * - learned: the Vegas/BBR-style estimate n × minLatency / latency from this
 *   gateway's completions (throughput × base service time = busy slots),
 *   tracked as a decaying peak;
 * - cohort: the other members' mean, when it is larger than what was learned
 *   (a member's reported figure counts in it only up to COHORT_CLAIM_RATIO ×
 *   what this gateway learned of that member: own());
 * - default: `defaultCapacity`.
 *
 * Written on completions and reports; `value()` and `source()` are pure.
 */
import type { CohortMembership } from './cohort';
import { SATURATION_LATENCY_RATIO, type ResolvedLoadOptions } from './load-options';
import type { ReportDigest } from './report-digest';
import type { LoadSnapshot } from './types';

export type CapacitySource = LoadSnapshot['capacitySource'];

/**
 * A reported capacity counts in the cohort's mean up to this many times what
 * this gateway learned of that backend (own(); a reported latency the same against
 * the service time measured, service-time.ts own()). The mean is the prior of every
 * other member without a report: one signed report of concurrencyLimit 100000
 * from one backend made an honest peer that had learned 8 slots score 100000,
 * its queue term vanished (wait 13.75 to 10.00 ms with 8 in flight), and it
 * took a queue it could not serve.
 */
export const COHORT_CLAIM_RATIO = 4;

export class Capacity {
  /** Decaying peak of capacity samples from this gateway's completions. */
  private learned: number | undefined;
  private learnedStampMs = 0;
  /** Capacity read off a report with a non-empty queue (every slot busy): a fact about the backend. */
  private observed: number | undefined;
  /** The last concurrencyLimit an agent reported: configuration, kept when reports go stale. */
  private reportedLimit: number | undefined;
  /** When this gateway last saw clear queueing (see learn). */
  private saturatedAtMs: number | undefined;

  constructor(
    private readonly o: ResolvedLoadOptions,
    private readonly membership: CohortMembership | undefined,
  ) {}

  onReport(d: ReportDigest, receivedAtMs: number): void {
    // The agent's configuration as it is now: a scheduled report without a limit withdraws the
    // last one (it outlived the agent's own change, and a single report's figure lasted for
    // good). An early report repeats the scheduled one's (protocol: `early`), so one without a
    // limit is no withdrawal.
    if (d.concurrencyLimit !== undefined || !d.early) this.reportedLimit = d.concurrencyLimit;
    if (d.capacityHint !== undefined) {
      if (d.capacityHintExact) this.observed = d.capacityHint;
      // A lower bound (requests served at once without queueing) also feeds the learned peak.
      this.raise(receivedAtMs, d.capacityHint);
    }
  }

  /**
   * One completion at concurrency n with latency L: busy slots ≈ throughput ×
   * base service time = (n / L) × minLatency (Little's law; TCP Vegas and BBR
   * estimate a path's capacity the same way). Below saturation this is ≈ n, a
   * lower bound; at saturation it is the slot count.
   */
  learn(nowMs: number, n: number, latencyMs: number, minLatencyMs: number | undefined): void {
    if (!(n >= 1)) return;
    let sample = n;
    if (minLatencyMs !== undefined && latencyMs > minLatencyMs && Number.isFinite(latencyMs)) {
      sample = (n * minLatencyMs) / latencyMs;
      // Clear queueing (latency well above the base at more than one request): this sample
      // measures the capacity itself, not a lower bound, so the cohort prior must not lift it.
      if (n >= 2 && latencyMs > minLatencyMs * SATURATION_LATENCY_RATIO) this.saturatedAtMs = nowMs;
    }
    this.raise(nowMs, sample);
  }

  /**
   * Forgets what this gateway learned (admit: a new incarnation); the agent's reported
   * figures stay, as its configuration: admit runs right after the report that brought
   * the backend back (registry.ts applyMetrics), and dropping them there lost that
   * report's limit for an interval. A scheduled report without one withdraws it
   * (onReport).
   */
  reset(): void {
    this.learned = undefined;
    this.saturatedAtMs = undefined;
  }

  /**
   * This backend's own figure for the cohort's mean (no prior, no default): a
   * reported figure only as far as this gateway has seen it hold, up to
   * COHORT_CLAIM_RATIO × the learned figure, and none before anything was
   * learned. The backend itself still scores its reported figure (value()).
   */
  own(): number | undefined {
    const claimed = this.reportedLimit ?? this.observed;
    const learned = this.learned;
    if (claimed === undefined || learned === undefined) return learned;
    const bound = COHORT_CLAIM_RATIO * learned;
    return claimed < bound ? claimed : bound;
  }

  /** The agent's concurrencyLimit, as reported (undefined: none). */
  reported(): number | undefined {
    return this.reportedLimit;
  }

  /** Concurrent slots, >= 1, at most maxCapacity. */
  value(): number {
    // One pass of origin() and raw() (this runs on every pick).
    let v = this.reportedLimit ?? this.observed;
    if (v === undefined) {
      const prior = this.prior();
      const learned = this.learned;
      v = learned !== undefined && (prior === undefined || learned >= prior) ? learned : prior;
    }
    if (v === undefined || !(v >= 1)) v = this.o.defaultCapacity;
    return v < this.o.maxCapacity ? v : this.o.maxCapacity;
  }

  /** Where value() comes from (for the snapshot). */
  source(): CapacitySource {
    const origin = this.origin();
    const v = this.raw(origin);
    return v === undefined || !(v >= 1) ? 'default' : origin;
  }

  private origin(): 'reported' | 'learned' | 'cohort' {
    if (this.reportedLimit !== undefined || this.observed !== undefined) return 'reported';
    // What this gateway learned is mostly a lower bound (concurrency served without
    // queueing); the cohort's mean is the prior. Taking the larger breaks a feedback loop:
    // a backend that happened to see little concurrency would otherwise look small, get
    // less traffic, and never see more. A backend truly smaller than the prior queues:
    // its Peak EWMA latency (which includes the queueing) says so at once, and once this
    // gateway has seen that queueing its learned figure stands without the prior.
    const prior = this.prior();
    const learned = this.learned;
    return learned !== undefined && (prior === undefined || learned >= prior)
      ? 'learned'
      : 'cohort';
  }

  private raw(origin: 'reported' | 'learned' | 'cohort'): number | undefined {
    if (origin === 'reported') return this.reportedLimit ?? this.observed;
    return origin === 'learned' ? this.learned : this.prior();
  }

  /** The other members' mean capacity, unless this gateway measured the capacity under queueing. */
  private prior(): number | undefined {
    const saturated =
      this.saturatedAtMs !== undefined &&
      this.learnedStampMs - this.saturatedAtMs <= this.o.capacityDecayMs;
    return saturated ? undefined : this.membership?.othersMeanCapacity();
  }

  private raise(nowMs: number, sample: number): void {
    if (!(sample >= 1) || !Number.isFinite(sample)) sample = 1;
    const prev = this.learned;
    if (prev === undefined || sample >= prev) {
      this.learned = sample;
    } else {
      const w = Math.exp(-Math.max(0, nowMs - this.learnedStampMs) / this.o.capacityDecayMs);
      this.learned = prev * w + sample * (1 - w);
    }
    this.learnedStampMs = nowMs;
  }
}
