import type { TrackerSnapshot } from '../tracker/track-requests';
import { httpGet } from '../http-get';
import type { QueueReading, QueueSourceReader } from './types';

/** Anything with a snapshot(): the in-process tracker, or a test double of one. */
export interface SnapshotProvider {
  snapshot(): TrackerSnapshot;
}

export function readingFromSnapshot(s: TrackerSnapshot): QueueReading {
  const reading: QueueReading = {
    queue: {
      inFlight: s.inFlight,
      queued: s.queued,
      source: { inFlight: 'tracker', queued: 'tracker' },
    },
    traffic: { rps: s.rps, errorRate: s.errorRate, windowMs: s.windowMs },
  };
  // No completed request in the window means no latency figure, not a latency of 0.
  if ((s.windowCompleted ?? s.completed) > 0) {
    Object.assign(reading.traffic!, {
      latencyMeanMs: s.latencyMeanMs,
      latencyP50Ms: s.latencyP50Ms,
      latencyP90Ms: s.latencyP90Ms,
      latencyP99Ms: s.latencyP99Ms,
    });
  }
  if (s.concurrencyLimit !== undefined) reading.concurrencyLimit = s.concurrencyLimit;
  if (s.maxQueue !== undefined) reading.maxQueue = s.maxQueue;
  return reading;
}

function isSnapshot(v: unknown): v is TrackerSnapshot {
  if (!v || typeof v !== 'object') return false;
  const o = v as Record<string, unknown>;
  const finite = (k: string): boolean =>
    typeof o[k] === 'number' && Number.isFinite(o[k]) && (o[k] as number) >= 0;
  return ['inFlight', 'queued', 'rps', 'errorRate', 'windowMs', 'completed'].every(finite);
}

export function inProcessTrackerSource(tracker: SnapshotProvider): QueueSourceReader {
  return { read: async () => readingFromSnapshot(tracker.snapshot()) };
}

/** Reads a tracker's `exposePath` endpoint when the agent runs as a separate process. */
export function httpTrackerSource(url: URL, timeoutMs: number): QueueSourceReader {
  return {
    async read() {
      const res = await httpGet(url, timeoutMs, 64 * 1024);
      if (res.status !== 200) throw new Error(`tracker endpoint answered ${res.status}`);
      let parsed: unknown;
      try {
        parsed = JSON.parse(res.body);
      } catch {
        throw new Error('tracker endpoint did not return JSON');
      }
      if (!isSnapshot(parsed)) throw new Error('tracker endpoint returned an unexpected document');
      return readingFromSnapshot(parsed);
    },
  };
}
