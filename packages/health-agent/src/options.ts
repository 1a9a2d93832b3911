import type { QueueField, SigningKey } from '@loadwise/protocol';
import { DEFAULT_TOPIC_PREFIX } from '@loadwise/protocol';
import cron from 'node-cron';
import { invalidOption } from './errors';
import { parseAgentOptions } from './options-schema';
import type { BrokerOptions } from './mqtt-publisher';
import { DEFAULT_PROBE_TIMEOUT_MS } from './probe';
import type { SnapshotProvider } from './queue/tracker-source';
import type { HostSource } from './samplers/host';
import { DEFAULT_THRESHOLDS, type Thresholds } from './verdict';

export const DEFAULT_INTERVAL_MS = 1000;
export const DEFAULT_DRAIN_GRACE_MS = 2000;
export const DEFAULT_SOURCE_TIMEOUT_MS = 500;
export const DEFAULT_PROC_ROOT = '/proc';
export const DEFAULT_CGROUP_ROOT = '/sys/fs/cgroup';
/** systeminformation's currentLoad() spawns a shell per call on Linux; see docs/agent.md for the measured difference. */
export const DEFAULT_HOST_SOURCE: HostSource = 'proc';
/** Rise of outstanding requests that triggers an early report (early-report.ts); 0 disables. */
export const DEFAULT_EARLY_RISE = 2;
/** Least time between two reports when early reports are on, ms. */
export const DEFAULT_EARLY_MIN_GAP_MS = 300;

export type QueueOptions =
  /** In-process: pass the middleware returned by trackRequests(). */
  | { source: 'tracker'; tracker: SnapshotProvider; url?: undefined; timeoutMs?: number }
  /** Separate process: the URL of the tracker's exposePath. */
  | { source: 'tracker'; url: string; tracker?: undefined; timeoutMs?: number }
  /** Zero-code: accept backlog and established connections of a listening port, from /proc/net/tcp*. */
  | { source: 'kernel'; port: number }
  /** A Prometheus text endpoint; `gauge` is summed across label sets and reported as `field` (default queued). */
  | { source: 'prometheus'; url: string; gauge: string; field?: QueueField; timeoutMs?: number };

export interface AgentOptions {
  backendId: string;
  /** Omit to sample without publishing (library use, `--once`). */
  broker?: BrokerOptions;
  prefix?: string;
  /**
   * The gateway balancer's `service` this backend belongs to: topics go under
   * `<prefix>/<serviceName>`, which only that balancer subscribes to.
   */
  serviceName?: string;
  /** Sampling interval, ms (default 1000). Ignored when `cron` is set, except as reported intervalMs. */
  intervalMs?: number;
  /** node-cron expression (seconds field allowed), instead of intervalMs. */
  cron?: string;
  /** Largest random per-agent offset after each scheduled instant, ms (default min(interval, 1000)); 0 disables. */
  jitterMs?: number;
  signingKey?: SigningKey;
  /** The watched service process, for its CPU and RSS (Linux /proc). */
  service?: { pid?: number; pidFile?: string };
  queue?: QueueOptions;
  probe?: { url: string; timeoutMs?: number; expectStatus?: number[] };
  /** Requests the service serves at once; overrides what the tracker reports. */
  concurrencyLimit?: number;
  thresholds?: Partial<Thresholds>;
  hostSource?: HostSource;
  /** cgroup limits (default on, root /sys/fs/cgroup); false to skip. */
  cgroup?: boolean | { root?: string };
  procRoot?: string;
  /** How long stop() reports `draining` before `offline`, ms (default 2000). */
  drainGraceMs?: number;
  /**
   * Publish an early report when outstanding requests rise by this many over
   * the last published figure (default 2; 0 disables). Needs a tracker queue
   * source (it watches the rise as it happens); other sources report on schedule only.
   */
  earlyRise?: number;
  /** Least time between two reports when early reports are on, ms (default 300, 10..60000). */
  earlyMinGapMs?: number;
  /** Random source for the jitter offset; injectable for tests. */
  random?: () => number;
}

export interface ResolvedAgentOptions {
  backendId: string;
  broker: BrokerOptions | undefined;
  prefix: string;
  intervalMs: number;
  cron: string | undefined;
  offsetMs: number;
  signingKey: SigningKey | undefined;
  service: { pid?: number; pidFile?: string } | undefined;
  queue:
    | { source: 'tracker'; tracker?: SnapshotProvider; url?: URL; timeoutMs: number }
    | { source: 'kernel'; port: number }
    | { source: 'prometheus'; url: URL; gauge: string; field: QueueField; timeoutMs: number }
    | undefined;
  probe: { url: URL; timeoutMs: number; expectStatus?: number[] } | undefined;
  concurrencyLimit: number | undefined;
  thresholds: Thresholds;
  hostSource: HostSource;
  cgroup: { root: string } | undefined;
  procRoot: string;
  drainGraceMs: number;
  /** Early reports (early-report.ts); undefined when off. */
  early: { rise: number; minGapMs: number } | undefined;
}

/** Derives the spacing of a cron schedule from its next two runs. */
function cronIntervalMs(expr: string): number {
  const task = cron.createTask(expr, () => undefined);
  try {
    const [a, b] = task.getNextRuns(2);
    return a && b ? b.getTime() - a.getTime() : DEFAULT_INTERVAL_MS;
  } finally {
    void task.destroy();
  }
}

/**
 * Validates the options against the schema (options-schema.ts: unknown keys
 * and bad values throw LW_AGENT_INVALID_OPTION naming the option's path),
 * then fills in the defaults.
 */
export function resolveAgentOptions(input: AgentOptions): ResolvedAgentOptions {
  if (!input || typeof input !== 'object') throw invalidOption('options', 'must be an object');
  const o = parseAgentOptions(input);
  const prefix = o.prefix ?? DEFAULT_TOPIC_PREFIX;
  const intervalMs = o.intervalMs ?? (o.cron ? cronIntervalMs(o.cron) : DEFAULT_INTERVAL_MS);
  const jitterMs = o.jitterMs ?? Math.min(intervalMs, 1000);
  const random = o.random ?? Math.random;
  const q = o.queue;
  const earlyRise = o.earlyRise ?? DEFAULT_EARLY_RISE;
  return {
    backendId: o.backendId,
    broker: o.broker,
    // One topic level, the gateway's `service` option (same alphabet as a backend id).
    prefix: o.serviceName !== undefined ? `${prefix}/${o.serviceName}` : prefix,
    intervalMs,
    cron: o.cron,
    offsetMs: Math.floor(random() * jitterMs),
    signingKey: o.signingKey,
    service: o.service?.pid !== undefined || o.service?.pidFile ? o.service : undefined,
    queue:
      q?.source === 'tracker'
        ? q.tracker
          ? { source: 'tracker', tracker: q.tracker, timeoutMs: 0 }
          : {
              source: 'tracker',
              url: new URL(q.url!),
              timeoutMs: q.timeoutMs ?? DEFAULT_SOURCE_TIMEOUT_MS,
            }
        : q?.source === 'prometheus'
          ? {
              source: 'prometheus',
              url: new URL(q.url),
              gauge: q.gauge,
              field: q.field ?? 'queued',
              timeoutMs: q.timeoutMs ?? DEFAULT_SOURCE_TIMEOUT_MS,
            }
          : q,
    probe: o.probe && {
      url: new URL(o.probe.url),
      timeoutMs: o.probe.timeoutMs ?? DEFAULT_PROBE_TIMEOUT_MS,
      ...(o.probe.expectStatus ? { expectStatus: o.probe.expectStatus } : {}),
    },
    concurrencyLimit: o.concurrencyLimit,
    thresholds: { ...DEFAULT_THRESHOLDS, ...o.thresholds },
    hostSource: o.hostSource ?? DEFAULT_HOST_SOURCE,
    cgroup:
      o.cgroup === false
        ? undefined
        : { root: (typeof o.cgroup === 'object' && o.cgroup.root) || DEFAULT_CGROUP_ROOT },
    procRoot: o.procRoot ?? DEFAULT_PROC_ROOT,
    drainGraceMs: o.drainGraceMs ?? DEFAULT_DRAIN_GRACE_MS,
    early:
      earlyRise > 0
        ? { rise: earlyRise, minGapMs: o.earlyMinGapMs ?? DEFAULT_EARLY_MIN_GAP_MS }
        : undefined,
  };
}
