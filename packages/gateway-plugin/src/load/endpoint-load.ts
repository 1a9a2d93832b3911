/**
 * The per-backend load estimate and the default strategy's metric: the
 * expected time until a new request sent now would finish (docs/architecture.md,
 * rule 1: "the backend that will serve it soonest"). It fuses two kinds of signal:
 *
 * - local, instant: this gateway's in-flight count and the latencies it
 *   observes (Peak EWMA as Finagle and Linkerd for latencyMs(); a mean of
 *   de-queued samples for the service time);
 * - global, up to one interval old: the agent's report (queue, concurrency
 *   limit, latency, CPU and memory utilization, health verdict).
 *
 * Model. With `c` concurrent slots, service time `s` and `o` requests
 * outstanding, a new request waits for `max(0, o + 1 - c)` requests ahead of
 * it to drain at `c / s` per ms, so
 *
 *     wait = s × (1 + max(0, o + 1 − c) / c + β × min(o, c) / c) × penalty
 *
 * (a deterministic M/D/c approximation; β, `utilizationWeight`, prefers the
 * less busy of two backends that both have a free slot, rule 3, "equal
 * expected wait"). Latency × (in-flight + 1) alone is the special case c = 1
 * and, as rule 4 records, sends a five times slower backend a few percent of
 * the traffic while faster ones have idle slots: capacity fixes that.
 *
 * - `o` = local in-flight now + hidden load (what the agent sees minus what
 *   this gateway sent): other gateways' share follows this gateway's in-flight
 *   at once (the cohort's ratio), the excess (a batch job) is held from the
 *   report, the report's instant snapshot fades as it drains (hiddenOf,
 *   estimateHidden). Hidden load counts only while the report is fresh.
 * - `c` = the reported concurrencyLimit; else learned: the agent's in-flight
 *   while requests were queued (every slot busy), or the Vegas/BBR-style
 *   estimate n × minLatency / latency from this gateway's completions
 *   (throughput × base service time = busy slots), tracked as a decaying peak.
 * - `s` = a 1 s EWMA of this gateway's latencies with the queueing part taken
 *   out (latency × c / n when n > c) when recent, else the reported latency
 *   (de-queued the same way) while fresh, else the cohort's mean (never zero:
 *   a backend with no data must not look free), else `defaultLatencyMs`.
 * - penalty: bounded factors for CPU and memory near saturation and an agent
 *   verdict `degraded` (each weighted by this gateway's share of the
 *   backend's traffic, so G gateways react as one), error rate, and the share
 *   of recent answers that were "overloaded" (503 + Retry-After: not errors),
 *   capped at `maxPenaltyFactor`.
 *
 * docs/strategies.md explains each choice with the simulation that forced it.
 *
 * A report older than its freshness limit stops counting: the backend falls
 * back to local signals, it does not vanish.
 */
import type { BackendState, HealthVerdict, MetricsReport } from '@loadwise/protocol';
import type { EndpointLoad } from '../strategies/types';
import { joinCohort, type CohortMembership, type LoadCohort } from './cohort';
import { optionBag } from './option-check';
import { PeakEwma } from './peak-ewma';
import {
  ERROR_EWMA_ALPHA,
  HIDDEN_EWMA_ALPHA,
  MAX_EXPECTED_WAIT_MS,
  MAX_HIDDEN_RATIO,
  MIN_SERVICE_TIME_MS,
  OVERLOAD_EWMA_ALPHA,
  resolveLoadOptions,
  SATURATION_LATENCY_RATIO,
  type EndpointLoadOptions,
  type ResolvedLoadOptions,
} from './load-options';
import { digestReport, staleAfterFor, type ReportDigest } from './report-digest';
import { invalidOption } from '../errors';

/** What the estimate is made of, for the status endpoint and for tests. */
export interface LoadSnapshot {
  inFlight: number;
  hiddenInFlight: number;
  capacity: number;
  capacitySource: 'reported' | 'learned' | 'cohort' | 'default';
  serviceTimeMs: number;
  serviceTimeSource: 'local' | 'reported' | 'cohort' | 'default';
  penaltyFactor: number;
  /** Overload signal 0..1: a decaying share of recent answers that were "overloaded". */
  overload: number;
  slowStartFactor: number;
  expectedWaitMs: number;
  reportAgeMs: number | undefined;
  freshReport: boolean;
}

/** The EndpointLoad made by createEndpointLoad, with the extras the balancer may use. */
export interface LoadEstimate extends EndpointLoad {
  /**
   * A request ended for a reason that says nothing about the backend (the
   * client stalled its body, or the gateway could not send it): in-flight
   * goes down, no latency or error sample is taken.
   */
  onRequestCancel(nowMs: number): void;
  reportVerdict(nowMs: number): HealthVerdict | undefined;
  reportState(nowMs: number): BackendState | undefined;
  /** The fresh report says every slot is busy and requests wait; false when none is fresh. */
  reportSaturated(nowMs: number): boolean;
  /**
   * onRequestEnd, with the backend's answer "overloaded" (a 503 with
   * Retry-After, or a 503/429 while it reports itself saturated): the request
   * neither succeeded nor failed. It raises a bounded, decaying overload
   * signal that lowers the backend's share, leaves the error rate alone, and
   * (like a failure) says nothing good about its speed.
   */
  onRequestEnd(nowMs: number, latencyMs: number, ok: boolean, overloaded?: boolean): void;
  watchInFlight(listener: () => void): () => void;
  snapshot(nowMs: number): LoadSnapshot;
  dispose(): void;
  /**
   * An unsigned report (the balancer's `allowUnsigned`): the expected wait is
   * multiplied by `factor` (>= 1, bounded by the caller:
   * registry/unsigned-report.ts) until the report would be stale. Nothing
   * else of it counts, so it can only make the backend look busier, by a
   * bounded amount, for a bounded time.
   */
  onUnsignedReport(factor: number, intervalMs: number, receivedAtMs: number): void;
}

export function createEndpointLoad(
  opts?: EndpointLoadOptions | Record<string, unknown>,
): LoadEstimate {
  const o = resolveLoadOptions(opts);
  const bag = optionBag('load', opts);
  const cohortOpt = bag['cohort'] as LoadCohort | undefined;
  const membership = joinCohort(cohortOpt);
  if (cohortOpt !== undefined && membership === undefined) {
    throw invalidOption('load.cohort', 'a cohort from createLoadCohort()', cohortOpt);
  }
  const est = new EndpointLoadEstimate(o, cohortOpt, membership);
  if (o.slowStartOnCreate) est.admit(o.now());
  return est;
}

class EndpointLoadEstimate implements LoadEstimate {
  private inFlightCount = 0;
  /** Peak EWMA of observed latency (latencyMs(), the peak-ewma strategy). */
  private readonly latency: PeakEwma;
  /** Peak EWMA of service time: latency with the queueing part taken out (expectedWaitMs). */
  private readonly service: PeakEwma;
  private report: ReportDigest | undefined;
  /** Decaying peak of capacity samples from this gateway's completions. */
  private learnedCapacity: number | undefined;
  private learnedCapacityStampMs = 0;
  /** Capacity read off a report with a non-empty queue (every slot busy): a fact about the backend. */
  private observedCapacity: number | undefined;
  /** The last concurrencyLimit an agent reported: configuration, kept when reports go stale. */
  private reportedLimit: number | undefined;
  /** ∫ local in-flight dt since the last report, for the local mean concurrency (Little). */
  private areaMs = 0;
  private areaStartMs: number | undefined;
  private areaLastMs = 0;
  /** EWMA over reports of the agent's instantaneous outstanding, when it sends no traffic figures. */
  private agentOutstandingEwma: number | undefined;
  /** Hidden load: the report-time snapshot, the interval mean, and how fast one gives way to the other. */
  private hiddenSnapshot = 0;
  private hiddenMean = 0;
  /** This gateway's mean in-flight over the last report interval. */
  private localMean = 0;
  private hiddenTauMs = 1;
  /** This gateway's share of the backend's traffic over the last interval, 0..1 (1 if unknown). */
  private reportShare = 1;
  /** Penalty of the last report (computeReportFactor). */
  private reportFactor = 1;
  /** When this gateway last saw clear queueing (see learnCapacity). */
  private saturatedAtMs: number | undefined;
  private errorRate = 0;
  private errorStampMs = 0;
  private overload = 0;
  private overloadStampMs = 0;
  private admittedAtMs: number | undefined;
  /** Factor of the last unsigned report and until when it counts (onUnsignedReport). */
  private unsignedFactor = 1;
  private unsignedUntilMs = -Infinity;
  private listeners: Array<() => void> = [];
  /** Where the last serviceTime() / capacity() figure came from (for snapshot). */
  private serviceSource: LoadSnapshot['serviceTimeSource'] = 'default';
  private capacitySource: LoadSnapshot['capacitySource'] = 'default';

  constructor(
    private readonly o: ResolvedLoadOptions,
    private readonly cohort: LoadCohort | undefined,
    private readonly membership: CohortMembership | undefined,
  ) {
    this.latency = new PeakEwma(o.decayMs, o.minLatencyWindowMs);
    this.service = new PeakEwma(o.serviceDecayMs, o.minLatencyWindowMs, false);
  }

  get inFlight(): number {
    return this.inFlightCount;
  }

  onRequestStart(nowMs: number): void {
    this.accumulate(nowMs);
    this.inFlightCount++;
    this.notify();
  }

  onRequestCancel(nowMs: number): void {
    this.accumulate(nowMs);
    if (this.inFlightCount > 0) this.inFlightCount--;
    this.notify();
  }

  onRequestEnd(nowMs: number, latencyMs: number, ok: boolean, overloaded = false): void {
    this.accumulate(nowMs);
    const n = this.inFlightCount;
    if (this.inFlightCount > 0) this.inFlightCount--;
    // Count-based like the error rate; time decay on read forgets it when traffic stops.
    this.overload =
      this.currentOverload(nowMs) * (1 - OVERLOAD_EWMA_ALPHA) +
      (overloaded ? OVERLOAD_EWMA_ALPHA : 0);
    this.overloadStampMs = nowMs;
    if (ok && !overloaded) {
      this.latency.observe(nowMs, latencyMs);
      const inSystem = n + this.hidden(nowMs);
      // Capacity first: this completion may show more slots than known, and de-queueing
      // with a too-small capacity would shrink the service time.
      this.learnCapacity(nowMs, inSystem, latencyMs);
      // The wait formula models queueing itself (o and c), so its service time must not
      // contain queueing: with more requests in the system than slots, only c / inSystem of
      // the latency was service. Feeding raw latency double-counts the queue, and the peak
      // then sticks for decayMs: the queued backend looks slow long after its queue drained,
      // every gateway leaves it, the others queue... (queueing-sim.test.ts, three gateways).
      const c = this.capacity();
      this.service.observe(nowMs, inSystem > c ? (latencyMs * c) / inSystem : latencyMs);
    } else {
      // A failure says nothing good about speed: a backend refusing connections in 1 ms must
      // not look fast (the "black hole" of least-latency balancers). A slow failure (a
      // timeout) still raises the estimate, as a peak.
      // Before any success, the neutral estimate stands in for the current one.
      const floor =
        this.latency.valueMs(nowMs) ?? this.cohort?.meanServiceTimeMs() ?? this.o.defaultLatencyMs;
      this.latency.observe(nowMs, floor > latencyMs ? floor : latencyMs);
      const serviceFloor =
        this.service.valueMs(nowMs) ?? this.cohort?.meanServiceTimeMs() ?? this.o.defaultLatencyMs;
      this.service.observe(nowMs, serviceFloor > latencyMs ? serviceFloor : latencyMs);
    }
    // Count-based EWMA of failures; time decay on read forgets them when traffic stops. An
    // overloaded answer is not a failure (the backend is alive and said so): no change.
    if (!overloaded) {
      this.errorRate =
        this.currentErrorRate(nowMs) * (1 - ERROR_EWMA_ALPHA) + (ok ? 0 : ERROR_EWMA_ALPHA);
      this.errorStampMs = nowMs;
    }
    this.updateCohort(nowMs);
    this.notify();
  }

  onReport(report: MetricsReport, receivedAtMs: number): void {
    const d = digestReport(report, receivedAtMs, this.inFlightCount, this.o.freshness);
    const hadReport = this.report !== undefined;
    this.report = d;
    if (d.concurrencyLimit !== undefined) this.reportedLimit = d.concurrencyLimit;
    if (d.capacityHint !== undefined) {
      if (d.capacityHintExact) this.observedCapacity = d.capacityHint;
      // A lower bound (requests served at once without queueing) also feeds the learned peak.
      this.raiseLearnedCapacity(receivedAtMs, d.capacityHint);
    }
    if (d.early && hadReport) {
      this.trustJump(d, receivedAtMs);
      return;
    }
    this.estimateHidden(d, receivedAtMs);
    this.reportFactor = this.computeReportFactor(d);
    this.updateCohort(receivedAtMs);
  }

  onUnsignedReport(factor: number, intervalMs: number, receivedAtMs: number): void {
    this.unsignedFactor = factor >= 1 && factor < Infinity ? factor : 1;
    this.unsignedUntilMs = receivedAtMs + staleAfterFor(this.o.freshness, intervalMs);
  }

  hasFreshReport(nowMs: number): boolean {
    return this.freshReport(nowMs) !== undefined;
  }

  reportAgeMs(nowMs: number): number | undefined {
    return this.report === undefined ? undefined : Math.max(0, nowMs - this.report.receivedAtMs);
  }

  latencyMs(nowMs: number): number | undefined {
    return this.latency.valueMs(nowMs);
  }

  reportVerdict(nowMs: number): HealthVerdict | undefined {
    return this.freshReport(nowMs)?.verdict;
  }

  reportState(nowMs: number): BackendState | undefined {
    return this.freshReport(nowMs)?.state;
  }

  reportSaturated(nowMs: number): boolean {
    return this.freshReport(nowMs)?.saturated === true;
  }

  admit(nowMs: number): void {
    this.admittedAtMs = this.o.slowStartMs > 0 ? nowMs : undefined;
    // A backend (re-)entering the eligible set is a new incarnation: restarted after a crash,
    // back from an ejection or a drain. What this gateway measured before (timeouts, refused
    // connections, a queue) describes the old one. Kept, it starves the newcomer: P2C never
    // picks a backend whose estimate is worse than every peer's, so no completion ever
    // corrects it. Forget it; the cohort's neutral estimate and slow start take over, and the
    // agent's next report, if any, counts as usual.
    this.latency.reset();
    this.service.reset();
    this.errorRate = 0;
    this.overload = 0;
    this.learnedCapacity = undefined;
    this.saturatedAtMs = undefined;
    this.updateCohort(nowMs);
  }

  slowStartFactor(nowMs: number): number {
    if (this.admittedAtMs === undefined) return 1;
    const elapsed = nowMs - this.admittedAtMs;
    if (elapsed >= this.o.slowStartMs) {
      this.admittedAtMs = undefined;
      return 1;
    }
    // Linear ramp from the floor, as Envoy's slow start with aggression 1.0.
    const ramp = Math.max(0, elapsed) / this.o.slowStartMs;
    const min = this.o.slowStartMinFactor;
    return min + (1 - min) * ramp;
  }

  expectedWaitMs(nowMs: number): number {
    const r = this.freshReport(nowMs);
    const s = this.serviceTime(nowMs, r);
    const c = this.capacity();
    const outstanding = this.inFlightCount + this.hiddenOf(r, nowMs);
    const queued = outstanding + 1 - c;
    const busy = outstanding < c ? outstanding : c;
    let wait = s * (1 + (queued > 0 ? queued / c : 0) + (this.o.utilizationWeight * busy) / c);
    wait *= this.penalty(nowMs, r);
    // `!(wait < MAX)` also catches NaN: no NaN can leave this function.
    return wait < MAX_EXPECTED_WAIT_MS ? wait : MAX_EXPECTED_WAIT_MS;
  }

  watchInFlight(listener: () => void): () => void {
    this.listeners = [...this.listeners, listener];
    return () => {
      this.listeners = this.listeners.filter((l) => l !== listener);
    };
  }

  snapshot(nowMs: number): LoadSnapshot {
    const r = this.freshReport(nowMs);
    const serviceTimeMs = this.serviceTime(nowMs, r);
    const capacity = this.capacity();
    return {
      inFlight: this.inFlightCount,
      hiddenInFlight: this.hiddenOf(r, nowMs),
      capacity,
      capacitySource: this.capacitySource,
      serviceTimeMs,
      serviceTimeSource: this.serviceSource,
      penaltyFactor: this.penalty(nowMs, r),
      overload: this.currentOverload(nowMs),
      slowStartFactor: this.slowStartFactor(nowMs),
      expectedWaitMs: this.expectedWaitMs(nowMs),
      reportAgeMs: this.reportAgeMs(nowMs),
      freshReport: r !== undefined,
    };
  }

  dispose(): void {
    this.membership?.leave();
    this.listeners = [];
  }

  private notify(): void {
    const ls = this.listeners;
    for (let i = 0; i < ls.length; i++) ls[i]!();
  }

  private freshReport(nowMs: number): ReportDigest | undefined {
    const r = this.report;
    // Age by the gateway's own receive time: the agent's `ts` is another host's clock.
    return r !== undefined && nowMs - r.receivedAtMs <= r.staleAfterMs ? r : undefined;
  }

  private hidden(nowMs: number): number {
    return this.hiddenOf(this.freshReport(nowMs), nowMs);
  }

  /**
   * Hidden load at `nowMs`: the report's snapshot, fading into the interval's
   * mean as the snapshot's requests drain (see estimateHidden).
   */
  private hiddenOf(r: ReportDigest | undefined, nowMs: number): number {
    if (r === undefined || r.outstanding === undefined) return 0;
    const age = nowMs - r.receivedAtMs;
    // Other gateways act like this one: their share follows this gateway's in-flight now
    // (ratio × inFlight), without the report's lag. Only the excess over that proportion
    // (a batch job, a client that bypasses the gateways) is held from the report.
    const ratio = this.membership?.hiddenRatio(nowMs) ?? 0;
    const proportional = (ratio < MAX_HIDDEN_RATIO ? ratio : MAX_HIDDEN_RATIO) * this.inFlightCount;
    let steady = this.hiddenMean - ratio * this.localMean;
    if (!(steady > 0)) steady = 0;
    const transient = this.hiddenSnapshot - this.hiddenMean;
    return (
      proportional + steady + (age > 0 ? transient * Math.exp(-age / this.hiddenTauMs) : transient)
    );
  }

  /** Adds local in-flight × elapsed time to the running integral. */
  private accumulate(nowMs: number): void {
    if (this.areaStartMs === undefined) {
      this.areaStartMs = nowMs;
      this.areaLastMs = nowMs;
      return;
    }
    if (nowMs > this.areaLastMs) {
      this.areaMs += this.inFlightCount * (nowMs - this.areaLastMs);
      this.areaLastMs = nowMs;
    }
  }

  /**
   * Hidden load = what the agent sees minus what this gateway sent. The
   * report's queue is an instant; a request lasts a service time, a report an
   * interval (100× longer or more). Held for a whole interval, a momentary
   * spike sends every gateway away from the backend at once and onto the
   * others — herding, measured in queueing-sim.test.ts with three gateways.
   * So the snapshot counts only while its requests drain (time constant: the
   * snapshot's drain time, s × max(1, outstanding / c)); after that the
   * estimate is the interval's mean: the agent's mean concurrency (Little's
   * law, rps × latency; else an EWMA of its snapshots) minus this gateway's
   * mean in-flight over the same interval (the time integral kept by
   * accumulate).
   */
  private estimateHidden(d: ReportDigest, nowMs: number): void {
    this.accumulate(nowMs);
    const start = this.areaStartMs ?? nowMs;
    const localMean = nowMs > start ? this.areaMs / (nowMs - start) : this.inFlightCount;
    this.areaMs = 0;
    this.areaStartMs = nowMs;
    this.areaLastMs = nowMs;
    if (d.outstanding === undefined) {
      this.hiddenSnapshot = 0;
      this.hiddenMean = 0;
      this.localMean = 0;
      this.membership?.setFlow(0, 0);
      this.reportShare = 1;
      return;
    }
    let agentMean = d.meanOutstanding;
    if (agentMean === undefined) {
      const prev = this.agentOutstandingEwma;
      agentMean =
        prev === undefined ? d.outstanding : prev + HIDDEN_EWMA_ALPHA * (d.outstanding - prev);
      this.agentOutstandingEwma = agentMean;
    }
    const snapshot = d.outstanding - d.localInFlightAtReport;
    const mean = agentMean - localMean;
    this.reportShare = agentMean > 0 && localMean < agentMean ? localMean / agentMean : 1;
    this.hiddenSnapshot = snapshot > 0 ? snapshot : 0;
    this.hiddenMean = mean > 0 ? mean : 0;
    this.localMean = localMean;
    this.membership?.setFlow(this.hiddenMean, localMean);
    this.setHiddenTau(d, d.outstanding, nowMs);
  }

  /** Time constant of the snapshot's fade: its drain time, s × max(1, outstanding / c). */
  private setHiddenTau(d: ReportDigest, outstanding: number, nowMs: number): void {
    const s = this.serviceTime(nowMs, d);
    const c = this.capacity();
    const tau = s * Math.max(1, outstanding / c);
    this.hiddenTauMs = tau > 1e-3 && tau < MAX_EXPECTED_WAIT_MS ? tau : MAX_EXPECTED_WAIT_MS;
  }

  /**
   * An early report: the agent saw the backend's outstanding requests jump
   * since its last report (packages/health-agent/src/early-report.ts). The jump
   * is taken at once: the report's snapshot replaces the transient part of the
   * hidden load, and fades as its requests drain like a scheduled one's.
   * Everything averaged over an interval stays as the last scheduled report
   * left it: the interval's hidden mean, this gateway's mean in-flight and its
   * integral (a mean over the few ms since the last report would be noise, and
   * would reset the interval the next scheduled report is judged over), the
   * traffic share and the cohort flow (so the other gateways' share in
   * hiddenOf keeps following their in-flight), and the report's penalty
   * (CPU and memory repeat the scheduled report).
   */
  private trustJump(d: ReportDigest, nowMs: number): void {
    if (d.outstanding === undefined) return;
    const snapshot = d.outstanding - d.localInFlightAtReport;
    this.hiddenSnapshot = snapshot > 0 ? snapshot : 0;
    this.setHiddenTau(d, d.outstanding, nowMs);
    this.updateCohort(nowMs);
  }

  /** Service time in ms; sets `serviceSource` (numbers out, no object per call: this runs per pick). */
  private serviceTime(nowMs: number, r: ReportDigest | undefined): number {
    const last = this.service.lastSampleMs;
    const reported = r?.latencyMs;
    let value: number | undefined;
    let source: LoadSnapshot['serviceTimeSource'];
    if (last !== undefined && (nowMs - last <= this.o.localFreshMs || reported === undefined)) {
      value = this.service.valueMs(nowMs);
      source = 'local';
      // Shrinkage towards the prior: a local figure is only as good as its last sample. With
      // no new sample it regresses towards the other members' mean, with the service EWMA's own
      // time constant. A backend in use refreshes it every few ms, so nothing changes; one that
      // lost a P2C comparison on a noisy sample (a cold first request, a slow burst) would
      // otherwise lose every later one too, since only a pick can correct it: with two
      // backends P2C compares both every time, and one of two identical backends got every
      // request at low load (bench smoke). A truly slow backend pays one probe when it has
      // regressed, is measured slow again, and backs off: about one request per
      // serviceDecayMs (Finagle and tower decay idle estimates for the same reason).
      const prior = this.membership?.othersMeanServiceTimeMs();
      if (value !== undefined && prior !== undefined) {
        const w = Math.exp(-Math.max(0, nowMs - last) / this.o.serviceDecayMs);
        value = prior + (value - prior) * w;
      }
    } else if (reported !== undefined) {
      // The agent's latency includes its queue too: with a mean of N requests in the system
      // (Little) on c slots, the service part is c / N of it.
      const n = r!.meanOutstanding;
      const c = this.capacity();
      value = n !== undefined && n > c ? (reported * c) / n : reported;
      source = 'reported';
    } else {
      value = this.cohort?.meanServiceTimeMs();
      source = 'cohort';
    }
    if (value === undefined || !(value >= 0)) {
      value = this.o.defaultLatencyMs;
      source = 'default';
    }
    this.serviceSource = source;
    return value > MIN_SERVICE_TIME_MS ? value : MIN_SERVICE_TIME_MS;
  }

  /** Concurrent slots, >= 1; sets `capacitySource`. */
  private capacity(): number {
    let value: number | undefined = this.reportedLimit ?? this.observedCapacity;
    let source: LoadSnapshot['capacitySource'] = 'reported';
    if (value === undefined) {
      // What this gateway learned is mostly a lower bound (concurrency served without
      // queueing); the cohort's mean is the prior. Taking the larger breaks a feedback loop:
      // a backend that happened to see little concurrency would otherwise look small, get
      // less traffic, and never see more. A backend truly smaller than the prior queues:
      // its Peak EWMA latency (which includes the queueing) says so at once, and once this
      // gateway has seen that queueing its learned figure stands without the prior.
      const saturated =
        this.saturatedAtMs !== undefined &&
        this.learnedCapacityStampMs - this.saturatedAtMs <= this.o.capacityDecayMs;
      const prior = saturated ? undefined : this.membership?.othersMeanCapacity();
      const learned = this.learnedCapacity;
      if (learned !== undefined && (prior === undefined || learned >= prior)) {
        value = learned;
        source = 'learned';
      } else {
        value = prior;
        source = 'cohort';
      }
    }
    if (value === undefined || !(value >= 1)) {
      value = this.o.defaultCapacity;
      source = 'default';
    }
    this.capacitySource = source;
    return value < this.o.maxCapacity ? value : this.o.maxCapacity;
  }

  /**
   * One completion at concurrency n with latency L: busy slots ≈ throughput ×
   * base service time = (n / L) × minLatency (Little's law; TCP Vegas and BBR
   * estimate a path's capacity the same way). Below saturation this is ≈ n, a
   * lower bound; at saturation it is the slot count.
   */
  private learnCapacity(nowMs: number, n: number, latencyMs: number): void {
    if (!(n >= 1)) return;
    const min = this.latency.minMs();
    let sample = n;
    if (min !== undefined && latencyMs > min && Number.isFinite(latencyMs)) {
      sample = (n * min) / latencyMs;
      // Clear queueing (latency well above the base at more than one request): this sample
      // measures the capacity itself, not a lower bound, so the cohort prior must not lift it.
      if (n >= 2 && latencyMs > min * SATURATION_LATENCY_RATIO) this.saturatedAtMs = nowMs;
    }
    this.raiseLearnedCapacity(nowMs, sample);
  }

  private raiseLearnedCapacity(nowMs: number, sample: number): void {
    if (!(sample >= 1) || !Number.isFinite(sample)) sample = 1;
    const prev = this.learnedCapacity;
    if (prev === undefined || sample >= prev) {
      this.learnedCapacity = sample;
    } else {
      const w = Math.exp(
        -Math.max(0, nowMs - this.learnedCapacityStampMs) / this.o.capacityDecayMs,
      );
      this.learnedCapacity = prev * w + sample * (1 - w);
    }
    this.learnedCapacityStampMs = nowMs;
  }

  private currentErrorRate(nowMs: number): number {
    if (this.errorRate === 0) return 0;
    return this.errorRate * Math.exp(-Math.max(0, nowMs - this.errorStampMs) / this.o.decayMs);
  }

  private currentOverload(nowMs: number): number {
    if (this.overload === 0) return 0;
    return (
      this.overload * Math.exp(-Math.max(0, nowMs - this.overloadStampMs) / this.o.overloadDecayMs)
    );
  }

  private penalty(nowMs: number, r: ReportDigest | undefined): number {
    const o = this.o;
    let errors = this.currentErrorRate(nowMs);
    let factor = 1;
    if (r !== undefined) {
      factor = this.reportFactor;
      const reported = r.errorRate * this.reportShare;
      if (reported > errors) errors = reported;
    }
    factor *= 1 + o.errorPenalty * errors;
    const overload = this.currentOverload(nowMs);
    if (overload > 0) factor *= 1 + o.overloadPenalty * overload;
    if (!(factor < o.maxPenaltyFactor)) factor = o.maxPenaltyFactor;
    return nowMs <= this.unsignedUntilMs ? factor * this.unsignedFactor : factor;
  }

  /**
   * The report's penalty factor, computed once per report. CPU, memory and a
   * `degraded` verdict are global signals: every gateway reads the same report
   * and reacts to it at the same time. If each applied the full penalty, G
   * gateways would move G times the traffic one gateway would, leave the
   * backend idle for an interval, then all come back: herding, measured with
   * three gateways in queueing-sim.test.ts. So each gateway applies the part
   * of the penalty that matches its share of the backend's traffic (its mean
   * in-flight / the agent's mean outstanding): the reactions add up to one
   * gateway's. A lone gateway has share 1 and the full penalty; load that is
   * not requests (a CPU hog) does not dilute the share. `down` and
   * non-`online` states are not scaled: they are eligibility, not load.
   */
  private computeReportFactor(d: ReportDigest): number {
    const o = this.o;
    if (d.verdict === 'down' || d.state !== 'online') return o.maxPenaltyFactor;
    let raw = 1;
    if (d.cpuUtilization > o.cpuPressureThreshold) {
      raw *=
        1 +
        (o.cpuPressurePenalty * (d.cpuUtilization - o.cpuPressureThreshold)) /
          (1 - o.cpuPressureThreshold);
    }
    if (d.memoryUtilization > o.memoryPressureThreshold) {
      raw *=
        1 +
        (o.memoryPressurePenalty * (d.memoryUtilization - o.memoryPressureThreshold)) /
          (1 - o.memoryPressureThreshold);
    }
    if (d.verdict === 'degraded') raw *= o.degradedPenalty;
    const factor = 1 + (raw - 1) * this.reportShare;
    return factor < o.maxPenaltyFactor ? factor : o.maxPenaltyFactor;
  }

  private updateCohort(nowMs: number): void {
    if (this.membership === undefined) return;
    const r = this.freshReport(nowMs);
    const s = this.service.valueMs(nowMs) ?? r?.latencyMs;
    const c = this.reportedLimit ?? this.observedCapacity ?? this.learnedCapacity;
    this.membership.set(s, c);
  }
}
