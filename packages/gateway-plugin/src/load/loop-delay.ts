/**
 * How late this gateway's own event loop runs: the resolution of every
 * latency it measures. A backend's latency is timed from the request's start
 * to the response's parse, and a response that waits for a busy loop (a GC
 * pause, a burst of parsing) is timed that much longer, whichever backend sent
 * it. On instant backends behind a gateway on a busy 2-core machine, the
 * service-time estimates of identical backends differed by 10-200% for
 * seconds after such stalls (a diagnostic of 2026-12-01 in docs/strategies.md,
 * "Ties"), and P2C, which always takes the lower of two, sent one of three
 * identical backends nothing for 3.5 s: an estimate only a pick can refresh.
 *
 * The figure is the mean lateness of a 10 ms timer (perf_hooks'
 * monitorEventLoopDelay, whose sampling timer runs in C++), read every 500 ms;
 * `valueMs` is the largest of the last four reads, so it covers the ~1 s
 * EWMA that carries a stall's samples.
 *
 * The lateness is the process's, not a balancer's: every balancer of the
 * process (one per service, the warm-up's shadow) shares one sampler through
 * acquireLoopDelay() / releaseLoopDelay().
 */
import { monitorEventLoopDelay, type IntervalHistogram } from 'node:perf_hooks';
import { monotonicNow } from '../clock';

const RESOLUTION_MS = 10;
const READ_EVERY_MS = 500;
const WINDOWS = 4;
/** The stall timer's period (tick, delayedMs). */
const STALL_TICK_MS = 50;
/** Two ticks this much further apart than STALL_TICK_MS: the loop stood still between them. */
const MIN_STALL_MS = 50;
/**
 * A stall that ended this close before an event delayed it: its answer came during the
 * stall and was handled once it ended (the tick that records the end runs first, then the
 * answers that waited; 20 ms missed them in a test process whose loop had just stood
 * still for 800 ms). An answer that came within this long after a stall ended loses the
 * stall from its sample too (a 600 ms backend read 420 ms after a 200 ms stall that ended
 * 30 ms before its answer): the price of catching the ones it delayed.
 */
const STALL_NEAR_MS = 50;
/** Stalls remembered: far more than fit in a request's time. */
const STALLS = 32;

export class LoopDelay {
  /** Mean event-loop lateness, ms: the largest of the last WINDOWS reads. */
  valueMs = 0;
  private readonly histogram: IntervalHistogram;
  private readonly timer: NodeJS.Timeout;
  private readonly reads = new Float64Array(WINDOWS);
  private next = 0;
  /** The loop's recent stalls, [start, end) on the gateway's clock (clock.ts). */
  private readonly stallStarts = new Float64Array(STALLS);
  private readonly stallEnds = new Float64Array(STALLS);
  private nextStall = 0;
  private lastTickMs = monotonicNow();
  private readonly stallTimer: NodeJS.Timeout;

  constructor() {
    this.histogram = monitorEventLoopDelay({ resolution: RESOLUTION_MS });
    this.histogram.enable();
    this.timer = setInterval(() => this.read(), READ_EVERY_MS);
    this.timer.unref();
    this.stallTimer = setInterval(() => this.tick(), STALL_TICK_MS);
    this.stallTimer.unref();
  }

  /** One tick of the stall timer (public, with its time, so tests can drive it). */
  tick(nowMs = monotonicNow()): void {
    const gapMs = nowMs - this.lastTickMs - STALL_TICK_MS;
    this.lastTickMs = nowMs;
    if (gapMs <= MIN_STALL_MS) return;
    this.stallStarts[this.nextStall] = nowMs - gapMs;
    this.stallEnds[this.nextStall] = nowMs;
    this.nextStall = (this.nextStall + 1) % STALLS;
  }

  /**
   * How long this process's event loop, standing still (stalls of over MIN_STALL_MS: a GC
   * pause, a long synchronous task, the process stopped or descheduled), delayed an event
   * timed from `fromMs` and handled at `eventMs` (the gateway's clock). A backend's latency
   * is timed by this loop, and a 2 s stall read as 1.8 s of latency on every backend with a
   * request in flight: the others took all the traffic for 11 s, until the figures decayed
   * (request-flow.ts endAttempt takes it out).
   *
   * Only a stall that can have delayed it counts: one that ended within STALL_NEAR_MS of
   * the event (the answer came during it and was handled once it ended), and one still
   * going on (an answer handled right after a long task, before the tick that records it;
   * counted from the tick that did not come). A stall in the middle of a 2 s wait delayed
   * nothing: taken out, a 2 s backend read 1.5 s after a 500 ms stall; so did one just
   * after the request's start, once the request was written (a request whose connection
   * opened during a stall is sent late, and that delay stays in its sample).
   */
  delayedMs(fromMs: number, eventMs: number): number {
    let sum = 0;
    for (let i = 0; i < STALLS; i++) {
      const end = this.stallEnds[i]!;
      if (end <= fromMs || end < eventMs - STALL_NEAR_MS) continue;
      const start = this.stallStarts[i]!;
      const overlap = (end < eventMs ? end : eventMs) - (start > fromMs ? start : fromMs);
      if (overlap > 0) sum += overlap;
    }
    const missedSince = this.lastTickMs + STALL_TICK_MS;
    if (eventMs - missedSince > MIN_STALL_MS) {
      const overlap = eventMs - (missedSince > fromMs ? missedSince : fromMs);
      if (overlap > 0) sum += overlap;
    }
    return sum;
  }

  private read(): void {
    // Nanoseconds; the sampling timer's own period is in every sample.
    const meanMs = this.histogram.mean / 1e6 - RESOLUTION_MS;
    this.histogram.reset();
    this.record(Number.isFinite(meanMs) && meanMs > 0 ? meanMs : 0);
  }

  /** One read, ms (public so tests can drive it). */
  record(ms: number): void {
    this.reads[this.next] = ms;
    this.next = (this.next + 1) % WINDOWS;
    let max = 0;
    for (const r of this.reads) if (r > max) max = r;
    this.valueMs = max;
  }

  close(): void {
    clearInterval(this.timer);
    clearInterval(this.stallTimer);
    this.histogram.disable();
  }
}

let shared: LoopDelay | undefined;
let users = 0;

/** The process's sampler, started by its first user. */
export function acquireLoopDelay(): LoopDelay {
  users++;
  shared ??= new LoopDelay();
  return shared;
}

/** One user is done with it; the last one stops it. */
export function releaseLoopDelay(d: LoopDelay): void {
  if (d !== shared) return d.close();
  if (--users > 0) return;
  shared = undefined;
  d.close();
}
