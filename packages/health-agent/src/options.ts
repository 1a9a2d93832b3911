import { isIP } from 'node:net';
import type { SigningKey } from '@loadwise/protocol';
import {
  brokerTlsMismatch,
  brokerUrlClientIdProblem,
  brokerUrlNamesUser,
  tlsMaterialProblem,
  DEFAULT_TOPIC_PREFIX,
  assertValidBackendId,
  assertValidKey,
  assertValidPrefix,
  keyMaySign,
  isValidBackendId,
  MAX_URL_LENGTH,
} from '@loadwise/protocol';
import cron from 'node-cron';
import * as v from 'valibot';
import { invalidOption } from './errors';
import {
  boolean,
  httpUrl,
  int,
  nonEmpty,
  notArray,
  parseOptions,
  picklist,
  refine,
  show,
  strictObject,
  string,
  url,
  wrongType,
} from './option-errors';
import type { BrokerOptions } from './mqtt-publisher';
import { DEFAULT_PROBE_TIMEOUT_MS } from './probe';
import {
  QUEUE_SOURCES,
  queueSchema,
  resolveQueue,
  type QueueOptions,
  type ResolvedQueueOptions,
} from './queue';
import { HOST_SOURCES, type HostSource } from './samplers/host';
import { DEFAULT_THRESHOLDS, type Thresholds } from './verdict';

export type { QueueOptions, ResolvedQueueOptions } from './queue';

export const DEFAULT_INTERVAL_MS = 1000;
export const DEFAULT_DRAIN_GRACE_MS = 2000;
export const DEFAULT_PROC_ROOT = '/proc';
export const DEFAULT_CGROUP_ROOT = '/sys/fs/cgroup';

/**
 * What every gateway refuses in an advertised URL whatever its ranges (docs/gateway.md,
 * "Discovery"), caught at the agent's start: a bind address copied as the URL (`HOST=0.0.0.0`)
 * ran an agent whose backend every gateway refused, each later report dropped as unknown, and
 * the agent never learnt of it (a review of discovery, 2026-12-07).
 */
function advertiseHostProblem(url: URL): string | undefined {
  const host = url.hostname.replace(/^\[|\]$/g, '').toLowerCase();
  if (host === '0.0.0.0' || host === '::')
    return 'must name the address gateways reach the backend at, not an unspecified one (0.0.0.0, ::): gateways refuse it';
  if (host.startsWith('::ffff:'))
    return 'must name an IPv4 address as IPv4, not IPv4-mapped (gateways refuse it)';
  if (url.search !== '' || url.hash !== '' || url.href.endsWith('?') || url.href.endsWith('#'))
    return 'must not carry a query or a fragment (gateways refuse them)';
  return undefined;
}

const MAX_TIMER_MS = 2 ** 31 - 1;
/** systeminformation's currentLoad() spawns a shell per call on Linux; see docs/agent.md for the measured difference. */
export const DEFAULT_HOST_SOURCE: HostSource = 'proc';
/** Rise of outstanding requests that triggers an early report (early-report.ts); 0 disables. */
export const DEFAULT_EARLY_RISE = 2;
/** Least time between two reports when early reports are on, ms. */
export const DEFAULT_EARLY_MIN_GAP_MS = 300;

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
  /**
   * Register the backend at this URL with gateways that run discovery: a
   * signed, retained `register` message on every connect and every 20 s
   * (which renews the gateways' lease), cleared when the agent stops. Needs
   * `signingKey`: gateways admit signed registrations only.
   */
  advertiseUrl?: string;
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
  advertiseUrl: string | undefined;
  service: { pid?: number; pidFile?: string } | undefined;
  queue: ResolvedQueueOptions | undefined;
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
 * The one schema of these options (valibot). Every object is strict: an unknown
 * key at any depth is an error that names its full path and the nearest known
 * key. Messages name the library path (`queue.port`); the CLI shows that path
 * as the flag its user typed (config.ts). The public types above stay
 * hand-written, with their doc comments, so that no valibot type reaches the
 * package's .d.ts; the compile-time checks below keep them and the schema equal.
 * valibot rather than zod: it has a CommonJS build and no dependencies, and
 * costs ~2 MB of RSS at require against zod's ~11 MB (docs/agent.md).
 */

/** v.number() takes ±Infinity, which zod's refused as not a number: finite() says so. */
const fraction = v.pipe(
  v.number(wrongType('number')),
  v.finite(wrongType('number')),
  v.check(
    (x) => x > 0 && x <= 1,
    (iss) => `must be a number in (0, 1], got ${show(iss.input)}`,
  ),
);

/** A check of @loadwise/protocol, its message without the protocol's code. */
function asserted<T>(assert: (v: T) => void) {
  return refine<T>((x) => {
    try {
      assert(x);
      return undefined;
    } catch (err) {
      return (err as Error).message.replace(/^LW_PROTO_\w+: /, '');
    }
  });
}

const pem = v.union([v.string(), v.instance(Buffer)], 'must be PEM text or a Buffer');

const brokerFields = strictObject({
  url: url(
    ['mqtt:', 'mqtts:', 'ws:', 'wss:', 'tcp:', 'ssl:'],
    'must be an mqtt://, mqtts://, ws:// or wss:// URL',
  ),
  clientId: v.optional(v.pipe(nonEmpty(), v.maxLength(128, 'must be 1-128 characters'))),
  username: v.optional(string()),
  password: v.optional(string()),
  ca: v.optional(pem),
  cert: v.optional(pem),
  key: v.optional(pem),
  rejectUnauthorized: v.optional(boolean()),
  // A Node timer: past 2^31 - 1 ms it fires after 1 ms (a reconnect every millisecond).
  reconnectPeriodMs: v.optional(int(100, MAX_TIMER_MS)),
  connectTimeoutMs: v.optional(int(1, 600_000)),
  keepaliveS: v.optional(int(1, 65535)),
});
type BrokerIn = v.InferOutput<typeof brokerFields>;

/** A TLS option only with a TLS broker URL: the error on that option (the CLI names its flag). */
function tlsOnly(option: 'ca' | 'cert' | 'key' | 'rejectUnauthorized') {
  const problem = (b: BrokerIn): string | undefined =>
    b[option] === undefined ? undefined : brokerTlsMismatch(b.url, { [option]: b[option] });
  return v.forward<
    BrokerIn,
    v.CheckIssue<BrokerIn>,
    ['ca' | 'cert' | 'key' | 'rejectUnauthorized']
  >(
    v.check(
      (b) => problem(b) === undefined,
      (issue) => problem(issue.input as BrokerIn)!,
    ),
    [option],
  );
}

const clientIdProblem = (b: BrokerIn): string | undefined =>
  brokerUrlClientIdProblem(
    b.url,
    'leave it out, and give an agent its own id with --client-id if it needs one',
  );

const brokerSchema = notArray(
  v.pipe(
    brokerFields,
    v.forward(
      v.check(
        (b) => (b.cert === undefined) === (b.key === undefined),
        'a client certificate needs its key (and the key its certificate)',
      ),
      ['cert'],
    ),
    // TLS options beside a clear-text URL were ignored without a word (the password went
    // out in clear text); unusable material failed at the connection with a stack trace.
    tlsOnly('ca'),
    tlsOnly('cert'),
    tlsOnly('key'),
    tlsOnly('rejectUnauthorized'),
    v.forward(
      v.check(
        (b) => tlsMaterialProblem({ ca: b.ca }) === undefined,
        (issue) => tlsMaterialProblem({ ca: (issue.input as BrokerIn).ca })!,
      ),
      ['ca'],
    ),
    v.forward(
      v.check(
        // The CA was read by the check before: the pair alone here.
        (b) => tlsMaterialProblem({ cert: b.cert, key: b.key }) === undefined,
        (issue) => {
          const b = issue.input as BrokerIn;
          return tlsMaterialProblem({ cert: b.cert, key: b.key })!;
        },
      ),
      ['cert'],
    ),
    // A clientId in the URL's query: mqtt.js uses it over the agent's own id.
    v.forward(
      v.check(
        (b) => clientIdProblem(b) === undefined,
        (issue) => clientIdProblem(issue.input as BrokerIn)!,
      ),
      ['url'],
    ),
    // mqtt.js sends no password without a username (MQTT 3.1.1 has none [MQTT-3.1.2-22]):
    // the connection closed before its CONNACK, and the agent logged only "connection
    // lost", forever. A user in the URL (mqtt://alice@host) is one.
    v.forward(
      v.check(
        (b) => b.password === undefined || b.username !== undefined || brokerUrlNamesUser(b.url),
        'needs a username (--username, or a user in the broker URL): mqtt.js sends no password without one',
      ),
      ['password'],
    ),
  ),
);

const thresholdsSchema = notArray(
  strictObject({
    cpuUtilization: v.optional(fraction),
    memoryUtilization: v.optional(fraction),
    queueFull: v.optional(boolean()),
  }),
);

export const agentOptionsSchema = notArray(
  strictObject({
    backendId: v.pipe(string(), asserted(assertValidBackendId)),
    broker: v.optional(brokerSchema),
    prefix: v.optional(v.pipe(string(), asserted(assertValidPrefix))),
    serviceName: v.optional(
      v.pipe(
        string(),
        v.check((x) => isValidBackendId(x), 'must be 1-64 characters of [A-Za-z0-9._:@-]'),
      ),
    ),
    intervalMs: v.optional(int(100, 3_600_000)),
    cron: v.optional(
      v.pipe(
        string(),
        v.check(
          (x) => cron.validate(x),
          (iss) => `invalid expression ${show(iss.input)}`,
        ),
      ),
    ),
    jitterMs: v.optional(int(0, 3_600_000)),
    signingKey: v.optional(
      v.pipe(
        v.custom<SigningKey>((x) => typeof x === 'object' && x !== null, 'must be a signing key'),
        asserted(assertValidKey),
      ),
    ),
    advertiseUrl: v.optional(
      v.pipe(
        httpUrl,
        refine<string>((x) =>
          x.length > MAX_URL_LENGTH
            ? `is longer than ${MAX_URL_LENGTH} characters`
            : new URL(x).username || new URL(x).password
              ? 'must not carry credentials (gateways refuse them)'
              : isIP(new URL(x).hostname.replace(/^\[|\]$/g, '')) === 0
                ? 'must name its host by IP address (gateways refuse a name: it would be resolved after their range check)'
                : new URL(x).port === '0'
                  ? 'must not name port 0, where no server listens (gateways refuse it)'
                  : advertiseHostProblem(new URL(x)),
        ),
      ),
    ),
    service: v.optional(
      notArray(
        v.pipe(
          strictObject({ pid: v.optional(int(1)), pidFile: v.optional(nonEmpty()) }),
          v.check(
            (s) => s.pid === undefined || s.pidFile === undefined,
            'give a PID or a PID file, not both',
          ),
        ),
      ),
    ),
    queue: v.optional(queueSchema(QUEUE_SOURCES)),
    probe: v.optional(
      notArray(
        strictObject({
          url: httpUrl,
          timeoutMs: v.optional(int(1, 60_000)),
          expectStatus: v.optional(
            v.pipe(
              v.array(int(100, 599), wrongType('array')),
              v.minLength(1, 'must be a non-empty list of HTTP statuses'),
            ),
          ),
        }),
      ),
    ),
    concurrencyLimit: v.optional(int(1)),
    thresholds: v.optional(thresholdsSchema),
    hostSource: v.optional(picklist(HOST_SOURCES)),
    cgroup: v.optional(
      v.union(
        [boolean(), notArray(strictObject({ root: v.optional(nonEmpty()) }))],
        (iss) => `must be a boolean or an object, got ${show(iss.input)}`,
      ),
    ),
    procRoot: v.optional(nonEmpty()),
    drainGraceMs: v.optional(int(0, 600_000)),
    earlyRise: v.optional(int(0, 1_000_000)),
    earlyMinGapMs: v.optional(int(10, 60_000)),
    random: v.optional(
      v.custom<() => number>((x) => typeof x === 'function', 'must be a function'),
    ),
  }),
);

// Compile-time: the hand-written public types and the schema accept the same options.
type Same<A, B> = [A] extends [B] ? ([B] extends [A] ? true : false) : false;
type SameKeys<A, B> = Same<keyof A, keyof B>;
type Input = v.InferInput<typeof agentOptionsSchema>;
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
  // Every listed source has its member in QueueOptions (queue/index.ts).
  Check<Same<NonNullable<Input['queue']>['source'], QueueOptions['source']>>,
];

/** The share of the interval a sample's inputs (probe, queue source) may take at most. */
export const SAMPLE_SHARE_OF_INTERVAL = 0.9;

/** A resolved queue source with its timeout (absent or 0: none, e.g. in-process) bounded by `bound`. */
function boundQueueTimeout(
  q: ResolvedQueueOptions,
  bound: (ms: number) => number,
): ResolvedQueueOptions {
  return 'timeoutMs' in q && q.timeoutMs
    ? ({ ...q, timeoutMs: bound(q.timeoutMs) } as ResolvedQueueOptions)
    : q;
}

/**
 * Runs of a cron schedule whose gaps cronGaps() compares: a whole cycle of any schedule
 * that sets the seconds field alone (at most 60 runs a minute), or one coarser field with
 * fixed seconds (`0 *\/7 * * * *`, `0 0 0,6 * * *`). About 60-150 µs each (node-cron 4.6).
 */
const CRON_GAP_RUNS = 61;

/**
 * The longest and the shortest gap between the next CRON_GAP_RUNS runs of a cron
 * schedule. From the next two runs only, an uneven schedule's reported interval
 * depended on the second the agent started: `0,10 * * * * *` said 50 s started at :00
 * and 10 s started at :50, and with 10 s gateways judged the backend stale for up to
 * 40 s of every minute.
 */
function cronGaps(expr: string): { longestMs: number; shortestMs: number } {
  const task = cron.createTask(expr, () => undefined);
  try {
    const runs = task.getNextRuns(CRON_GAP_RUNS).map((d) => d.getTime());
    let longestMs = 0;
    let shortestMs = Infinity;
    for (let i = 1; i < runs.length; i++) {
      const gap = runs[i]! - runs[i - 1]!;
      longestMs = Math.max(longestMs, gap);
      shortestMs = Math.min(shortestMs, gap);
    }
    return longestMs > 0
      ? { longestMs, shortestMs }
      : { longestMs: DEFAULT_INTERVAL_MS, shortestMs: DEFAULT_INTERVAL_MS };
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
  const gaps = o.cron ? cronGaps(o.cron) : undefined;
  // Reports say their interval, and gateways judge staleness by it: a report every 5 s that
  // claimed 1 s looked stale 40% of the time. So a schedule's is its longest gap (reports
  // closer than that are early, never late), and the two may be given together only if
  // they agree.
  const cronMs = gaps?.longestMs;
  if (cronMs !== undefined && o.intervalMs !== undefined && o.intervalMs !== cronMs) {
    throw invalidOption(
      'intervalMs',
      `is ${o.intervalMs} ms but the cron schedule runs every ${cronMs} ms: give one of them`,
    );
  }
  const intervalMs = o.intervalMs ?? cronMs ?? DEFAULT_INTERVAL_MS;
  // Gateways would drop every message this key signs (LW_PROTO_KEY_NOT_ALLOWED): said at start.
  if (o.signingKey !== undefined && !keyMaySign(o.signingKey, o.backendId)) {
    throw invalidOption(
      'signingKey',
      `${o.signingKey.keyId} may sign only for ${o.signingKey.backends?.join(',')}, not for ${o.backendId}`,
    );
  }
  if (o.advertiseUrl !== undefined && o.signingKey === undefined) {
    throw invalidOption(
      'advertiseUrl',
      'needs signingKey: gateways admit only signed registrations (docs/gateway.md, "Discovery")',
    );
  }
  // Every input of a sample gets at most 90% of the interval, whatever its timeout, so that a
  // hung app cannot silence the agent: the sample is over before the next tick, and the
  // report (a down verdict, most likely) goes out every interval (docs/agent.md).
  // Of the shortest gap, for a schedule: a sample must be over before the next run.
  const sampleSpanMs = gaps?.shortestMs ?? intervalMs;
  const withinInterval = (timeoutMs: number): number =>
    Math.max(1, Math.min(timeoutMs, Math.floor(sampleSpanMs * SAMPLE_SHARE_OF_INTERVAL)));
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
    advertiseUrl: o.advertiseUrl,
    service: o.service?.pid !== undefined || o.service?.pidFile ? o.service : undefined,
    queue: q && boundQueueTimeout(resolveQueue(QUEUE_SOURCES, q), withinInterval),
    probe: o.probe && {
      url: new URL(o.probe.url),
      timeoutMs: withinInterval(o.probe.timeoutMs ?? DEFAULT_PROBE_TIMEOUT_MS),
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
