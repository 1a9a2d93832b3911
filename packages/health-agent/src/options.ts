import type { QueueField, SigningKey } from '@loadwise/protocol';
import {
  DEFAULT_TOPIC_PREFIX,
  QUEUE_FIELDS,
  assertValidBackendId,
  assertValidPrefix,
  assertValidKey,
  isValidBackendId,
} from '@loadwise/protocol';
import cron from 'node-cron';
import { invalidOption } from './errors';
import type { BrokerOptions } from './mqtt-publisher';
import { DEFAULT_PROBE_TIMEOUT_MS } from './probe';
import type { SnapshotProvider } from './queue/tracker-source';
import { HOST_SOURCES, type HostSource } from './samplers/host';
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

function int(name: string, v: unknown, min: number, max = Number.MAX_SAFE_INTEGER): number {
  if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < min || v > max) {
    throw invalidOption(name, `must be an integer from ${min} to ${max}, got ${JSON.stringify(v)}`);
  }
  return v;
}

function fraction(name: string, v: unknown): number {
  if (typeof v !== 'number' || !Number.isFinite(v) || v <= 0 || v > 1) {
    throw invalidOption(name, `must be a number in (0, 1], got ${JSON.stringify(v)}`);
  }
  return v;
}

function httpUrl(name: string, v: unknown): URL {
  let url: URL;
  try {
    url = new URL(String(v));
  } catch {
    throw invalidOption(name, `is not a URL: ${JSON.stringify(v)}`);
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:')
    throw invalidOption(name, 'must be an http(s) URL');
  return url;
}

function wrap<T>(name: string, fn: () => T): T {
  try {
    return fn();
  } catch (err) {
    throw invalidOption(name, (err as Error).message.replace(/^LW_PROTO_\w+: /, ''));
  }
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

export function resolveAgentOptions(o: AgentOptions): ResolvedAgentOptions {
  if (!o || typeof o !== 'object') throw invalidOption('options', 'must be an object');
  const backendId = wrap('backendId', () => {
    assertValidBackendId(o.backendId);
    return o.backendId;
  });
  let prefix = o.prefix ?? DEFAULT_TOPIC_PREFIX;
  wrap('prefix', () => assertValidPrefix(prefix));
  if (o.serviceName !== undefined) {
    // One topic level, the gateway's `service` option (same alphabet as a backend id).
    if (!isValidBackendId(o.serviceName))
      throw invalidOption('serviceName', 'must be 1-64 characters of [A-Za-z0-9._:@-]');
    prefix = `${prefix}/${o.serviceName}`;
  }

  let broker: BrokerOptions | undefined;
  if (o.broker) {
    let url: URL;
    try {
      url = new URL(o.broker.url);
    } catch {
      throw invalidOption('broker', `is not a URL: ${JSON.stringify(o.broker.url)}`);
    }
    if (!['mqtt:', 'mqtts:', 'ws:', 'wss:', 'tcp:', 'ssl:'].includes(url.protocol)) {
      throw invalidOption('broker', 'must be an mqtt://, mqtts://, ws:// or wss:// URL');
    }
    if (
      o.broker.clientId !== undefined &&
      (o.broker.clientId.length < 1 || o.broker.clientId.length > 128)
    ) {
      throw invalidOption('clientId', 'must be 1-128 characters');
    }
    if (o.broker.reconnectPeriodMs !== undefined)
      int('reconnectPeriodMs', o.broker.reconnectPeriodMs, 100);
    if (o.broker.keepaliveS !== undefined) int('keepaliveS', o.broker.keepaliveS, 1, 65535);
    if ((o.broker.cert === undefined) !== (o.broker.key === undefined)) {
      throw invalidOption(
        'cert',
        'a client certificate needs its key (and the key its certificate)',
      );
    }
    broker = o.broker;
  }

  let cronExpr: string | undefined;
  if (o.cron !== undefined) {
    if (typeof o.cron !== 'string' || !cron.validate(o.cron))
      throw invalidOption('cron', `invalid expression ${JSON.stringify(o.cron)}`);
    cronExpr = o.cron;
  }
  const intervalMs =
    o.intervalMs !== undefined
      ? int('intervalMs', o.intervalMs, 100, 3_600_000)
      : cronExpr
        ? cronIntervalMs(cronExpr)
        : DEFAULT_INTERVAL_MS;
  const jitterMs =
    o.jitterMs === undefined
      ? Math.min(intervalMs, 1000)
      : int('jitterMs', o.jitterMs, 0, 3_600_000);
  const random = o.random ?? Math.random;
  const offsetMs = Math.floor(random() * jitterMs);

  if (o.signingKey) wrap('signingKey', () => assertValidKey(o.signingKey!));

  let service: ResolvedAgentOptions['service'];
  if (o.service) {
    if (o.service.pid !== undefined && o.service.pidFile !== undefined) {
      throw invalidOption('servicePid', 'give a PID or a PID file, not both');
    }
    if (o.service.pid !== undefined) service = { pid: int('servicePid', o.service.pid, 1) };
    else if (o.service.pidFile) service = { pidFile: String(o.service.pidFile) };
  }

  let queue: ResolvedAgentOptions['queue'];
  const q = o.queue;
  if (q) {
    const timeoutMs = (v: number | undefined, name: string): number =>
      v === undefined ? DEFAULT_SOURCE_TIMEOUT_MS : int(name, v, 1, 60_000);
    switch (q.source) {
      case 'tracker':
        if (q.tracker) {
          if (typeof q.tracker.snapshot !== 'function')
            throw invalidOption('queue.tracker', 'must have snapshot()');
          queue = { source: 'tracker', tracker: q.tracker, timeoutMs: 0 };
        } else {
          queue = {
            source: 'tracker',
            url: httpUrl('trackerUrl', q.url),
            timeoutMs: timeoutMs(q.timeoutMs, 'trackerTimeoutMs'),
          };
        }
        break;
      case 'kernel':
        queue = { source: 'kernel', port: int('kernelPort', q.port, 1, 65535) };
        break;
      case 'prometheus': {
        if (typeof q.gauge !== 'string' || !/^[a-zA-Z_:][a-zA-Z0-9_:]*$/.test(q.gauge)) {
          throw invalidOption(
            'prometheusGauge',
            `must be a Prometheus metric name, got ${JSON.stringify(q.gauge)}`,
          );
        }
        const field = q.field ?? 'queued';
        if (!QUEUE_FIELDS.includes(field))
          throw invalidOption('prometheusField', `must be one of ${QUEUE_FIELDS.join(', ')}`);
        queue = {
          source: 'prometheus',
          url: httpUrl('prometheusUrl', q.url),
          gauge: q.gauge,
          field,
          timeoutMs: timeoutMs(q.timeoutMs, 'prometheusTimeoutMs'),
        };
        break;
      }
      default:
        throw invalidOption(
          'queue.source',
          `must be tracker, kernel or prometheus, got ${JSON.stringify((q as { source: unknown }).source)}`,
        );
    }
  }

  let probe: ResolvedAgentOptions['probe'];
  if (o.probe) {
    probe = {
      url: httpUrl('probeUrl', o.probe.url),
      timeoutMs:
        o.probe.timeoutMs === undefined
          ? DEFAULT_PROBE_TIMEOUT_MS
          : int('probeTimeoutMs', o.probe.timeoutMs, 1, 60_000),
    };
    if (o.probe.expectStatus !== undefined) {
      if (!Array.isArray(o.probe.expectStatus) || o.probe.expectStatus.length === 0) {
        throw invalidOption('probeExpectStatus', 'must be a non-empty list of HTTP statuses');
      }
      probe.expectStatus = o.probe.expectStatus.map((s) => int('probeExpectStatus', s, 100, 599));
    }
  }

  const t = o.thresholds ?? {};
  const thresholds: Thresholds = {
    cpuUtilization:
      t.cpuUtilization === undefined
        ? DEFAULT_THRESHOLDS.cpuUtilization
        : fraction('cpuThreshold', t.cpuUtilization),
    memoryUtilization:
      t.memoryUtilization === undefined
        ? DEFAULT_THRESHOLDS.memoryUtilization
        : fraction('memoryThreshold', t.memoryUtilization),
    queueFull: t.queueFull ?? DEFAULT_THRESHOLDS.queueFull,
  };
  const earlyRise =
    o.earlyRise === undefined ? DEFAULT_EARLY_RISE : int('earlyRise', o.earlyRise, 0, 1_000_000);
  const earlyMinGapMs =
    o.earlyMinGapMs === undefined
      ? DEFAULT_EARLY_MIN_GAP_MS
      : int('earlyMinGapMs', o.earlyMinGapMs, 10, 60_000);
  const hostSource = o.hostSource ?? DEFAULT_HOST_SOURCE;
  if (!HOST_SOURCES.includes(hostSource))
    throw invalidOption('hostSource', `must be one of ${HOST_SOURCES.join(', ')}`);

  return {
    backendId,
    broker,
    prefix,
    intervalMs,
    cron: cronExpr,
    offsetMs,
    signingKey: o.signingKey,
    service,
    queue,
    probe,
    concurrencyLimit:
      o.concurrencyLimit === undefined ? undefined : int('concurrencyLimit', o.concurrencyLimit, 1),
    thresholds,
    hostSource,
    cgroup:
      o.cgroup === false
        ? undefined
        : { root: (typeof o.cgroup === 'object' && o.cgroup.root) || DEFAULT_CGROUP_ROOT },
    procRoot: o.procRoot ?? DEFAULT_PROC_ROOT,
    drainGraceMs:
      o.drainGraceMs === undefined
        ? DEFAULT_DRAIN_GRACE_MS
        : int('drainGraceMs', o.drainGraceMs, 0, 600_000),
    early: earlyRise > 0 ? { rise: earlyRise, minGapMs: earlyMinGapMs } : undefined,
  };
}
