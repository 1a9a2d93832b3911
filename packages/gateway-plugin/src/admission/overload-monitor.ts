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
 */
import { performance } from 'node:perf_hooks';

export interface OverloadConfig {
  maxEventLoopDelayMs: number;
  sampleIntervalMs: number;
}

/** Probe period, ms: what under-pressure uses; finer costs wakeups without changing a decision made at a limit of hundreds of ms. */
const PROBE_MS = 10;

export class OverloadMonitor {
  overloaded = false;
  /** p99 event-loop delay of the last sample, ms. */
  eventLoopDelayMs = 0;
  /** Delays (ms) the probe measured in this window. */
  private delays: number[] = [];
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
    this.probe = setInterval(() => {
      const nowMs = this.now();
      this.delays.push(Math.max(0, nowMs - this.lastProbeMs - PROBE_MS));
      this.lastProbeMs = nowMs;
    }, PROBE_MS);
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
    this.delays = [];
    this.lastProbeMs = this.now();
    this.sample(0);
  }

  /** Seconds a shed client should wait: the delay itself, rounded up, at least 1. */
  retryAfterSec(): number {
    return Math.min(60, Math.max(1, Math.ceil(this.eventLoopDelayMs / 1000)));
  }

  /** p99 of the window's delays, or the stall still under way if longer; the window restarts. */
  private readDelayMs(): number {
    // A stall that ended just now: this sample may run before the probe (both timers
    // are due), so the time since the probe last ran counts as a delay too.
    const nowMs = this.now();
    const pendingMs = nowMs - this.lastProbeMs - PROBE_MS;
    // Counted here, that stall is not counted again by the probe's next run.
    this.lastProbeMs = nowMs;
    const delays = this.delays;
    this.delays = [];
    delays.sort((a, b) => a - b);
    const p99 = delays.length === 0 ? 0 : delays[Math.ceil(delays.length * 0.99) - 1]!;
    return Math.max(0, p99, pendingMs);
  }

  close(): void {
    clearInterval(this.timer);
    clearInterval(this.probe);
  }
}
