/**
 * The latencies this gateway observes, and `s` of the expected wait
 * (load/endpoint-load.ts): the time one request takes with no queue ahead.
 *
 * - `latencyMs()`: Peak EWMA of observed latency (as Finagle and Linkerd; the
 *   peak-ewma strategy reads it, and its windowed minimum is the base latency
 *   capacity learning divides by, load/capacity.ts);
 * - service time: a 1 s EWMA of this gateway's latencies with the queueing
 *   part taken out (latency × c / n when n > c) when recent, else the
 *   reported latency (de-queued the same way) while fresh, else the cohort's
 *   mean of recent figures (never zero: a backend with no data must not look free), else
 *   `defaultLatencyMs`. A local figure nobody refreshes regresses towards the
 *   peers' mean (raw()), more slowly each time a probe confirms it slow
 *   (observeService).
 *
 * Written on completions; `value()`, `source()` and `latencyMs()` are pure.
 */
import { COHORT_CLAIM_RATIO } from './capacity';
import type { CohortMembership, LoadCohort } from './cohort';
import { MIN_SERVICE_TIME_MS, type ResolvedLoadOptions } from './load-options';
import { PeakEwma } from './peak-ewma';
import type { ReportDigest } from './report-digest';
import type { LoadSnapshot } from './types';

export type ServiceTimeSource = LoadSnapshot['serviceTimeSource'];

/** A probe at least this many times the peers' mean service time confirms a slow backend. */
export const PROBE_SLOW_RATIO = 2;
/** The regression of a confirmed slow backend's figure slows down to this × serviceDecayMs. */
export const MAX_PROBE_BACKOFF = 32;
/**
 * A local figure without a sample for this × serviceDecayMs is unchecked: its
 * sampling error can win it a tie (relativeError). A backend in use gets a
 * sample every few ms; one the picks left out gets none. Gating on this kept
 * the hidden-load simulation as it was (queueing-sim.test.ts): there the
 * loaded backend keeps getting samples, and its latency is the freshest sign
 * of the hidden client's bursts, which a tie on every pick blurred (p99 0.50
 * to 0.53x least-in-flight with seed 1).
 */
export const QUIET_DECAY_SHARE = 0.25;
/** own(): the measured service time that bounds a reported one is at most this × the fastest answer. */
export const FASTEST_ANSWER_RATIO = 4;
/** A local figure older than this × serviceDecayMs no longer speaks for the cohort's mean (own()). */
export const COHORT_FRESH_DECAYS = 3;
/** Local samples a figure rests on before it speaks over a fresh report (origin()). */
export const MIN_LOCAL_SAMPLES = 10;
type Origin = 'local' | 'reported' | 'cohort';

export class ServiceTime {
  /** Peak EWMA of observed latency (latencyMs(), the peak-ewma strategy). */
  private readonly latency: PeakEwma;
  /** EWMA of service time: latency with the queueing part taken out. */
  private readonly service: PeakEwma;
  /** serviceDecayMs × this is the regression's time constant (observeService: probes). */
  private backoff = 1;
  /**
   * Samples in the current run of them, none more than COHORT_FRESH_DECAYS × serviceDecayMs
   * after the one before (origin()): the EWMA's weight of samples older than that is under
   * 5%, so after a lull the figure rests on the new ones alone.
   */
  private recent = 0;

  constructor(
    private readonly o: ResolvedLoadOptions,
    private readonly cohort: LoadCohort | undefined,
    private readonly membership: CohortMembership | undefined,
  ) {
    this.latency = new PeakEwma(o.decayMs, o.minLatencyWindowMs);
    this.service = new PeakEwma(o.serviceDecayMs, o.minLatencyWindowMs, false);
  }

  /** A success: its latency counts as observed (before capacity learning reads minLatencyMs). */
  observeLatency(nowMs: number, latencyMs: number): void {
    this.latency.observe(nowMs, latencyMs);
  }

  /**
   * The same success as a service-time sample, with `inSystem` requests at the
   * backend (local + hidden) on `capacity` slots. The wait formula models
   * queueing itself (o and c), so its service time must not contain queueing:
   * with more requests in the system than slots, only c / inSystem of the
   * latency was service. Feeding raw latency double-counts the queue, and the
   * peak then sticks for decayMs: the queued backend looks slow long after its
   * queue drained, every gateway leaves it, the others queue...
   * (strategies/queueing-sim.test.ts, three gateways).
   */
  observeService(nowMs: number, latencyMs: number, inSystem: number, capacity: number): void {
    const sample = inSystem > capacity ? (latencyMs * capacity) / inSystem : latencyMs;
    const last = this.service.lastSampleMs;
    if (last !== undefined && nowMs - last > this.o.serviceDecayMs) {
      // A probe: the first sample after the figure had been regressing (raw() below). Slower
      // than PROBE_SLOW_RATIO × the peers confirms the figure: the next regression is twice as
      // slow, so a truly slow backend costs one request per 1, 2, 4 … 32 serviceDecayMs instead
      // of one per serviceDecayMs (with several gateways probing on their own, that was enough
      // requests to the 5x slower backend to set the p99: bench/results, scenario 5b). A fast
      // probe ends the backoff.
      const prior = this.membership?.othersMeanServiceTimeMs();
      if (prior !== undefined && sample >= PROBE_SLOW_RATIO * prior) {
        this.backoff = Math.min(this.backoff * 2, MAX_PROBE_BACKOFF);
      } else {
        this.backoff = 1;
      }
    }
    this.recent =
      last !== undefined && nowMs - last <= COHORT_FRESH_DECAYS * this.o.serviceDecayMs
        ? this.recent + 1
        : 1;
    this.service.observe(nowMs, sample);
  }

  /**
   * A failure (or an overloaded answer) says nothing good about speed: a
   * backend refusing connections in 1 ms must not look fast (the "black hole"
   * of least-latency balancers). A slow failure (a timeout) still raises the
   * estimates, as a peak. Before any success, the neutral estimate stands in
   * for the current one.
   */
  observeFailure(nowMs: number, latencyMs: number): void {
    observeAtLeastCurrent(
      this.latency,
      nowMs,
      latencyMs,
      this.neutral() ?? this.o.defaultLatencyMs,
    );
    observeAtLeastCurrent(
      this.service,
      nowMs,
      latencyMs,
      this.neutral() ?? this.o.defaultLatencyMs,
    );
  }

  /** Forgets every sample (admit: a new incarnation). */
  reset(): void {
    this.latency.reset();
    this.service.reset();
    this.backoff = 1;
    this.recent = 0;
  }

  latencyMs(nowMs: number): number | undefined {
    return this.latency.valueMs(nowMs);
  }

  /** The base latency over the last one to two windows (load/capacity.ts divides by it). */
  minLatencyMs(): number | undefined {
    return this.latency.minMs();
  }

  /**
   * This backend's own figure for the cohort's mean: local while recent, else the fresh
   * report's, else none. The mean is every idle member's regression target (raw()), so a
   * figure nobody refreshes must stop counting in it: a backend left alone after a latency
   * fault kept the fault's figure in the mean, and its idle, healthy peers regressed up
   * towards it (the chaos test's latency fault with best of 3: one at 116 ms for a true 15,
   * three seconds after the fault ended). A reported figure counts only up to
   * COHORT_CLAIM_RATIO × the service time this gateway measured of the backend, and not
   * before it measured one, as capacity.ts does with a reported limit: the mean is the
   * neutral estimate of every backend without data, and one agent's signed claim of an
   * hour made each of them look slow. That measured time is at most FASTEST_ANSWER_RATIO ×
   * the fastest answer of the last window, which one slow answer cannot raise: after a
   * quiet spell one 30 s answer was nearly all of the mean, and the same claim then
   * counted as 104 s. (The fastest answer alone clipped an honest 100 ms report to 8 ms
   * after one 2 ms cache hit; now to 32.)
   */
  own(nowMs: number, r: ReportDigest | undefined): number | undefined {
    const last = this.service.lastSampleMs;
    if (last !== undefined && nowMs - last <= COHORT_FRESH_DECAYS * this.o.serviceDecayMs) {
      return this.service.valueMs(nowMs);
    }
    const claimed = r?.latencyMs;
    const mean = this.service.valueMs(nowMs);
    const fastest = this.latency.minMs();
    if (claimed === undefined || mean === undefined || fastest === undefined) return undefined;
    const bound = COHORT_CLAIM_RATIO * Math.min(mean, FASTEST_ANSWER_RATIO * fastest);
    return claimed < bound ? claimed : bound;
  }

  /** Service time in ms, >= MIN_SERVICE_TIME_MS; `r` is the fresh report, `capacity` the slots. */
  value(nowMs: number, r: ReportDigest | undefined, capacity: number): number {
    let v = this.raw(this.origin(nowMs, r, capacity), nowMs, r, capacity);
    if (v === undefined || !(v >= 0)) v = this.o.defaultLatencyMs;
    return v > MIN_SERVICE_TIME_MS ? v : MIN_SERVICE_TIME_MS;
  }

  /**
   * The standard error of value() relative to it, when the local figure has
   * had no sample for QUIET_DECAY_SHARE of serviceDecayMs: from its samples'
   * spread and how many it rests on (PeakEwma.relativeError). 0 while samples
   * keep coming (the figure is checked), and for a reported or neutral figure,
   * whose spread is unknown here.
   */
  relativeError(nowMs: number, r: ReportDigest | undefined, capacity: number): number {
    if (this.origin(nowMs, r, capacity) !== 'local') return 0;
    if (nowMs - this.service.lastSampleMs! < QUIET_DECAY_SHARE * this.o.serviceDecayMs) return 0;
    return this.service.relativeError();
  }

  /** Where value() comes from (for the snapshot). */
  source(nowMs: number, r: ReportDigest | undefined, capacity: number): ServiceTimeSource {
    const origin = this.origin(nowMs, r, capacity);
    const v = this.raw(origin, nowMs, r, capacity);
    return v === undefined || !(v >= 0) ? 'default' : origin;
  }

  /**
   * Local while recent and resting on MIN_LOCAL_SAMPLES samples of its current run (recent),
   * else the fresh report's; but a local figure slower than the report speaks however few
   * its samples. One sample is no backend's service time: the request that checked the
   * gateway was up (a `/healthz` passed through, answered in 2 ms) set one of four
   * identical 10 ms backends' figure for the whole 30 s of localFreshMs, over its agent's
   * report of all its requests; at a cold start it looked five times faster and got 15 of
   * the first 32 requests in flight (cold-start bench, identical fleet). The same after a
   * lull, so the count is of the current run. A few slow answers are a warning worth
   * heeding, though: an agent reporting a tenth of its latency held nine 500 ms answers
   * at its 10 ms for every re-admission (a re-review's simulation: p99 +7%). Without a
   * report, any local figure.
   */
  private origin(nowMs: number, r: ReportDigest | undefined, capacity: number): Origin {
    const last = this.service.lastSampleMs;
    const reported = r?.latencyMs;
    if (last === undefined) return reported !== undefined ? 'reported' : 'cohort';
    if (reported === undefined) return 'local';
    if (nowMs - last > this.o.localFreshMs) return 'reported';
    if (this.recent >= MIN_LOCAL_SAMPLES) return 'local';
    const local = this.raw('local', nowMs, r, capacity);
    return local !== undefined && local > this.raw('reported', nowMs, r, capacity)!
      ? 'local'
      : 'reported';
  }

  private raw(
    origin: Origin,
    nowMs: number,
    r: ReportDigest | undefined,
    capacity: number,
  ): number | undefined {
    if (origin === 'local') {
      const value = this.service.valueMs(nowMs);
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
      if (value === undefined || prior === undefined) return value;
      const last = this.service.lastSampleMs!;
      const w = Math.exp(-Math.max(0, nowMs - last) / (this.o.serviceDecayMs * this.backoff));
      return prior + (value - prior) * w;
    }
    if (origin === 'reported') {
      // The agent's latency includes its queue too: with a mean of N requests in the system
      // (Little) on c slots, the service part is c / N of it.
      const reported = r!.latencyMs!;
      const n = r!.meanOutstanding;
      return n !== undefined && n > capacity ? (reported * capacity) / n : reported;
    }
    return this.neutral();
  }

  /** The neutral estimate: the cohort's mean, else undefined (the caller's default). */
  private neutral(): number | undefined {
    return this.cohort?.meanServiceTimeMs();
  }
}

/** Observes max(latencyMs, the current estimate, or `neutralMs` before the first sample). */
function observeAtLeastCurrent(
  ewma: PeakEwma,
  nowMs: number,
  latencyMs: number,
  neutralMs: number,
): void {
  const floor = ewma.valueMs(nowMs) ?? neutralMs;
  ewma.observe(nowMs, floor > latencyMs ? floor : latencyMs);
}
