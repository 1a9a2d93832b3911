import type { QueueField, SigningKey } from '@loadwise/protocol';
import {
  DEFAULT_TOPIC_PREFIX,
  QUEUE_FIELDS,
  assertValidBackendId,
  assertValidKey,
  assertValidPrefix,
  isValidBackendId,
} from '@loadwise/protocol';
import cron from 'node-cron';
import { z } from 'zod';
import { invalidOption } from './errors';
import { parseOptions, show } from './option-errors';
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

/*
 * The one schema of these options (zod 4). Every object is strict: an unknown
 * key at any depth is an error that names its full path and the nearest known
 * key. Messages name the library path (`queue.port`); the CLI shows that path
 * as the flag its user typed (config.ts). The public types above stay
 * hand-written, with their doc comments, so that no zod type reaches the
 * package's .d.ts; the compile-time checks below keep them and the schema equal.
 */

function int(min: number, max = Number.MAX_SAFE_INTEGER) {
  const error = (iss: { input?: unknown }): string =>
    `must be an integer from ${min} to ${max}, got ${show(iss.input)}`;
  return z.int({ error }).min(min, { error }).max(max, { error });
}

const fraction = z.number().refine((v) => v > 0 && v <= 1, {
  error: (iss) => `must be a number in (0, 1], got ${show(iss.input)}`,
});

/** A check of @loadwise/protocol, its message without the protocol's code. */
function asserted<S extends z.ZodType>(schema: S, assert: (v: z.output<S>) => void): S {
  return schema.superRefine((v, ctx) => {
    try {
      assert(v);
    } catch (err) {
      ctx.addIssue({
        code: 'custom',
        message: (err as Error).message.replace(/^LW_PROTO_\w+: /, ''),
      });
    }
  });
}

function url(protocols: readonly string[], wrong: string) {
  return z.string().superRefine((v, ctx) => {
    let parsed: URL;
    try {
      parsed = new URL(v);
    } catch {
      ctx.addIssue({ code: 'custom', message: `is not a URL: ${show(v)}` });
      return;
    }
    if (!protocols.includes(parsed.protocol)) ctx.addIssue({ code: 'custom', message: wrong });
  });
}
const httpUrl = url(['http:', 'https:'], 'must be an http(s) URL');
const pem = z.union([z.string(), z.instanceof(Buffer)], { error: 'must be PEM text or a Buffer' });
const sourceTimeoutMs = int(1, 60_000).optional();

const brokerSchema = z
  .strictObject({
    url: url(
      ['mqtt:', 'mqtts:', 'ws:', 'wss:', 'tcp:', 'ssl:'],
      'must be an mqtt://, mqtts://, ws:// or wss:// URL',
    ),
    clientId: z.string().min(1).max(128, 'must be 1-128 characters').optional(),
    username: z.string().optional(),
    password: z.string().optional(),
    ca: pem.optional(),
    cert: pem.optional(),
    key: pem.optional(),
    rejectUnauthorized: z.boolean().optional(),
    reconnectPeriodMs: int(100).optional(),
    connectTimeoutMs: int(1, 600_000).optional(),
    keepaliveS: int(1, 65535).optional(),
  })
  .refine((b) => (b.cert === undefined) === (b.key === undefined), {
    path: ['cert'],
    error: 'a client certificate needs its key (and the key its certificate)',
  });

const queueSchema = z.discriminatedUnion('source', [
  z
    .strictObject({
      source: z.literal('tracker'),
      tracker: z
        .custom<SnapshotProvider>(
          (v) => typeof (v as SnapshotProvider | null)?.snapshot === 'function',
          'must have snapshot()',
        )
        .optional(),
      url: httpUrl.optional(),
      timeoutMs: sourceTimeoutMs,
    })
    .refine((q) => (q.tracker === undefined) !== (q.url === undefined), {
      path: ['url'],
      error: 'give url (the exposePath of another process) or tracker (in-process), one of them',
    }),
  z.strictObject({ source: z.literal('kernel'), port: int(1, 65535) }),
  z.strictObject({
    source: z.literal('prometheus'),
    url: httpUrl,
    gauge: z.string().regex(/^[a-zA-Z_:][a-zA-Z0-9_:]*$/, {
      error: (iss) => `must be a Prometheus metric name, got ${show(iss.input)}`,
    }),
    field: z.enum(QUEUE_FIELDS).optional(),
    timeoutMs: sourceTimeoutMs,
  }),
]);

const thresholdsSchema = z.strictObject({
  cpuUtilization: fraction.optional(),
  memoryUtilization: fraction.optional(),
  queueFull: z.boolean().optional(),
});

export const agentOptionsSchema = z.strictObject({
  backendId: asserted(z.string(), assertValidBackendId),
  broker: brokerSchema.optional(),
  prefix: asserted(z.string(), assertValidPrefix).optional(),
  serviceName: z
    .string()
    .refine(isValidBackendId, 'must be 1-64 characters of [A-Za-z0-9._:@-]')
    .optional(),
  intervalMs: int(100, 3_600_000).optional(),
  cron: z
    .string()
    .refine((v) => cron.validate(v), { error: (iss) => `invalid expression ${show(iss.input)}` })
    .optional(),
  jitterMs: int(0, 3_600_000).optional(),
  signingKey: asserted(
    z.custom<SigningKey>((v) => typeof v === 'object' && v !== null, 'must be a signing key'),
    assertValidKey,
  ).optional(),
  service: z
    .strictObject({ pid: int(1).optional(), pidFile: z.string().min(1).optional() })
    .refine(
      (s) => s.pid === undefined || s.pidFile === undefined,
      'give a PID or a PID file, not both',
    )
    .optional(),
  queue: queueSchema.optional(),
  probe: z
    .strictObject({
      url: httpUrl,
      timeoutMs: int(1, 60_000).optional(),
      expectStatus: z
        .array(int(100, 599))
        .min(1, 'must be a non-empty list of HTTP statuses')
        .optional(),
    })
    .optional(),
  concurrencyLimit: int(1).optional(),
  thresholds: thresholdsSchema.optional(),
  hostSource: z.enum(HOST_SOURCES).optional(),
  cgroup: z.union([z.boolean(), z.strictObject({ root: z.string().min(1).optional() })]).optional(),
  procRoot: z.string().min(1).optional(),
  drainGraceMs: int(0, 600_000).optional(),
  earlyRise: int(0, 1_000_000).optional(),
  earlyMinGapMs: int(10, 60_000).optional(),
  random: z.custom<() => number>((v) => typeof v === 'function', 'must be a function').optional(),
});

// Compile-time: the hand-written public types and the schema accept the same options.
type Same<A, B> = [A] extends [B] ? ([B] extends [A] ? true : false) : false;
type SameKeys<A, B> = Same<keyof A, keyof B>;
type Input = z.input<typeof agentOptionsSchema>;
type Check<T extends true> = T;
export type _SchemaMatchesTypes = [
  Check<Same<Omit<Input, 'queue'>, Omit<AgentOptions, 'queue'>>>,
  Check<SameKeys<Required<Input>, Required<AgentOptions>>>,
  Check<SameKeys<NonNullable<Input['broker']>, BrokerOptions>>,
  Check<Same<NonNullable<Input['broker']>, BrokerOptions>>,
  Check<SameKeys<NonNullable<Input['thresholds']>, Thresholds>>,
  Check<SameKeys<NonNullable<Input['probe']>, NonNullable<AgentOptions['probe']>>>,
  Check<SameKeys<NonNullable<Input['service']>, NonNullable<AgentOptions['service']>>>,
  // The schema's tracker variant is one object with url or tracker; the type has two variants.
  Check<QueueOptions extends NonNullable<Input['queue']> ? true : false>,
];

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
 * Validates the options against the schema (agentOptionsSchema above: unknown keys
 * and bad values throw LW_AGENT_INVALID_OPTION naming the option's path),
 * then fills in the defaults.
 */
export function resolveAgentOptions(input: AgentOptions): ResolvedAgentOptions {
  if (!input || typeof input !== 'object') throw invalidOption('options', 'must be an object');
  const o = parseOptions(agentOptionsSchema, input);
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
