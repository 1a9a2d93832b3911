/**
 * The per-backend load estimate and the default strategy's metric: the
 * expected time until a new request sent now would finish (docs/architecture.md,
 * rule 1 and "The load model"). With `c` slots, service time `s` and `o`
 * requests outstanding:
 *
 *     wait = s × (1 + max(0, o + 1 − c) / c + β × min(o, c) / c) × penalty
 *
 * This file only composes; each term has its own file and state: `s`
 * load/service-time.ts, `c` load/capacity.ts, `o` = load/in-flight.ts +
 * load/hidden-load.ts, the penalty load/penalties.ts over the factors listed
 * in the constructor, slow start load/slow-start.ts. docs/strategies.md
 * explains each choice with the simulation that forced it. A stale report
 * stops counting: the backend falls back to local signals, it does not vanish.
 */
import type { BackendState, HealthVerdict, MetricsReport } from '@loadwise/protocol';
import { Capacity } from './capacity';
import { CpuCapacity, type LocalRate } from './cpu-capacity';
import { joinCohort, type CohortMembership, type LoadCohort } from './cohort';
import { HiddenLoad } from './hidden-load';
import { InFlight } from './in-flight';
import {
  MAX_EXPECTED_WAIT_MS,
  MIN_SERVICE_TIME_MS,
  resolveLoadOptions,
  type EndpointLoadOptions,
  type ResolvedLoadOptions,
} from './load-options';
import { optionBag } from './option-check';
import { ErrorPenalty, OverloadPenalty } from './outcome-penalties';
import { Penalties } from './penalties';
import { digestReport, reportedBound, staleAfterFor, type ReportDigest } from './report-digest';
import { ReportPenalty } from './report-penalty';
import { ServiceTime } from './service-time';
import { SlowStart } from './slow-start';
import type { LoadEstimate, LoadSnapshot } from './types';
import { invalidOption } from '../errors';

/**
 * A backend that has held this gateway's requests for T without answering any
 * scores at least T / this (expectedWaitMs, docs/strategies.md "What the
 * gateway saw beats what a report says").
 */
export const STALL_RATIO = 4;

/**
 * What of the stall does not count: (T − this) / STALL_RATIO. The clock runs on this
 * gateway's event loop, whose own pauses (a GC, a burst) hold every backend's answers
 * at once: against backends that answer in a millisecond, 4 ms of that already floored
 * their scores, by how recently each had answered, and the open loop's p99 at 1000 req/s
 * doubled (bench:overhead-ab, 5 of 6 rounds). A backend that holds requests for good
 * still scores (T − 200) / 4: past 1 s, 200 ms.
 */
export const STALL_GRACE_MS = 200;

/** Weight of each scheduled report in Senders' averages (about the last five reports). */
const SENDERS_ALPHA = 0.2;
/** Senders' factor up to this: this gateway is the backend's only sender. */
const ALONE_FACTOR = 1.1;

/** The report has its own request rate: the CPU term does not need this gateway's. */
function hasOwnRate(report: MetricsReport): boolean {
  const rps = report.traffic?.rps;
  return typeof rps === 'number' && Number.isFinite(rps) && rps > 0;
}

/**
 * How many times this gateway's part of a backend's requests the backend has:
 * the backend's outstanding requests (the report's snapshot) over this
 * gateway's in flight at the same instant, each averaged over the last few
 * scheduled reports. 1 while the backend has no outstanding figure or this
 * gateway sent it nothing.
 */
class Senders {
  private agent = 0;
  private local = 0;

  onScheduledReport(d: ReportDigest): number {
    if (d.outstanding === undefined) {
      this.agent = 0;
      this.local = 0;
      return 1;
    }
    this.agent += SENDERS_ALPHA * (d.outstanding - this.agent);
    this.local += SENDERS_ALPHA * (d.localInFlightAtReport - this.local);
    return this.local > 0 && this.agent > this.local ? this.agent / this.local : 1;
  }
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
  private readonly local = new InFlight();
  private report: ReportDigest | undefined;
  private readonly times: ServiceTime;
  private readonly capacity: Capacity;
  private readonly cpu = new CpuCapacity();
  private readonly senders = new Senders();
  /** This gateway's successful completions since the last scheduled report. */
  private readonly completions: { count: number; sinceMs: number | undefined } = {
    count: 0,
    sinceMs: undefined,
  };
  private readonly hidden: HiddenLoad;
  private readonly overload: OverloadPenalty;
  private readonly penalties: Penalties;
  private readonly slowStart: SlowStart;
  /** Requests started since the backend last answered (a head or a success), in flight or not. */
  private sentSinceAnswer = 0;
  /** When the second of those started: the stall clock (stallMs); 0 while there is none. */
  private stallSinceMs = 0;

  constructor(
    private readonly o: ResolvedLoadOptions,
    cohort: LoadCohort | undefined,
    private readonly membership: CohortMembership | undefined,
  ) {
    this.times = new ServiceTime(o, cohort, membership);
    this.capacity = new Capacity(o, membership);
    this.hidden = new HiddenLoad(membership);
    this.overload = new OverloadPenalty(o);
    // The penalty factors, multiplied in this order.
    this.penalties = new Penalties(o.maxPenaltyFactor, [
      new ReportPenalty(o),
      new ErrorPenalty(o),
      this.overload,
    ]);
    this.slowStart = new SlowStart(o.slowStartMs, o.slowStartMinFactor);
  }

  get inFlight(): number {
    return this.local.count;
  }

  onRequestStart(nowMs: number): void {
    this.hidden.accumulate(nowMs, this.local.count);
    if (this.local.count === 0) this.sentSinceAnswer = 0;
    if (++this.sentSinceAnswer === 2) this.stallSinceMs = nowMs;
    this.local.start();
  }

  onRequestCancel(nowMs: number): void {
    this.hidden.accumulate(nowMs, this.local.count);
    this.local.end();
    this.local.notify();
  }

  onResponseHead(): void {
    this.sentSinceAnswer = 0;
  }

  onRequestEnd(
    nowMs: number,
    latencyMs: number,
    ok: boolean,
    overloaded = false,
    refused = false,
  ): void {
    const n = this.local.count;
    this.hidden.accumulate(nowMs, n);
    this.local.end();
    if (ok && !overloaded && !refused) {
      this.sentSinceAnswer = 0;
      this.completions.count++;
      this.times.observeLatency(nowMs, latencyMs);
      const inSystem = n + this.hidden.value(this.freshReport(nowMs), nowMs, this.local.count);
      // Capacity first: this completion may show more slots than known, and de-queueing
      // with a too-small capacity would shrink the service time.
      this.capacity.learn(nowMs, inSystem, latencyMs, this.times.minLatencyMs());
      this.times.observeService(nowMs, latencyMs, inSystem, this.capacity.value());
    } else {
      this.times.observeFailure(nowMs, latencyMs);
    }
    this.penalties.onRequestEnd(nowMs, ok, overloaded);
    this.updateCohort(nowMs);
    this.local.notify();
  }

  onReport(report: MetricsReport, receivedAtMs: number): void {
    let localRate: LocalRate | undefined;
    if (report.early !== true) {
      // This gateway's completions over the interval the report covers: the CPU term's rate
      // when the report has no traffic figures (load/cpu-capacity.ts).
      const since = this.completions.sinceMs;
      if (since !== undefined && receivedAtMs > since) {
        const windowMs = receivedAtMs - since;
        localRate = { rps: (this.completions.count * 1000) / windowMs, windowMs };
      }
      this.completions.count = 0;
      this.completions.sinceMs = receivedAtMs;
    }
    const d = digestReport(report, receivedAtMs, this.local.count, this.o.freshness, localRate);
    const hadReport = this.report !== undefined;
    this.report = d;
    this.capacity.onReport(d, receivedAtMs);
    // An early report repeats the last scheduled CPU figures: the CPU term keeps that report's.
    if (!d.early || !hadReport) this.cpu.onScheduledReport(d.cpu);
    if (d.early && hadReport) {
      // The jump only; the interval's means and the report penalty stay (hidden-load.ts).
      if (this.hidden.onEarlyReport(d)) {
        this.setDrainTime(d, receivedAtMs);
        this.updateCohort(receivedAtMs);
      }
      return;
    }
    const hasOutstanding = this.hidden.onScheduledReport(d, receivedAtMs, this.local.count);
    const alone = this.senders.onScheduledReport(d) <= ALONE_FACTOR;
    if (!alone && !hasOwnRate(report)) {
      // The CPU term's rate is this gateway's completions, and others send to the backend
      // too: CPU per request would be overrated by their part and μ underrated as much.
      // Scaling our rate by the estimated number of senders was too noisy to help (three
      // gateways with gauge agents in cpu-sim.test.ts): no CPU figure, the latency decides.
      this.cpu.onScheduledReport(undefined);
    }
    if (hasOutstanding) this.setDrainTime(d, receivedAtMs);
    this.penalties.onReport(d, this.hidden.share);
    this.updateCohort(receivedAtMs);
  }

  onUnsignedReport(factor: number, intervalMs: number, receivedAtMs: number): void {
    this.penalties.onUnsignedReport(
      factor,
      receivedAtMs + staleAfterFor(this.o.freshness, intervalMs),
    );
  }

  admit(nowMs: number): void {
    this.slowStart.admit(nowMs);
    // A new incarnation (restarted, back from an ejection or a drain): what this gateway
    // measured describes the old one and, kept, starves the newcomer (P2C never picks a backend
    // worse than every peer, so no completion corrects it). The cohort's neutral estimate and
    // slow start take over; the agent's next report counts as usual.
    this.times.reset();
    this.capacity.reset();
    this.penalties.reset();
    this.updateCohort(nowMs);
  }

  hasFreshReport(nowMs: number): boolean {
    return this.freshReport(nowMs) !== undefined;
  }

  reportAgeMs(nowMs: number): number | undefined {
    return this.report === undefined ? undefined : Math.max(0, nowMs - this.report.receivedAtMs);
  }

  latencyMs(nowMs: number): number | undefined {
    return this.times.latencyMs(nowMs);
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

  /**
   * reportedBound(c) for the concurrencyLimit c its agent reports, while its fresh
   * report finds every slot busy, requests waiting or not. Held only while the report
   * said "full, requests waiting", it lifted whenever a batch of answers had just
   * emptied the backend's queue (4 busy, 0 waiting, this gateway's 8 sent), and the
   * pool's 256 let the gateway's whole queue into three saturated backends (p99 8.6 s
   * against queueTimeoutMs 5 s). Not on a report with free slots: long polls its
   * tracker leaves out, opened after a report, would hold an idle backend saturated
   * (held on every fresh count, requests waited up to queueTimeoutMs for reports to
   * raise the bound). Not raised by this gateway's requests the report did not count
   * either: at receipt that also counts what was sent since the agent's sample, and a
   * burst went past 2c. Undefined (no bound but the pool) otherwise.
   */
  saturationBound(nowMs: number): number | undefined {
    const c = this.capacity.reported();
    if (c === undefined || this.freshReport(nowMs)?.slotsFull !== true) return undefined;
    return reportedBound(c);
  }

  slowStartFactor(nowMs: number): number {
    return this.slowStart.factor(nowMs);
  }

  expectedWaitMs(nowMs: number, stall = true): number {
    const r = this.freshReport(nowMs);
    const c = this.capacity.value();
    const s = this.serviceTime(nowMs, r, c);
    const hiddenNow = this.hidden.value(r, nowMs, this.local.count);
    const outstanding = this.local.count + hiddenNow;
    // Only the steady hidden mean is uncertain, and only from one request up: under that it
    // is within the estimate's own noise (docs/strategies.md, "Hidden load's spread").
    const steady = this.hidden.steadyPart(r);
    const spread = steady >= MIN_SPREAD_MEAN ? steady : 0;
    const queued = expectedExcess(outstanding - spread + 1 - c, spread);
    const busy = outstanding < c ? outstanding : c;
    let wait = s * (1 + (queued > 0 ? queued / c : 0) + (this.o.utilizationWeight * busy) / c);
    if (stall) {
      const stalled = (this.stallMs(nowMs) - STALL_GRACE_MS) / STALL_RATIO;
      if (stalled > wait) wait = stalled;
    }
    wait *= this.penalties.factor(nowMs, r, this.hidden.share);
    // `!(wait < MAX)` also catches NaN: no NaN can leave this function.
    return wait < MAX_EXPECTED_WAIT_MS ? wait : MAX_EXPECTED_WAIT_MS;
  }

  expectedWaitError(nowMs: number): number {
    const r = this.freshReport(nowMs);
    const e = this.times.relativeError(nowMs, r, this.capacity.value());
    // A CPU-set service time is not a mean of these samples.
    return e > 0 && !this.cpuSetsServiceTime(nowMs, r, this.capacity.value()) ? e : 0;
  }

  watchInFlight(listener: () => void): () => void {
    return this.local.watch(listener);
  }

  snapshot(nowMs: number): LoadSnapshot {
    const r = this.freshReport(nowMs);
    const capacity = this.capacity.value();
    return {
      inFlight: this.local.count,
      hiddenInFlight: this.hidden.value(r, nowMs, this.local.count),
      capacity,
      capacitySource: this.capacity.source(),
      serviceTimeMs: this.serviceTime(nowMs, r, capacity),
      serviceTimeSource: this.cpuSetsServiceTime(nowMs, r, capacity)
        ? 'cpu'
        : this.times.source(nowMs, r, capacity),
      cpuThroughputRps: this.cpu.evidence(r !== undefined)?.throughputRps,
      penaltyFactor: this.penalties.factor(nowMs, r, this.hidden.share),
      overload: this.overload.value(nowMs),
      slowStartFactor: this.slowStart.factor(nowMs),
      expectedWaitMs: this.expectedWaitMs(nowMs),
      reportAgeMs: this.reportAgeMs(nowMs),
      freshReport: r !== undefined,
    };
  }

  dispose(): void {
    this.membership?.leave();
    this.local.clear();
  }

  /**
   * How long the backend has left this gateway's requests unanswered: since the second
   * request sent after its last answer (a response head, or a success) started, while
   * one is in flight; 0 otherwise. A request in flight then has waited that long with
   * nothing back, so the backend is that slow now, whatever its reports say: they are
   * its word, this is what the gateway saw. Failures and cancels end nothing (a request
   * that timed out or whose client gave up is no answer). From the second request, not
   * the first: one slow request (a 15 s export, a long poll, an upload) on an otherwise
   * quick backend stopped traffic to it, as its age rose with nothing else sent there to
   * answer, and the clock never ended; a second request sent beside it answers quickly
   * and ends the clock, one that does not answer either starts it. A head ends it too: a
   * download the client reads slowly is an answer given. Streams in the lane ended their
   * attempt when they entered it (proxy/request-flow.ts enterLane). O(1): a count and a
   * timestamp, no per-request state.
   */
  private stallMs(nowMs: number): number {
    if (this.local.count === 0 || this.sentSinceAnswer < 2) return 0;
    return nowMs > this.stallSinceMs ? nowMs - this.stallSinceMs : 0;
  }

  private freshReport(nowMs: number): ReportDigest | undefined {
    const r = this.report;
    // Age by the gateway's own receive time: the agent's `ts` is another host's clock.
    return r !== undefined && nowMs - r.receivedAtMs <= r.staleAfterMs ? r : undefined;
  }

  /** The report's snapshot fades with its drain time (hidden-load.ts setDrainTime). */
  private setDrainTime(d: ReportDigest, nowMs: number): void {
    const c = this.capacity.value();
    this.hidden.setDrainTime(this.serviceTime(nowMs, d, c), c, d.outstanding!);
  }

  /**
   * `s` (load/cpu-capacity.ts, docs/strategies.md "CPU as capacity"): with a
   * fresh report whose others are not elastic, `c / μ` while the service is
   * CPU-bound, else the latency's (load/service-time.ts), under a cgroup quota
   * never below `c / μ`; without one, the latency's.
   */
  private serviceTime(nowMs: number, r: ReportDigest | undefined, c: number): number {
    const cpu = this.cpu.serviceTime(r !== undefined, c);
    if (cpu === undefined) return this.times.value(nowMs, r, c);
    if (cpu.bound) return cpu.ms > MIN_SERVICE_TIME_MS ? cpu.ms : MIN_SERVICE_TIME_MS;
    const s = this.times.value(nowMs, r, c);
    return cpu.floor && cpu.ms > s ? cpu.ms : s;
  }

  /** True when `s` is the CPU's (the snapshot's `cpu` source). */
  private cpuSetsServiceTime(nowMs: number, r: ReportDigest | undefined, c: number): boolean {
    const cpu = this.cpu.serviceTime(r !== undefined, c);
    if (cpu === undefined) return false;
    return cpu.bound || (cpu.floor && cpu.ms > this.times.value(nowMs, r, c));
  }

  private updateCohort(nowMs: number): void {
    this.membership?.set(this.times.own(nowMs, this.freshReport(nowMs)), this.capacity.own());
  }
}

/** A steady hidden mean under this many requests counts by its mean alone. */
const MIN_SPREAD_MEAN = 1;

/** Beyond this many free slots or hidden requests, the hidden count's spread is left out. */
const MAX_EXCESS_TERMS = 64;

/**
 * The requests a new one finds ahead of it beyond the free slots,
 * E[max(0, base + H)], when H, the backend's hidden requests (hidden-load.ts),
 * is known only by its mean `h`: H ~ Poisson(h), as the requests in service
 * from a Poisson stream are. `base` is this gateway's in-flight + 1 - slots.
 * The queue is convex in H, so the mean alone underestimates it: with 4.8
 * of a backend's 8 slots held by hidden requests on average, the mean says a
 * new request never waits; the backend is full 11% of the time, and the
 * request finds 0.21 requests ahead of it beyond the slots on average (0.77
 * with 2 of this gateway's own in flight there). docs/strategies.md,
 * "Hidden load's spread".
 */
export function expectedExcess(base: number, h: number): number {
  if (!(h > 0)) {
    // No hidden requests, or a snapshot below the interval's mean (hidden-load.ts): as before.
    const d = h < 0 ? base + h : base;
    return d > 0 ? d : 0;
  }
  if (base >= 0) return base + h;
  const m = -base;
  if (m > MAX_EXCESS_TERMS || h > MAX_EXCESS_TERMS) {
    const d = base + h;
    return d > 0 ? d : 0;
  }
  // E[max(0, H - m)] = h - m + Σ_{x ≤ m} (m - x) P(H = x)
  let p = Math.exp(-h);
  let below = 0;
  for (let x = 0; x <= m; x++) {
    below += (m - x) * p;
    p *= h / (x + 1);
  }
  const e = h - m + below;
  return e > 0 ? e : 0;
}
