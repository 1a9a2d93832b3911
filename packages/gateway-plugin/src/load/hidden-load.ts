/**
 * Hidden load: the part of `o` in the expected wait (load/endpoint-load.ts)
 * this gateway did not send, i.e. what the agent sees minus this gateway's
 * in-flight, and this gateway's share of the backend's traffic (which scales
 * the report's penalties, load/report-penalty.ts). Counts only while the
 * report is fresh.
 *
 * - Other gateways' share follows this gateway's in-flight at once (the
 *   cohort's ratio, load/cohort.ts), without the report's lag.
 * - The excess over that proportion (a batch job, a client that bypasses the
 *   gateways) is held from the report.
 * - The report's instant snapshot fades into the interval's mean as its
 *   requests drain.
 *
 * Written on request starts and ends (the in-flight integral) and on reports;
 * `value()` is pure.
 */
import type { CohortMembership } from './cohort';
import { HIDDEN_EWMA_ALPHA, MAX_EXPECTED_WAIT_MS, MAX_HIDDEN_RATIO } from './load-options';
import type { ReportDigest } from './report-digest';

export class HiddenLoad {
  /** ∫ local in-flight dt since the last report, for the local mean concurrency (Little). */
  private areaMs = 0;
  private areaStartMs: number | undefined;
  private areaLastMs = 0;
  /**
   * EWMA over reports of the snapshot's excess (the agent's outstanding minus this gateway's
   * in-flight at the same instant), when the agent sends no traffic figures.
   */
  private hiddenSnapshotEwma: number | undefined;
  /** The report-time snapshot, the interval mean, and how fast one gives way to the other. */
  private snapshot = 0;
  private mean = 0;
  /** This gateway's mean in-flight over the last report interval. */
  private localMean = 0;
  private tauMs = 1;
  private shareOfTraffic = 1;

  constructor(private readonly membership: CohortMembership | undefined) {}

  /** This gateway's share of the backend's traffic over the last interval, 0..1 (1 if unknown). */
  get share(): number {
    return this.shareOfTraffic;
  }

  /**
   * Adds local in-flight × elapsed time to the running integral; call before
   * in-flight changes. A write path: it also lets the cohort refresh its ratio.
   */
  accumulate(nowMs: number, inFlight: number): void {
    this.membership?.refreshRatio(nowMs);
    if (this.areaStartMs === undefined) {
      this.areaStartMs = nowMs;
      this.areaLastMs = nowMs;
      return;
    }
    if (nowMs > this.areaLastMs) {
      this.areaMs += inFlight * (nowMs - this.areaLastMs);
      this.areaLastMs = nowMs;
    }
  }

  /**
   * A scheduled report. The report's queue is an instant; a request lasts a
   * service time, a report an interval (100× longer or more). Held for a whole
   * interval, a momentary spike sends every gateway away from the backend at
   * once and onto the others: herding, measured in
   * strategies/queueing-sim.test.ts with three gateways. So the snapshot counts
   * only while its requests drain (setDrainTime); after that the estimate is
   * the interval's mean: the agent's mean concurrency (Little's law, rps ×
   * latency; else an EWMA of its snapshots) minus this gateway's mean
   * in-flight over the same interval (the integral kept by accumulate).
   *
   * @returns true when the report has an outstanding figure: the caller then
   *   sets the snapshot's drain time.
   */
  onScheduledReport(d: ReportDigest, nowMs: number, inFlight: number): boolean {
    this.accumulate(nowMs, inFlight);
    const start = this.areaStartMs ?? nowMs;
    const localMean = nowMs > start ? this.areaMs / (nowMs - start) : inFlight;
    this.areaMs = 0;
    this.areaStartMs = nowMs;
    this.areaLastMs = nowMs;
    if (d.outstanding === undefined) {
      this.snapshot = 0;
      this.mean = 0;
      this.localMean = 0;
      this.membership?.setFlow(0, 0);
      this.membership?.refreshRatio(nowMs);
      this.shareOfTraffic = 1;
      return false;
    }
    const snapshot = d.outstanding - d.localInFlightAtReport;
    // The hidden mean. With the agent's mean over the interval (Little's law), that minus this
    // gateway's mean over it. With instants only (a gauge agent), the mean of the instants'
    // excess: the agent's snapshot and this gateway's in-flight are of the same moment, so a lone
    // gateway's requests cancel in every sample. An average of the snapshots less this gateway's
    // interval mean did not: a report that found this gateway's requests of the last few ms
    // (a mean of almost 0 over the second) held them as hidden load for the whole interval.
    // In cpu-sim.test.ts's benchmark fleet (one slot each) that phantom made one identical
    // backend look a service time slower at random, for a second at a time.
    let mean: number;
    if (d.meanOutstanding !== undefined) {
      mean = d.meanOutstanding - localMean;
    } else {
      const prev = this.hiddenSnapshotEwma;
      this.hiddenSnapshotEwma =
        prev === undefined ? snapshot : prev + HIDDEN_EWMA_ALPHA * (snapshot - prev);
      mean = this.hiddenSnapshotEwma;
    }
    this.mean = mean > 0 ? mean : 0;
    // This gateway's part of the agent's mean (local + hidden); all of it when nothing is hidden.
    this.shareOfTraffic = this.mean > 0 ? localMean / (localMean + this.mean) : 1;
    this.snapshot = snapshot > 0 ? snapshot : 0;
    this.localMean = localMean;
    this.membership?.setFlow(this.mean, localMean);
    this.membership?.refreshRatio(nowMs);
    return true;
  }

  /**
   * An early report: the agent saw the backend's outstanding requests jump
   * since its last report (packages/health-agent/src/early-report.ts). The jump
   * is taken at once: the report's snapshot replaces the transient part, and
   * fades as its requests drain like a scheduled one's. Everything averaged
   * over an interval stays as the last scheduled report left it: the hidden
   * mean, this gateway's mean in-flight and its integral (a mean over the few
   * ms since the last report would be noise, and would reset the interval the
   * next scheduled report is judged over), the traffic share and the cohort
   * flow (so the other gateways' share keeps following their in-flight).
   *
   * @returns true when the report has an outstanding figure (as onScheduledReport).
   */
  onEarlyReport(d: ReportDigest): boolean {
    if (d.outstanding === undefined) return false;
    const snapshot = d.outstanding - d.localInFlightAtReport;
    this.snapshot = snapshot > 0 ? snapshot : 0;
    return true;
  }

  /** Time constant of the snapshot's fade: its drain time, s × max(1, outstanding / c). */
  setDrainTime(serviceTimeMs: number, capacity: number, outstanding: number): void {
    const tau = serviceTimeMs * Math.max(1, outstanding / capacity);
    this.tauMs = tau > 1e-3 && tau < MAX_EXPECTED_WAIT_MS ? tau : MAX_EXPECTED_WAIT_MS;
  }

  /**
   * The part of value() known only as a mean over the last interval: the
   * steady excess, load that does not follow the gateways. Its spread counts
   * in the queue term (endpoint-load.ts, expectedExcess); the proportional
   * part follows this gateway's own count and the transient is a snapshot.
   */
  steadyPart(r: ReportDigest | undefined): number {
    if (r === undefined || r.outstanding === undefined) return 0;
    return this.steady(this.membership?.hiddenRatio() ?? 0);
  }

  /** The steady excess for the cohort's `ratio`: the hidden mean beyond what follows the gateways. */
  private steady(ratio: number): number {
    const steady = this.mean - ratio * this.localMean;
    return steady > 0 ? steady : 0;
  }

  /** Hidden requests at `nowMs`; `r` is the fresh report (none: 0), `inFlight` this gateway's now. */
  value(r: ReportDigest | undefined, nowMs: number, inFlight: number): number {
    if (r === undefined || r.outstanding === undefined) return 0;
    const age = nowMs - r.receivedAtMs;
    const ratio = this.membership?.hiddenRatio() ?? 0;
    const proportional = (ratio < MAX_HIDDEN_RATIO ? ratio : MAX_HIDDEN_RATIO) * inFlight;
    const transient = this.snapshot - this.mean;
    const hidden =
      proportional +
      this.steady(ratio) +
      (age > 0 ? transient * Math.exp(-age / this.tauMs) : transient);
    // A snapshot far below the interval's mean outweighs the rest where the steady part is
    // clamped (the cohort's ratio already takes that mean): no fewer than no hidden requests.
    // A backend with its own key reported 0 in flight with rps 1e7 x 1 s: an expected wait of
    // -50 ms, below any idle backend's, and 59-70% of the picks where it had 50%.
    return hidden > 0 ? hidden : 0;
  }
}
