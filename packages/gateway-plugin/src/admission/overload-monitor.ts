/**
 * Gateway self-protection (@fastify/under-pressure): sample the event-loop
 * delay with perf_hooks' histogram on an unref'd interval; while the p99 of
 * the last sample is above the limit, new requests get 503 + Retry-After at
 * once instead of queueing inside a process that can no longer keep up.
 * Shedding early keeps the requests already admitted fast; a melting gateway
 * fails all of them.
 */
import { monitorEventLoopDelay, performance, type IntervalHistogram } from 'node:perf_hooks';

export interface OverloadConfig {
  maxEventLoopDelayMs: number;
  sampleIntervalMs: number;
}

export class OverloadMonitor {
  overloaded = false;
  /** p99 event-loop delay of the last sample, ms. */
  eventLoopDelayMs = 0;
  private readonly histogram: IntervalHistogram;
  private readonly timer: NodeJS.Timeout;
  private lastTickMs = performance.now();

  constructor(
    private readonly config: OverloadConfig,
    private readonly onChange: (overloaded: boolean, delayMs: number) => void,
  ) {
    // 10 ms resolution is what under-pressure uses: finer costs timer wakeups
    // without changing a decision made at a limit of hundreds of ms.
    this.histogram = monitorEventLoopDelay({ resolution: 10 });
    this.histogram.enable();
    this.timer = setInterval(() => this.tick(), config.sampleIntervalMs);
    this.timer.unref();
  }

  private tick(): void {
    // The sampler's own lateness is a delay measurement too, and it cannot be
    // lost: the histogram's reset() may drop a stall it had not recorded yet
    // when both timers fire right after that stall.
    const nowMs = performance.now();
    const latenessMs = nowMs - this.lastTickMs - this.config.sampleIntervalMs;
    this.lastTickMs = nowMs;
    this.sample(Math.max(this.readDelayMs(), latenessMs));
  }

  /** Applies a delay measurement (the histogram's by default); public so tests can drive it. */
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
    this.histogram.reset();
    this.lastTickMs = performance.now();
    this.sample(0);
  }

  /** Seconds a shed client should wait: the delay itself, rounded up, at least 1. */
  retryAfterSec(): number {
    return Math.min(60, Math.max(1, Math.ceil(this.eventLoopDelayMs / 1000)));
  }

  private readDelayMs(): number {
    // The histogram records ns; the resolution (10 ms) is subtracted because
    // the sampling timer itself adds it (under-pressure does the same).
    const p99Ms = this.histogram.percentile(99) / 1e6 - 10;
    this.histogram.reset();
    return Number.isFinite(p99Ms) ? Math.max(0, p99Ms) : 0;
  }

  close(): void {
    clearInterval(this.timer);
    this.histogram.disable();
  }
}
