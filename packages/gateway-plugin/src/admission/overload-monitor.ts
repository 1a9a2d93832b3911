/**
 * Gateway self-protection (@fastify/under-pressure): measure the event-loop
 * delay with a 10 ms probe timer (unref'd); while the p99 delay of the last
 * sample window is above the limit, new requests get 503 + Retry-After at
 * once instead of queueing inside a process that can no longer keep up.
 * Shedding early keeps the requests already admitted fast; a melting gateway
 * fails all of them.
 *
 * The probe is ours rather than perf_hooks' monitorEventLoopDelay: that
 * histogram records nothing for a stall that starts before its first timer run
 * after enable() or reset(), and each window starts with a reset, so a stall
 * beginning just after a sample (up to the window plus the limit) was never
 * seen. Here a stall the probe has not run after yet is still measured at the
 * sample, from the probe's last run.
 *
 * The p99 is by time, not by count: each delay weighs the time its probe
 * interval covered (the delay plus the 10 ms). By count, a stall was one probe
 * run among hundreds in a window of a second or more and fell outside the p99:
 * a 1.5 s stall went unshed with `sampleIntervalMs: 2000`, or was seen only
 * when it ended with the sample due before the probe, so the same stall counted
 * or not by timer order. By time it is 40% of that window. With windows of up
 * to a second (the default 200 ms) the two are the same: the largest delay.
 * The delays go to a fixed set of 5%-wide buckets (each keeps its largest
 * delay, the figure reported), so a long window costs no more memory or sorting
 * than a short one (`sampleIntervalMs` may be up to 2^31 - 1 ms: a day's window
 * held 8.6 million delays, and sorting them stalled the loop 5.7 s).
 */
import { performance } from 'node:perf_hooks';

export interface OverloadConfig {
  maxEventLoopDelayMs: number;
  sampleIntervalMs: number;
}

/** Probe period, ms: what under-pressure uses; finer costs wakeups without changing a decision made at a limit of hundreds of ms. */
const PROBE_MS = 10;
/** Delays under 1 ms share bucket 0; above, each bucket is GROWTH times as wide as the last. */
const GROWTH = 1.05;
const LOG_GROWTH = Math.log(GROWTH);
/** Enough buckets for any delay a timer of up to 2^31 - 1 ms can see, and more. */
const BUCKETS = 2 + Math.ceil(Math.log(2 ** 32) / LOG_GROWTH);
/** The share of the window's time the reported delay may be exceeded in. */
const ABOVE_SHARE = 0.01;

export class OverloadMonitor {
  overloaded = false;
  /** p99 event-loop delay of the last sample, ms. */
  eventLoopDelayMs = 0;
  /** Time (ms) the probe intervals of this window covered, by their delay's bucket. */
  private readonly weightMs = new Float64Array(BUCKETS);
  /** The largest delay (ms) of each bucket in this window. */
  private readonly maxMs = new Float64Array(BUCKETS);
  private totalMs = 0;
  private lastProbeMs: number;
  private readonly probe: NodeJS.Timeout;
  private readonly timer: NodeJS.Timeout;

  constructor(
    private readonly config: OverloadConfig,
    private readonly onChange: (overloaded: boolean, delayMs: number) => void,
    /** Monotonic clock, ms (a test's own, to make a stall without a real one). */
    private readonly now: () => number = () => performance.now(),
  ) {
    this.lastProbeMs = now();
    this.probe = setInterval(() => this.measure(), PROBE_MS);
    this.probe.unref();
    this.timer = setInterval(() => this.sample(), config.sampleIntervalMs);
    this.timer.unref();
  }

  /** Applies a delay measurement (the probe's window by default); public so tests can drive it. */
  sample(delayMs = this.readDelayMs()): void {
    this.eventLoopDelayMs = delayMs;
    const over = delayMs > this.config.maxEventLoopDelayMs;
    if (over !== this.overloaded) {
      this.overloaded = over;
      this.onChange(over, delayMs);
    }
  }

  /**
   * Forgets what was measured so far (the warm-up's own work, warm-up.ts): not overloaded
   * until the next sample says so.
   */
  forget(): void {
    this.clear();
    this.lastProbeMs = this.now();
    this.sample(0);
  }

  /** Seconds a shed client should wait: the delay itself, rounded up, at least 1. */
  retryAfterSec(): number {
    return Math.min(60, Math.max(1, Math.ceil(this.eventLoopDelayMs / 1000)));
  }

  /** The interval since the probe (or a sample) last ran: its delay, weighed by its time. */
  private measure(): void {
    const nowMs = this.now();
    const elapsedMs = Math.max(0, nowMs - this.lastProbeMs);
    this.lastProbeMs = nowMs;
    const delayMs = Math.max(0, elapsedMs - PROBE_MS);
    const b =
      delayMs < 1 ? 0 : Math.min(BUCKETS - 1, 1 + Math.floor(Math.log(delayMs) / LOG_GROWTH));
    this.weightMs[b] = this.weightMs[b]! + elapsedMs;
    this.totalMs += elapsedMs;
    if (delayMs > this.maxMs[b]!) this.maxMs[b] = delayMs;
  }

  /**
   * p99 by time of the window's delays (the module comment), a stall still under way
   * included; the window restarts.
   */
  private readDelayMs(): number {
    // A stall that ended just now: this sample may run before the probe (both timers are
    // due), so the interval since the probe last ran counts as one of its own, the same
    // as if the probe had run first; counted here, the probe's next run does not count it.
    this.measure();
    const budgetMs = this.totalMs * ABOVE_SHARE;
    let aboveMs = 0;
    let p99 = 0;
    for (let b = BUCKETS - 1; b >= 0; b--) {
      aboveMs += this.weightMs[b]!;
      if (aboveMs > budgetMs) {
        p99 = this.maxMs[b]!;
        break;
      }
    }
    this.clear();
    return p99;
  }

  private clear(): void {
    this.weightMs.fill(0);
    this.maxMs.fill(0);
    this.totalMs = 0;
  }

  close(): void {
    clearInterval(this.timer);
    clearInterval(this.probe);
  }
}
