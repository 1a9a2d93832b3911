import type { QueueMetrics, TrafficMetrics } from '@loadwise/protocol';

export interface QueueReading {
  queue?: QueueMetrics;
  traffic?: TrafficMetrics;
  concurrencyLimit?: number;
  /** The tracker's queue bound, to tell "queue full". */
  maxQueue?: number;
}

/** One configured request-queue source. read() may reject; the agent reports the failure. */
export interface QueueSourceReader {
  read(): Promise<QueueReading>;
}
