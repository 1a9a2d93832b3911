import type { QueueMetrics, TrafficMetrics } from '@loadwise/protocol';

export interface QueueReading {
  queue?: QueueMetrics;
  traffic?: TrafficMetrics;
  concurrencyLimit?: number;
  /** The tracker's queue bound, to tell "queue full". */
  maxQueue?: number;
}

/** A reading taken because outstanding requests rose (`rose`), or after the wait ran out. */
export interface RiseReading extends QueueReading {
  rose: boolean;
}

/** One configured request-queue source. read() may reject; the agent reports the failure. */
export interface QueueSourceReader {
  read(): Promise<QueueReading>;
  /**
   * The reading counts the connections to the backend's port (the kernel source): the agent
   * takes it before the probe opens its own connection there, which it would count as load.
   */
  countsConnections?: boolean;
  /**
   * Only sources that can tell a rise when it happens (a tracker): resolves
   * once inFlight + queued rose by `rise` over the lowest figure since `from`,
   * or after `timeoutMs` with `rose: false` (early-report.ts).
   */
  waitForRise?(
    from: number,
    rise: number,
    timeoutMs: number,
    signal: AbortSignal,
  ): Promise<RiseReading>;
  /** Releases what the source keeps open between reads (the watch's keep-alive connection). */
  close?(): void;
}
