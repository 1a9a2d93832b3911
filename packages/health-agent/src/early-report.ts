import type { QueueMetrics } from '@loadwise/protocol';
import type { QueueSourceReader, RiseReading } from './queue/types';

/**
 * Early reports: between two scheduled reports, publish one more as soon as
 * the backend's outstanding requests (in flight + queued + accept backlog)
 * rise by `rise` or more over the last published figure.
 *
 * Why: a report once an interval describes one instant of it. A client the
 * gateways do not see (a batch job, another gateway fleet) can fill a
 * backend's slots right after a report, and the gateways keep sending at the
 * rate that report allowed for the rest of the interval (bench scenario 2,
 * bench/results/hidden-load.md).
 *
 * How: the queue source's rise watch (a tracker answers a long poll the
 * moment the rise happens: track-requests.ts waitForRise), so a jump costs
 * one answer and one publish, not a poll every few ms. Rate limit: no
 * report, early or scheduled, closer than `minGapMs` to the previous one;
 * a rise that happens sooner is published when the gap has passed, if it
 * still stands. The CPU cost per early report is measured by
 * `npm run bench:agent` (docs/agent.md, "Early reports").
 */
export interface EarlyReporterOptions {
  source: Required<Pick<QueueSourceReader, 'waitForRise'>>;
  /** Rise of outstanding requests that triggers a report, >= 1. */
  rise: number;
  /** Least time between two reports, ms. */
  minGapMs: number;
  /** How long one watch is held before it is renewed, ms (the interval: one idle answer per interval). */
  waitMs: number;
  /** Pause after a failed watch, or while nothing was published yet, ms. */
  retryMs: number;
  /**
   * Outstanding requests of the last published report and when it went out
   * (on `now`'s clock: performance.now() by default); undefined before the first.
   */
  last(): { outstanding: number; atMs: number } | undefined;
  /**
   * Publishes an early report made of this reading; false when it could not
   * go out (broker unreachable): the watch then pauses retryMs rather than
   * find the same rise again at once.
   */
  publish(reading: RiseReading): boolean;
  onError(err: Error): void;
  /**
   * Clock of the gap, ms (default performance.now()): monotonic, so a wall clock
   * stepped back (an NTP step, a VM resume) does not hold early reports as long as the step.
   */
  now?: () => number;
}

/** Requests at the backend as a report states them (the gateway's `outstanding`, report-digest.ts). */
export function outstandingOf(queue: QueueMetrics | undefined): number | undefined {
  if (!queue) return undefined;
  const { inFlight, queued, acceptBacklog } = queue;
  if (inFlight === undefined && queued === undefined && acceptBacklog === undefined)
    return undefined;
  return (inFlight ?? 0) + (queued ?? 0) + (acceptBacklog ?? 0);
}

function sleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal.aborted) return resolve();
    const done = (): void => {
      clearTimeout(timer);
      signal.removeEventListener('abort', done);
      resolve();
    };
    const timer = setTimeout(done, ms);
    timer.unref();
    signal.addEventListener('abort', done, { once: true });
  });
}

export class EarlyReporter {
  private controller: AbortController | undefined;
  private loop: Promise<void> | undefined;
  private readonly now: () => number;

  constructor(private readonly o: EarlyReporterOptions) {
    this.now = o.now ?? (() => performance.now());
  }

  start(): void {
    if (this.controller) return;
    this.controller = new AbortController();
    this.loop = this.run(this.controller.signal);
  }

  /** Ends the watch (an HTTP long poll is aborted) and waits for the loop to leave. */
  async stop(): Promise<void> {
    this.controller?.abort();
    await this.loop;
  }

  private async run(signal: AbortSignal): Promise<void> {
    const o = this.o;
    while (!signal.aborted) {
      const last = o.last();
      if (last === undefined) {
        await sleep(o.retryMs, signal);
        continue;
      }
      const gap = last.atMs + o.minGapMs - this.now();
      if (gap > 0) {
        await sleep(gap, signal);
        continue;
      }
      const startedMs = this.now();
      let reading: RiseReading;
      try {
        reading = await o.source.waitForRise(last.outstanding, o.rise, o.waitMs, signal);
      } catch (err) {
        if (signal.aborted) break;
        o.onError(err as Error);
        await sleep(o.retryMs, signal);
        continue;
      }
      if (signal.aborted) break;
      if (!reading.rose) {
        // An answer without a rise well before the wait ran out (a tracker that
        // refuses more watchers, or is closing): do not spin.
        if (this.now() - startedMs < o.minGapMs) await sleep(o.retryMs, signal);
        continue;
      }
      // A scheduled report may have gone out while the watch was held: the rise
      // must stand against it, and the gap counts from it.
      const latest = o.last();
      if (latest !== undefined && latest.atMs !== last.atMs) {
        const n = outstandingOf(reading.queue);
        if (n === undefined || n < latest.outstanding + o.rise) continue;
        if (this.now() - latest.atMs < o.minGapMs) continue;
      }
      if (!o.publish(reading)) await sleep(o.retryMs, signal);
    }
  }
}
