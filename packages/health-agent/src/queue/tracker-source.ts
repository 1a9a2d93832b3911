import http from 'node:http';
import https from 'node:https';
import {
  MAX_RISE_WAIT_MS,
  MAX_RISE_WATCHERS,
  type RiseWait,
  type TrackerSnapshot,
} from '../tracker/track-requests';
import * as v from 'valibot';
import { httpGet, only200 } from '../http-get';
import { httpUrl, strictObject } from '../option-errors';
import { DEFAULT_SOURCE_TIMEOUT_MS, defineQueueSource, sourceTimeoutMs } from './source';
import type { QueueReading, QueueSourceReader, RiseReading } from './types';

/** Anything with a snapshot(): the in-process tracker, or a test double of one. */
export interface SnapshotProvider {
  snapshot(): TrackerSnapshot;
  /** The tracker's rise watch (early reports); without it the agent reports on schedule only. */
  waitForRise?(wait: RiseWait): Promise<TrackerSnapshot>;
}

function riseReading(s: TrackerSnapshot): RiseReading {
  return { ...readingFromSnapshot(s), rose: s.rose === true };
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
  const source: QueueSourceReader = { read: async () => readingFromSnapshot(tracker.snapshot()) };
  if (typeof tracker.waitForRise === 'function') {
    source.waitForRise = async (from, rise, timeoutMs, signal) =>
      riseReading(await tracker.waitForRise!({ from, rise, timeoutMs, signal }));
  }
  return source;
}

async function fetchSnapshot(
  url: URL,
  timeoutMs: number,
  opts: { signal?: AbortSignal; agent?: http.Agent } = {},
): Promise<TrackerSnapshot> {
  const res = await httpGet(url, timeoutMs, 64 * 1024, {
    ...opts,
    // At the head, as the Prometheus source: an error page is not read to the bound (whose
    // warning named the bound, not the status). A 429 is a refused watch (track-requests.ts:
    // the watches are full), said as the tracker says it.
    onHead: only200('tracker endpoint', (status) =>
      status === 429
        ? `: its ${MAX_RISE_WATCHERS} early-report watches are held already (another client is holding them)`
        : '',
    ),
  });
  let parsed: unknown;
  try {
    parsed = JSON.parse(res.body);
  } catch {
    throw new Error('tracker endpoint did not return JSON');
  }
  if (!isSnapshot(parsed)) throw new Error('tracker endpoint returned an unexpected document');
  return parsed;
}

/**
 * Reads a tracker's `exposePath` endpoint when the agent runs as a separate
 * process. The rise watch is a long poll on the same path
 * (`?rise=&from=&waitMs=`): the tracker answers when the rise happens. The
 * watch keeps its one connection alive between answers: a new TCP connection
 * per early report cost more CPU than the rest of the report (bench:agent,
 * docs/agent.md "Measured cost").
 */
export function httpTrackerSource(url: URL, timeoutMs: number): QueueSourceReader {
  let keepAlive: http.Agent | undefined;
  return {
    read: async () => readingFromSnapshot(await fetchSnapshot(url, timeoutMs)),
    async waitForRise(from, rise, waitMs, signal) {
      // The tracker refuses (400) a longer watch: with --interval-ms above
      // its maximum, every watch failed and early reports never worked.
      const wait = Math.min(waitMs, MAX_RISE_WAIT_MS);
      const u = new URL(url);
      u.searchParams.set('rise', String(rise));
      u.searchParams.set('from', String(from));
      u.searchParams.set('waitMs', String(wait));
      keepAlive ??= new (url.protocol === 'https:' ? https.Agent : http.Agent)({
        keepAlive: true,
        maxSockets: 1,
      });
      return riseReading(await fetchSnapshot(u, wait + timeoutMs, { signal, agent: keepAlive }));
    },
    close() {
      keepAlive?.destroy();
      keepAlive = undefined;
    },
  };
}

/** `{ source: 'tracker', tracker }` in-process, or `{ source: 'tracker', url }` over HTTP (--tracker-url). */
export const trackerQueueSource = defineQueueSource('tracker', {
  schema: v.pipe(
    strictObject({
      source: v.literal('tracker'),
      tracker: v.optional(
        v.custom<SnapshotProvider>(
          (x) => typeof (x as SnapshotProvider | null)?.snapshot === 'function',
          'must have snapshot()',
        ),
      ),
      url: v.optional(httpUrl),
      timeoutMs: sourceTimeoutMs,
    }),
    v.forward(
      v.check(
        (q) => (q.tracker === undefined) !== (q.url === undefined),
        'give url (the exposePath of another process) or tracker (in-process), one of them',
      ),
      ['url'],
    ),
  ),
  resolve: (q) =>
    q.tracker
      ? { source: 'tracker', tracker: q.tracker, timeoutMs: 0 }
      : {
          source: 'tracker',
          url: new URL(q.url!),
          timeoutMs: q.timeoutMs ?? DEFAULT_SOURCE_TIMEOUT_MS,
        },
  create: (q) =>
    q.tracker ? inProcessTrackerSource(q.tracker) : httpTrackerSource(q.url!, q.timeoutMs),
  cli: [
    {
      flag: 'tracker-url',
      option: 'queue.url',
      implies: { 'queue.source': 'tracker' },
      kind: 'string',
      arg: 'url',
      help: 'Queue source: URL of the trackRequests() exposePath, e.g. http://127.0.0.1:3000/.well-known/loadwise/stats',
    },
  ],
});
