/**
 * The one schema of `loadBalance(opts)` (valibot), checked once, at
 * construction (http-proxy-middleware's verifyConfig, fastify's option
 * checks): which keys exist, what each accepts, and, from options.ts
 * DEFAULTS, what an absent one becomes. Every object is strict: an unknown
 * key at any depth throws LW_GW_INVALID_OPTION with its path and the nearest
 * known key. Every mistake throws a GatewayError with a stable code, for the
 * first bad option (option-errors.ts); nothing on the request path re-checks
 * options. ResolvedOptions is this schema's output.
 *
 * The public types stay hand-written in options.ts, with their doc comments;
 * the compile-time checks at the end keep them and the schema equal.
 */
import { isIP, Server as NetServer } from 'node:net';
import type { Registry as MetricsRegistry } from 'prom-client';
import {
  brokerTlsMismatch,
  brokerUrlClientIdProblem,
  brokerUrlNamesUser,
  tlsMaterialProblem,
  assertValidKey,
  assertValidPrefix,
  isValidBackendId,
  type SigningKey,
} from '@loadwise/protocol';
import type { MqttClient } from 'mqtt';
import * as v from 'valibot';
import { GatewayError, invalidOption, shown } from './errors';
import { HEALTH_CHECK_JITTER } from './health/active-checker';
import { loadOptionsInput, type EndpointLoadOptions } from './load/load-options';
import { defaultLogger } from './observability/event-log';
import { STRATEGY_NAMES } from './strategies/registry';
import { FORWARDING_ALIASES } from './proxy/forwarded';
import { checkPath, isHostValue } from './proxy/request-checks';
import { embeddedInWorkerProblem } from './transport/embedded-broker';
import {
  type Check,
  type Fail,
  type Same,
  crossCheck,
  expected,
  fixed,
  isObject,
  leaf,
  parseOptions,
  strict,
} from './option-errors';
import {
  DEFAULTS,
  type BackendConfig,
  type BrokerOption,
  type CloseOptions,
  type LoadBalanceOptions,
  type Logger,
  type ProxyEventHooks,
  type ReadyOptions,
  type ResolvedOptions,
} from './options';

const HEADER_NAME_RE = /^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/;
const BROKER_PROTOCOLS = new Set(['mqtt:', 'mqtts:', 'ws:', 'wss:', 'tcp:', 'ssl:']);
export const MAX_TIMER_MS = 2 ** 31 - 1;
/** trustForwarded as a number of proxies in front: more than any real chain. */
export const MAX_TRUSTED_HOPS = 32;
/** The dashboard token travels in URLs: long, and unlocking nothing else. */
export const MIN_DASHBOARD_TOKEN_LENGTH = 16;

// Leaves: each says what it accepts in the words of its error.

function num(min: number, max = Infinity, int = false) {
  // Number.MIN_VALUE as the least: "above 0", not [5e-324, ...].
  const low = min === Number.MIN_VALUE ? `(0` : `[${min}`;
  const range =
    max === Infinity ? (min === Number.MIN_VALUE ? '> 0' : `>= ${min}`) : `in ${low}, ${max}]`;
  const wrong = expected(`${int ? 'an integer' : 'a number'} ${range}`);
  return leaf<number>((x) =>
    typeof x !== 'number' ||
    !Number.isFinite(x) ||
    x < min ||
    x > max ||
    (int && !Number.isInteger(x))
      ? wrong(x)
      : undefined,
  );
}
const int = (min: number, max = Infinity) => num(min, max, true);
/**
 * A duration that ends up in a Node timer: past 2^31 - 1 ms Node warns and fires it after
 * 1 ms, so "practically never" would become "all the time".
 */
const ms = (min: number, max = MAX_TIMER_MS) => num(min, max);
/** The checker's timer is the interval jittered by up to +10%: that must stay a valid timer too. */
const MAX_HEALTH_CHECK_INTERVAL_MS = Math.floor(MAX_TIMER_MS / (1 + HEALTH_CHECK_JITTER));
const is =
  <T>(test: (x: unknown) => boolean, what: string) =>
  () =>
    leaf<T>((x) => (test(x) ? undefined : expected(what)(x)));
const bool = is<boolean>((x) => typeof x === 'boolean', 'a boolean');
const str = is<string>((x) => typeof x === 'string', 'a string');
const nonEmptyStr = (what: string) => is<string>((x) => typeof x === 'string' && x !== '', what)();
const MEDIA_TYPE = /^[\w!#$&^.+-]+\/[\w!#$&^.+-]+$/;
const isMediaType = (x: unknown): boolean => typeof x === 'string' && MEDIA_TYPE.test(x);
const fn = <F>() => is<F>((x) => typeof x === 'function', 'a function')();
// Nor what a request's path may not hold (proxy/request-checks.ts: dot-segments, `//`, a
// backslash): a health-check path is joined to each backend's base path.
const isPath = (x: unknown): x is string =>
  typeof x === 'string' && x.startsWith('/') && !/[?#\s]/.test(x) && checkPath(x) === undefined;
const hostHeader = is<string>(
  (x): x is string => typeof x === 'string' && isHostValue(x),
  'a host name or address with an optional port, as a Host header carries it',
);
const path = is<string>(
  isPath,
  "a path starting with '/' without query, spaces, dot-segments, '//' or '\\'",
);
/**
 * A path the gateway answers itself (statusPath, metricsPath, dashboard.path): only
 * characters a request's path carries as they are (RFC 3986 pchar, no `%`). It is compared
 * with the path as sent, and the dashboard builds its asset URLs from it: `%20` was encoded
 * twice (the page's scripts were fetched from a backend), and `é` or `{` arrive
 * percent-encoded, so the page could never be reached and its token went to a backend.
 */
const isOwnPath = (x: unknown): x is string =>
  isPath(x) && /^[A-Za-z0-9._~!$&'()*+,;=:@/-]+$/.test(x);
const OWN_PATH =
  "a path starting with '/' of letters, digits and -._~!$&'()*+,;=:@/ (no '%', spaces or query)";
const ownPath = is<string>(isOwnPath, OWN_PATH);
/**
 * The dashboard's path, narrower: the page names its assets and the 308 its target by the
 * last segment through encodeURIComponent, which encodes `$&+,;=:@`: with `/_lb/dash@1` the
 * browser asked for `/_lb/dash%401/dashboard.js`, which is not the path, so the page's
 * script came from a backend into the gateway's origin, `?token=` in its location.
 */
const isDashboardPath = (x: unknown): x is string =>
  isOwnPath(x) && /^[A-Za-z0-9._~!'()*/-]+$/.test(x);
const DASHBOARD_PATH =
  "a path starting with '/' of letters, digits and -._~!'()*/ (no '%', spaces or query)";
const isHeaderName = (x: unknown): x is string => typeof x === 'string' && HEADER_NAME_RE.test(x);
/**
 * Response headers a client or Node acts on. decisionHeader overwrites the one it names on
 * every proxied answer: `content-length` made every response unreadable
 * (HPE_INVALID_CONTENT_LENGTH), and `set-cookie` or `location` replaced the backend's.
 */
const MEANINGFUL_RESPONSE_HEADERS = new Set([
  'connection',
  'keep-alive',
  'proxy-connection',
  'transfer-encoding',
  'trailer',
  'te',
  'upgrade',
  'set-cookie',
  'location',
  'retry-after',
  'www-authenticate',
  'proxy-authenticate',
  'cache-control',
  'expires',
  'vary',
  'etag',
  'last-modified',
  'age',
  'date',
  'strict-transport-security',
  'x-frame-options',
  'x-content-type-options',
  'referrer-policy',
  'permissions-policy',
  'refresh',
  'link',
  'alt-svc',
  'clear-site-data',
  'server-timing',
  'pragma',
  'cdn-cache-control',
  'surrogate-control',
  'x-robots-tag',
  'x-xss-protection',
  'timing-allow-origin',
  'service-worker-allowed',
  'x-permitted-cross-domain-policies',
  'nel',
  'report-to',
  'reporting-endpoints',
  'origin-agent-cluster',
  'accept-ranges',
]);
const isMeaningfulResponseHeader = (name: string): boolean => {
  const n = name.toLowerCase();
  return (
    MEANINGFUL_RESPONSE_HEADERS.has(n) ||
    n.startsWith('content-') ||
    n.startsWith('access-control-') ||
    n.startsWith('cross-origin-') ||
    n.startsWith('x-accel-') ||
    n.endsWith('-cdn-cache-control') ||
    // The gateway's own (x-loadwise-error says why it answered): the default is the one.
    (n.startsWith('x-loadwise-') && n !== DEFAULTS.decisionHeader)
  );
};
const isPem = (x: unknown): boolean => typeof x === 'string' || Buffer.isBuffer(x);
const pem = is<string | Buffer>(isPem, 'PEM text or a Buffer');
/** CA certificates: one PEM text or Buffer, or an array of them (Node's `ca`). */
const pemList = is<string | Buffer | Array<string | Buffer>>(
  (x) => isPem(x) || (Array.isArray(x) && x.every(isPem)),
  'PEM text, a Buffer or an array of them',
);
/** A secret: its error never shows it. */
const secret = (test: (x: unknown) => boolean, what: string) =>
  leaf<string>((x) => (test(x) ? undefined : (name) => invalidOption(name, what, '<redacted>')));
/** A private key: its error never shows it either. */
const secretPem = leaf<string | Buffer>((x) =>
  isPem(x) ? undefined : (name) => invalidOption(name, 'PEM text or a Buffer', '<redacted>'),
);
/** A password: a string or a Buffer, never shown (it was echoed, and called PEM). */
const secretText = leaf<string | Buffer>((x) =>
  isPem(x) ? undefined : (name) => invalidOption(name, 'a string or a Buffer', '<redacted>'),
);
/** An object the user owns (a logger, a registry): checked by its methods, never walked. */
const withMethods = <T>(methods: readonly string[], what: string, shown?: string) =>
  leaf<T>((x) =>
    isObject(x) && methods.every((m) => typeof x[m] === 'function')
      ? undefined
      : (name) => invalidOption(name, what, shown ?? x),
  );
/** A section the user may turn off with `false`. */
const orFalse = <S extends v.GenericSchema>(section: S) =>
  v.lazy((x) => (x === false ? v.literal(false) : section));

// Backends and broker: their own error codes.

/** Parses a backend URL; used for configured and for discovered backends. */
export function backendUrl(name: string, x: unknown): URL {
  const checked = checkBackendUrl(x);
  if (typeof checked === 'string') {
    // Never the password it carries: the error is logged (and printed by the examples).
    const u = typeof x === 'string' ? redactRefusedUrl(x) : x;
    throw new GatewayError('LW_GW_INVALID_BACKEND_URL', `${name} ${shown(u)}: ${checked}`);
  }
  return checked;
}

/** A backend URL parsed, or what is wrong with it (the rule it breaks). */
export function checkBackendUrl(x: unknown): URL | string {
  const url = parseUrl(x);
  if (!url || (url.protocol !== 'http:' && url.protocol !== 'https:'))
    return 'expected http(s)://host[:port][/path]';
  if (url.username || url.password)
    return 'has credentials (user:password@), which a backend URL never carries';
  if (url.search || url.hash)
    return 'has a query or a fragment (expected http(s)://host[:port][/path])';
  // No server listens on port 0 (a listener asking for it gets some free port instead), so
  // such a backend could never be reached; a registration for one was admitted.
  if (url.port === '0') return "port 0 is no server's port";
  return url;
}

function parseUrl(x: unknown): URL | undefined {
  try {
    return typeof x === 'string' ? new URL(x) : undefined;
  } catch {
    return undefined;
  }
}

/** Wraps a throwing check as a leaf's problem. */
const thrown =
  (check: (x: unknown, name: string) => void) =>
  (x: unknown): Fail | undefined => {
    try {
      check(x, '');
      return undefined;
    } catch {
      return (name) => {
        try {
          check(x, name);
        } catch (err) {
          return err as GatewayError;
        }
        return invalidOption(name, 'valid', x);
      };
    }
  };

const backend = strict(
  {
    id: leaf<string>((x) =>
      isValidBackendId(x)
        ? undefined
        : (name) =>
            new GatewayError(
              'LW_GW_INVALID_BACKEND_ID',
              `${name} ${shown(x)} must be 1-64 characters of [A-Za-z0-9._:@-] starting with a letter or digit`,
            ),
    ),
    url: v.pipe(
      leaf<string>(thrown((x, name) => backendUrl(name, x))),
      v.transform((u) => new URL(u).href),
    ),
    weight: v.optional(num(Number.MIN_VALUE, 1e6), DEFAULTS.backend.weight),
  },
  expected('an object { id, url }'),
);

/** Two ids for one server would split its load estimate in two halves that each look idle. */
function duplicateBackend(list: Required<BackendConfig>[]): GatewayError | undefined {
  const ids = new Set<string>();
  const urls = new Map<string, number>();
  for (const [i, b] of list.entries()) {
    if (ids.has(b.id))
      return new GatewayError('LW_GW_DUPLICATE_BACKEND', `backend id ${b.id} appears twice`);
    ids.add(b.id);
    // The URL, not the server: backends under paths of one server (`http://h/api-1`,
    // `http://h/api-2`) are configurations that work; discovery, which takes signed
    // registrations, refuses a second id for a server whatever its scheme or path.
    const first = urls.get(b.url);
    if (first !== undefined)
      return new GatewayError(
        'LW_GW_DUPLICATE_BACKEND',
        `backends[${i}].url ${b.url} is also backends[${first}].url`,
      );
    urls.set(b.url, i);
  }
  return undefined;
}

/**
 * A URL the gateway refuses, without anything before its last `@`: unparsed, a password
 * may hold any character (`#`, `?` ended redactUrl's authority, and were echoed whole).
 */
function redactRefusedUrl(u: string): string {
  const at = u.lastIndexOf('@');
  if (at === -1) return u;
  const scheme = /^[a-z][a-z0-9+.-]*:\/\//i.exec(u)?.[0] ?? '';
  return `${scheme}***${u.slice(at)}`;
}

const brokerError = (detail?: string): Fail =>
  fixed(new GatewayError('LW_GW_INVALID_BROKER', detail));
/**
 * A broker URL with a host: `mqtt://` (an empty template variable after it) parsed, had
 * none, and mqtt.js connected to localhost:1883.
 */
const brokerUrl = leaf<string>((u) => {
  const parsed = typeof u === 'string' ? parseUrl(u) : undefined;
  const protocolOk = BROKER_PROTOCOLS.has(parsed?.protocol ?? '');
  // Never a password it carries: the error is logged.
  const url = `broker url ${shown(typeof u === 'string' ? redactRefusedUrl(u) : u)}`;
  if (protocolOk && parsed?.hostname !== '') {
    const problem = brokerUrlClientIdProblem(
      u as string,
      'leave it out (each connection gets broker.clientIdPrefix, `loadwise-gw` by default, and a random suffix)',
    );
    return problem === undefined ? undefined : brokerError(`${url}: ${problem}`);
  }
  return brokerError(
    protocolOk ? `${url}: has no host` : `${url}: expected mqtt://, mqtts://, ws:// or wss://`,
  );
});
const brokerClient = strict({
  // Named from 'mqtt' here so the declaration emitted for this schema imports the
  // package's entry point, not a subpath its exports map does not resolve for consumers.
  client: leaf<MqttClient>((c) => {
    const m = c as { subscribe?: unknown; on?: unknown } | undefined;
    return m && typeof m.subscribe === 'function' && typeof m.on === 'function'
      ? undefined
      : brokerError('broker.client is not an mqtt.js client');
  }),
});
const embeddedBroker = strict({
  // Not in a node:cluster worker (runWorkers): embedded-broker.ts embeddedInWorkerProblem.
  embedded: leaf<true>((x) => {
    if (x !== true) return brokerError('broker.embedded must be true');
    const inWorker = embeddedInWorkerProblem('broker.embedded');
    return inWorker === undefined ? undefined : brokerError(inWorker);
  }),
  port: v.optional(int(0, 65535)),
  // An empty host was refused only when ready() started the broker.
  host: v.optional(nonEmptyStr('a non-empty string')),
  // Agents behind one address (a NAT, a node's IP) past 256 need more than the default.
  maxConnections: v.optional(int(1, 1_000_000)),
  maxConnectionsPerAddress: v.optional(int(1, 1_000_000)),
});
const brokerUrlOptions = v.pipe(
  strict({
    url: brokerUrl,
    username: v.optional(str()),
    password: v.optional(secretText),
    ca: v.optional(pemList()),
    cert: v.optional(pem()),
    key: v.optional(secretPem),
    rejectUnauthorized: v.optional(bool()),
    clientIdPrefix: v.optional(
      is<string>(
        (x) => typeof x === 'string' && x.length <= 40,
        'a string of at most 40 characters',
      )(),
    ),
    keepaliveSec: v.optional(int(0, 65535)),
    reconnectPeriodMs: v.optional(ms(1)),
    connectTimeoutMs: v.optional(ms(1)),
    protocolVersion: v.optional(is<4 | 5>((x) => x === 4 || x === 5, '4 or 5')()),
  }),
  // mqtt.js sends no password without a username (MQTT 3.1.1 has none [MQTT-3.1.2-22]):
  // the connection closed before its CONNACK, under protocolVersion 5 too, and all the
  // gateway could say was that the broker did not answer. A user in the URL is one.
  crossCheck((b) =>
    b.password !== undefined && b.username === undefined && !brokerUrlNamesUser(b.url)
      ? new GatewayError(
          'LW_GW_INVALID_BROKER',
          'broker.password needs broker.username or a user in the broker url (mqtt.js connects with no password without one, and the connection closes)',
        )
      : undefined,
  ),
  crossCheck((b) => {
    const problem =
      brokerTlsMismatch(b.url, b) ??
      (b.cert !== undefined && b.key === undefined
        ? 'broker.cert needs broker.key (a client certificate is sent with its key)'
        : b.key !== undefined && b.cert === undefined
          ? 'broker.key needs broker.cert (a client certificate is sent with its key)'
          : tlsMaterialProblem(b));
    return problem === undefined
      ? undefined
      : new GatewayError('LW_GW_INVALID_BROKER', `broker: ${problem}`);
  }),
);
const broker = v.lazy((x) =>
  typeof x === 'string'
    ? brokerUrl
    : !isObject(x)
      ? leaf<never>(() => brokerError())
      : 'client' in x
        ? brokerClient
        : 'embedded' in x
          ? embeddedBroker
          : brokerUrlOptions,
);

// TLS to backends.

/**
 * A name to verify certificates against and send as SNI: a DNS name, never
 * an IP address (RFC 6066 §3 forbids an IP in SNI; a backend addressed by IP
 * is verified against its IP without this option).
 */
const isServerName = (x: unknown): x is string =>
  typeof x === 'string' &&
  x.length <= 253 &&
  /^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$/.test(x) &&
  isIP(x) === 0;

const backendTls = v.pipe(
  strict({
    ca: v.optional(pemList()),
    cert: v.optional(pem()),
    // A key's text in an error message would end up in logs.
    key: v.optional(secretPem),
    servername: v.optional(
      is<string>(isServerName, 'a DNS name (not an IP address, no trailing dot)')(),
    ),
    rejectUnauthorized: v.optional(bool(), DEFAULTS.backendTls.rejectUnauthorized),
  }),
  // Node would connect without a client certificate when one of the two is
  // missing, and the backend's refusal would then read as its own failure.
  crossCheck((t) =>
    t.cert !== undefined && t.key === undefined
      ? invalidOption(
          'backendTls.key',
          'given with backendTls.cert (mutual TLS needs both)',
          undefined,
        )
      : t.key !== undefined && t.cert === undefined
        ? invalidOption(
            'backendTls.cert',
            'given with backendTls.key (mutual TLS needs both)',
            undefined,
          )
        : undefined,
  ),
  crossCheck((t) => {
    const problem = tlsMaterialProblem(t);
    return problem === undefined
      ? undefined
      : new GatewayError('LW_GW_INVALID_OPTION', `backendTls: ${problem}`);
  }),
);

// Discovery: its own error code too.

const discoveryError = (detail: string): Fail =>
  fixed(new GatewayError('LW_GW_INVALID_DISCOVERY', detail));

function isCidr(range: unknown): boolean {
  const [addr, bits, extra] = typeof range === 'string' ? range.split('/') : [];
  const family = addr ? isIP(addr) : 0;
  const prefix = Number(bits);
  return (
    family !== 0 &&
    extra === undefined &&
    bits !== undefined &&
    Number.isInteger(prefix) &&
    prefix >= 0 &&
    prefix <= (family === 6 ? 128 : 32)
  );
}

const allowedRanges = leaf<string[]>((x) => {
  if (!Array.isArray(x) || x.length === 0)
    return discoveryError('discovery.allowedRanges must list at least one CIDR');
  const bad = x.find((r) => !isCidr(r));
  return bad === undefined
    ? undefined
    : discoveryError(`allowed range ${shown(bad)} is not a CIDR (e.g. 10.0.0.0/8)`);
});
const ports = leaf<number[]>((x) => {
  if (!Array.isArray(x)) return expected('an array of ports')(x);
  const i = x.findIndex((p) => !Number.isInteger(p) || p < 1 || p > 65535);
  return i < 0
    ? undefined
    : (name) => invalidOption(`${name}[${i}]`, 'an integer in [1, 65535]', x[i]);
});

/** The options schema, its entries in the order their checks run (the first error wins). */
const entries = {
  backends: v.optional(
    v.pipe(
      leaf<v.InferInput<typeof backend>[]>((x) =>
        Array.isArray(x) ? undefined : expected('an array')(x),
      ),
      v.array(backend),
      crossCheck(duplicateBackend),
    ),
    () => [],
  ),
  service: v.optional(
    is<string>(isValidBackendId, '1-64 characters of [A-Za-z0-9._:@-] (one topic level)')(),
  ),
  topicPrefix: v.optional(
    leaf<string>(
      thrown((x, name) => {
        try {
          assertValidPrefix(x as string);
        } catch {
          throw invalidOption(name, "topic levels of [A-Za-z0-9._:@-] separated by '/'", x);
        }
      }),
    ),
    DEFAULTS.topicPrefix,
  ),
  keys: v.optional(
    leaf<SigningKey[]>(
      thrown((x, name) => {
        if (!Array.isArray(x)) throw invalidOption(name, 'an array of { keyId, secret }', x);
        // Keys are looked up by id: of two with one id, one secret would never verify
        // anything (parseKeyFile refuses the same in a key file).
        const ids = new Set<string>();
        for (const k of x as SigningKey[]) {
          try {
            assertValidKey(k);
          } catch (err) {
            throw invalidOption(name, `valid keys (${(err as Error).message})`, k?.keyId);
          }
          if (ids.has(k.keyId)) throw invalidOption(name, 'keys with distinct keyIds', k.keyId);
          ids.add(k.keyId);
        }
      }),
    ),
    () => [],
  ),
  requireSignature: v.optional(bool()),
  allowUnsigned: v.optional(bool()),
  messageLimits: v.optional(
    strict({
      perBackendPerSec: v.optional(num(0.01), DEFAULTS.messageLimits.perBackendPerSec),
      perBackendBurst: v.optional(num(1)),
      totalPerSec: v.optional(num(0.01), DEFAULTS.messageLimits.totalPerSec),
      totalBurst: v.optional(num(1)),
      maxPacketBytes: v.optional(
        int(1024, 256 * 1024 * 1024),
        DEFAULTS.messageLimits.maxPacketBytes,
      ),
    }),
    {},
  ),
  strategy: v.optional(nonEmptyStr('a strategy name'), DEFAULTS.strategy),
  affinity: v.optional(
    v.pipe(
      strict({
        header: v.optional(is<string>(isHeaderName, 'a header/cookie name')()),
        cookie: v.optional(is<string>(isHeaderName, 'a header/cookie name')()),
        clientAddress: v.optional(bool()),
        setCookie: v.optional(bool()),
        cookieMaxAgeSec: v.optional(int(0, 400 * 86400)),
        cookieSecure: v.optional(
          is<boolean | 'auto'>(
            (x) => typeof x === 'boolean' || x === 'auto',
            "true, false or 'auto'",
          )(),
        ),
      }),
      crossCheck((a) =>
        a.setCookie === true && a.cookie === undefined
          ? invalidOption('affinity.setCookie', 'used together with affinity.cookie', true)
          : a.header === undefined && a.cookie === undefined && a.clientAddress !== true
            ? invalidOption('affinity', 'one of header, cookie or clientAddress', a)
            : undefined,
      ),
    ),
  ),
  agent: v.optional(
    strict({
      maxSockets: v.optional(int(1, 1e6), DEFAULTS.agent.maxSockets),
      maxFreeSockets: v.optional(int(0, 1e6)),
      keepAliveMsecs: v.optional(ms(1), DEFAULTS.agent.keepAliveMsecs),
      idleTimeoutMs: v.optional(ms(1), DEFAULTS.agent.idleTimeoutMs),
      maxRequestsPerConnection: v.optional(int(1), DEFAULTS.agent.maxRequestsPerConnection),
    }),
    {},
  ),
  backendTls: v.optional(backendTls, {}),
  retry: v.optional(
    orFalse(
      strict({
        maxRetries: v.optional(int(0, 10), DEFAULTS.retry.maxRetries),
        methods: v.optional(
          is<string[]>(
            (x) => Array.isArray(x) && x.every(isHeaderName),
            'an array of HTTP method names',
          )(),
          () => DEFAULTS.retry.methods,
        ),
        budgetRatio: v.optional(num(0, 1), DEFAULTS.retry.budgetRatio),
        minRetriesPerSec: v.optional(num(0), DEFAULTS.retry.minRetriesPerSec),
        budgetWindowMs: v.optional(int(1000, 600_000), DEFAULTS.retry.budgetWindowMs),
        maxBodyBytes: v.optional(int(0, 64 << 20), DEFAULTS.retry.maxBodyBytes),
      }),
    ),
    {},
  ),
  outlier: v.optional(
    v.pipe(
      strict({
        consecutiveFailures: v.optional(int(1, 1e6), DEFAULTS.outlier.consecutiveFailures),
        baseEjectionMs: v.optional(ms(1), DEFAULTS.outlier.baseEjectionMs),
        maxEjectionMs: v.optional(ms(1), DEFAULTS.outlier.maxEjectionMs),
        maxEjectionPercent: v.optional(num(0, 100), DEFAULTS.outlier.maxEjectionPercent),
        panicThresholdPercent: v.optional(num(0, 100), DEFAULTS.outlier.panicThresholdPercent),
        failOn5xx: v.optional(bool(), DEFAULTS.outlier.failOn5xx),
      }),
      crossCheck((o) =>
        o.maxEjectionMs < o.baseEjectionMs
          ? invalidOption('outlier.maxEjectionMs', '>= outlier.baseEjectionMs', o.maxEjectionMs)
          : undefined,
      ),
    ),
    {},
  ),
  healthCheck: v.optional(
    orFalse(
      strict({
        path: v.optional(path(), DEFAULTS.healthCheck.path),
        host: v.optional(hostHeader()),
        intervalMs: v.optional(
          ms(10, MAX_HEALTH_CHECK_INTERVAL_MS),
          DEFAULTS.healthCheck.intervalMs,
        ),
        timeoutMs: v.optional(ms(1), DEFAULTS.healthCheck.timeoutMs),
        unhealthyThreshold: v.optional(int(1, 100), DEFAULTS.healthCheck.unhealthyThreshold),
        healthyThreshold: v.optional(int(1, 100), DEFAULTS.healthCheck.healthyThreshold),
      }),
    ),
    {},
  ),
  warmUp: v.optional(
    orFalse(
      strict({
        requests: v.optional(int(0, 100_000), DEFAULTS.warmUp.requests),
        connectionsPerBackend: v.optional(int(0, 1024), DEFAULTS.warmUp.connectionsPerBackend),
      }),
    ),
    {},
  ),
  saturation: v.optional(
    strict({
      maxInFlightPerBackend: v.optional(int(1, 1e6)),
      maxExpectedWaitMs: v.optional(num(1)),
      queueSize: v.optional(int(0, 1e6), DEFAULTS.saturation.queueSize),
      queueTimeoutMs: v.optional(ms(1), DEFAULTS.saturation.queueTimeoutMs),
    }),
    {},
  ),
  webSockets: v.optional(
    strict({
      idleTimeoutMs: v.optional(orFalse(ms(1)), DEFAULTS.webSockets.idleTimeoutMs),
      maxPerClient: v.optional(orFalse(int(1, 1e6)), DEFAULTS.webSockets.maxPerClient),
      maxOpen: v.optional(orFalse(int(1, 1e7)), DEFAULTS.webSockets.maxOpen),
    }),
    {},
  ),
  streams: v.optional(
    orFalse(
      strict({
        afterMs: v.optional(ms(1), DEFAULTS.streams.afterMs),
        maxPerClient: v.optional(orFalse(int(1, 1e6)), DEFAULTS.streams.maxPerClient),
        maxOpen: v.optional(orFalse(int(1, 1e7)), DEFAULTS.streams.maxOpen),
        contentTypes: v.optional(
          is<string[]>(
            (x) => Array.isArray(x) && x.length <= 64 && x.every(isMediaType),
            "an array of media types such as 'text/event-stream'",
          )(),
          () => DEFAULTS.streams.contentTypes,
        ),
      }),
    ),
    {},
  ),
  overload: v.optional(
    orFalse(
      strict({
        maxEventLoopDelayMs: v.optional(num(1), DEFAULTS.overload.maxEventLoopDelayMs),
        sampleIntervalMs: v.optional(ms(10), DEFAULTS.overload.sampleIntervalMs),
      }),
    ),
    {},
  ),
  acceptQueue: v.optional(
    orFalse(
      v.pipe(
        strict({
          backlog: v.optional(int(1, 1 << 20), DEFAULTS.acceptQueue.backlog),
          shedAt: v.optional(num(0, 1), DEFAULTS.acceptQueue.shedAt),
          resumeAt: v.optional(num(0, 1), DEFAULTS.acceptQueue.resumeAt),
          holdMs: v.optional(ms(0), DEFAULTS.acceptQueue.holdMs),
          maxShare: v.optional(num(0, 1), DEFAULTS.acceptQueue.maxShare),
          sampleIntervalMs: v.optional(ms(10), DEFAULTS.acceptQueue.sampleIntervalMs),
        }),
        crossCheck((a) =>
          a.resumeAt >= a.shedAt
            ? invalidOption('acceptQueue.resumeAt', '< acceptQueue.shedAt', a.resumeAt)
            : undefined,
        ),
      ),
    ),
    {},
  ),
  discovery: v.optional(
    orFalse(
      strict({
        allowedRanges,
        allowedPorts: v.optional(ports, () => [...DEFAULTS.discovery.allowedPorts]),
        maxBackends: v.optional(int(1, 10_000), DEFAULTS.discovery.maxBackends),
        maxWeight: v.optional(num(0.01, 1e6), DEFAULTS.discovery.maxWeight),
        forgetAfterMs: v.optional(orFalse(ms(1_000)), DEFAULTS.discovery.forgetAfterMs),
        requireTls: v.optional(bool()),
      }),
    ),
  ),
  decisionHeader: v.optional(
    is<boolean | string>(
      (x) => typeof x === 'boolean' || (isHeaderName(x) && !isMeaningfulResponseHeader(x)),
      'a boolean or a header name of your own (not one HTTP frames, caches or acts on)',
    )(),
  ),
  // Visible ASCII, as dashboard.token: a token read from a secret file with its trailing
  // newline could never match (the token presented is trimmed), a permanent 401.
  // false: served without one on purpose (the app's own auth in front), and not warned of.
  statusToken: v.optional(
    orFalse(
      secret(
        (x) => typeof x === 'string' && x.length >= 8 && /^[\x21-\x7e]+$/.test(x),
        'a string of at least 8 visible ASCII characters, or false',
      ),
    ),
  ),
  on: v.optional(
    strict({
      proxyReq: v.optional(fn<NonNullable<ProxyEventHooks['proxyReq']>>()),
      proxyRes: v.optional(fn<NonNullable<ProxyEventHooks['proxyRes']>>()),
    }),
    {},
  ),
  selfHandleResponse: v.optional(bool(), false),
  strategyOptions: v.optional(is<Record<string, unknown>>(isObject, 'an object')(), () => ({})),
  load: v.optional(loadOptionsInput, {}),
  broker: v.optional(broker),
  // No default here: given without allowUnsigned it does nothing, and is refused (betweenOptions).
  unsignedMaxPenalty: v.optional(num(1, 8)),
  maxClockSkewMs: v.optional(ms(1)),
  maxRetainedAgeMs: v.optional(ms(1)),
  maxPayloadBytes: v.optional(int(256, 1 << 20)),
  connectTimeoutMs: v.optional(ms(1), DEFAULTS.connectTimeoutMs),
  requestTimeoutMs: v.optional(ms(1), DEFAULTS.requestTimeoutMs),
  clientBodyTimeoutMs: v.optional(orFalse(ms(1)), DEFAULTS.clientBodyTimeoutMs),
  clientBodyMinRate: v.optional(
    orFalse(
      strict({
        bytesPerSec: v.optional(num(1), DEFAULTS.clientBodyMinRate.bytesPerSec),
        graceMs: v.optional(ms(0), DEFAULTS.clientBodyMinRate.graceMs),
      }),
    ),
    {},
  ),
  requestBuffering: v.optional(
    orFalse(
      v.pipe(
        strict({
          maxBytes: v.optional(int(1, 64 << 20), DEFAULTS.requestBuffering.maxBytes),
          maxTotalBytes: v.optional(int(1, 2 ** 40), DEFAULTS.requestBuffering.maxTotalBytes),
        }),
        crossCheck((b) =>
          b.maxTotalBytes < b.maxBytes
            ? invalidOption(
                'requestBuffering.maxTotalBytes',
                '>= requestBuffering.maxBytes',
                b.maxTotalBytes,
              )
            : undefined,
        ),
      ),
    ),
    {},
  ),
  maxInFlightPerClient: v.optional(orFalse(int(1, 1e6)), DEFAULTS.maxInFlightPerClient),
  changeOrigin: v.optional(bool(), DEFAULTS.changeOrigin),
  trustForwarded: v.optional(
    is<boolean | number>(
      (x) =>
        typeof x === 'boolean' ||
        (Number.isInteger(x) && (x as number) >= 0 && (x as number) <= MAX_TRUSTED_HOPS),
      `a boolean or an integer in [0, ${MAX_TRUSTED_HOPS}]`,
    )(),
    DEFAULTS.trustForwarded,
  ),
  trustHeaders: v.optional(
    is<string[]>(
      (x) =>
        Array.isArray(x) &&
        x.every((n) => typeof n === 'string' && FORWARDING_ALIASES.includes(n.toLowerCase())),
      `an array of header names among ${FORWARDING_ALIASES.join(', ')}`,
    )(),
    () => [...DEFAULTS.trustHeaders],
  ),
  forwardMountPath: v.optional(bool(), DEFAULTS.forwardMountPath),
  statusPath: v.optional(ownPath()),
  metricsPath: v.optional(ownPath()),
  metricsRegistry: v.optional(
    withMethods<MetricsRegistry>(
      ['registerMetric', 'metrics'],
      'a prom-client Registry',
      '<object>',
    ),
  ),
  metricsPrefix: v.optional(
    is<string>(
      (x) => typeof x === 'string' && /^[a-zA-Z_:][a-zA-Z0-9_:]*$/.test(x),
      'a metric name prefix like "gw_"',
    )(),
  ),
  dashboard: v.optional(
    orFalse(
      strict(
        {
          path: v.optional(
            leaf<string>((x) =>
              !isDashboardPath(x)
                ? expected(DASHBOARD_PATH)(x)
                : // Assets and the stream live under `<path>/`, referenced relative to the page.
                  x === '/' || x.endsWith('/')
                  ? expected("a path that does not end with '/'")(x)
                  : undefined,
            ),
            DEFAULTS.dashboard.path,
          ),
          token: secret(
            (x) =>
              typeof x === 'string' &&
              x.length >= MIN_DASHBOARD_TOKEN_LENGTH &&
              /^[\x21-\x7e]+$/.test(x),
            `a string of at least ${MIN_DASHBOARD_TOKEN_LENGTH} visible ASCII characters`,
          ),
          maxViewers: v.optional(int(1, 1000), DEFAULTS.dashboard.maxViewers),
          intervalMs: v.optional(int(250, 60_000), DEFAULTS.dashboard.intervalMs),
          historySec: v.optional(int(10, 3600), DEFAULTS.dashboard.historySec),
        },
        expected('an object { token, path? } or false'),
      ),
    ),
  ),
  logger: v.optional(
    withMethods<Logger>(['info', 'warn', 'error'], 'an object with info, warn and error functions'),
    // A function default is called: this one makes the default logger.
    defaultLogger,
  ),
  now: v.optional(fn<() => number>(), () => DEFAULTS.now),
  random: v.optional(fn<() => number>(), () => DEFAULTS.random),
};

type Parsed = v.InferOutput<ReturnType<typeof strict<typeof entries>>>;

/** Checks between options, once each option passed its own. */
function betweenOptions(o: Parsed): GatewayError | undefined {
  if (o.requireSignature === true && o.keys.length === 0)
    return invalidOption('requireSignature', 'false when no keys are given', true);
  if (o.allowUnsigned === true && o.requireSignature === true)
    return invalidOption('allowUnsigned', 'false when requireSignature is true', true);
  // The legacy option says the opposite: which one meant it is anyone's guess.
  if (o.allowUnsigned === false && o.requireSignature === false)
    return invalidOption('allowUnsigned', 'true or unset when requireSignature is false', false);
  // Unsigned reports refused, its factor never applies: a setting that looks active and is not.
  if (o.unsignedMaxPenalty !== undefined && !(o.allowUnsigned ?? o.requireSignature === false))
    return invalidOption(
      'unsignedMaxPenalty',
      'used with allowUnsigned: true (unsigned reports are refused otherwise)',
      o.unsignedMaxPenalty,
    );
  if (o.discovery && o.keys.length === 0)
    return new GatewayError(
      'LW_GW_INVALID_DISCOVERY',
      'discovery needs keys: registrations are honoured only when signed',
    );
  if (!o.discovery && o.backends.length === 0) return new GatewayError('LW_GW_NO_BACKENDS');
  // Kept only from trusted proxies: without trustForwarded they are always removed.
  if (o.trustHeaders.length > 0 && (o.trustForwarded === false || o.trustForwarded === 0))
    return invalidOption(
      'trustHeaders',
      'used with trustForwarded (the headers are kept only behind trusted proxies)',
      o.trustHeaders,
    );
  if (o.selfHandleResponse && o.on.proxyRes === undefined)
    return invalidOption(
      'selfHandleResponse',
      'true only with an on.proxyRes hook (it writes the answer)',
      true,
    );
  if (o.statusToken !== undefined && o.statusPath === undefined && o.metricsPath === undefined)
    return invalidOption(
      'statusToken',
      'used with statusPath or metricsPath (it protects them)',
      '<redacted>',
    );
  if (o.statusPath !== undefined && o.statusPath === o.metricsPath)
    return invalidOption('metricsPath', 'a path apart from statusPath', o.metricsPath);
  // A user-registered strategy may read the hash key; of the built-in ones only
  // consistent-hash does, so affinity beside another is a setting with no effect.
  if (o.affinity && o.strategy !== 'consistent-hash' && STRATEGY_NAMES.includes(o.strategy))
    return invalidOption(
      'affinity',
      "used with strategy 'consistent-hash' (the only built-in strategy that reads its key)",
      o.strategy,
    );
  if (o.dashboard) {
    const p = o.dashboard.path;
    for (const other of [o.statusPath, o.metricsPath]) {
      if (other !== undefined && (other === p || other.startsWith(`${p}/`)))
        return invalidOption('dashboard.path', `a path apart from ${other}`, p);
    }
    if (o.dashboard.token === o.statusToken)
      return invalidOption('dashboard.token', 'a token other than statusToken', '<redacted>');
  }
  const packet = o.messageLimits.maxPacketBytes;
  if (o.maxPayloadBytes !== undefined && packet <= o.maxPayloadBytes)
    return invalidOption(
      'messageLimits.maxPacketBytes',
      '> maxPayloadBytes (a packet holds the topic and headers too)',
      packet,
    );
  return undefined;
}

/** The defaults that follow other options, and the shapes the balancer reads. */
function resolve(o: Parsed) {
  const { messageLimits: limits, agent, saturation, decisionHeader } = o;
  const off = <T>(x: T | false): T | undefined => (x === false ? undefined : x);
  const retry = off(o.retry);
  return {
    ...o,
    backends: o.backends as Required<BackendConfig>[],
    broker: o.broker as BrokerOption | undefined,
    // A service is one more topic level: its agents publish under it, and
    // another service's reports never reach this balancer.
    topicPrefix: o.service === undefined ? o.topicPrefix : `${o.topicPrefix}/${o.service}`,
    // Secure by default: unsigned reports are refused unless allowed (SECURITY.md).
    allowUnsigned: o.allowUnsigned ?? o.requireSignature === false,
    unsignedMaxPenalty: o.unsignedMaxPenalty ?? DEFAULTS.unsignedMaxPenalty,
    messageLimits: {
      ...limits,
      perBackendBurst: limits.perBackendBurst ?? Math.max(1, 2 * limits.perBackendPerSec),
      totalBurst: limits.totalBurst ?? Math.max(1, limits.totalPerSec),
    },
    load: o.load as Record<string, unknown>,
    // As many idle sockets as the pool may hold (Node's default too): a lower
    // cap closes sockets after every burst and reopens them on the next one.
    agent: { ...agent, maxFreeSockets: agent.maxFreeSockets ?? agent.maxSockets },
    retry: retry && { ...retry, methods: retry.methods.map((m) => m.toUpperCase()) },
    on: o.on as ProxyEventHooks,
    healthCheck: off(o.healthCheck),
    warmUp: off(o.warmUp),
    saturation: {
      ...saturation,
      // Default: the pool size. Beyond it requests would wait inside the
      // agent, an unbounded queue we cannot see; they wait in ours instead.
      maxInFlightPerBackend: saturation.maxInFlightPerBackend ?? agent.maxSockets,
    },
    webSockets: {
      idleTimeoutMs: off(o.webSockets.idleTimeoutMs),
      maxPerClient: off(o.webSockets.maxPerClient),
      maxOpen: off(o.webSockets.maxOpen),
    },
    streams:
      o.streams === false
        ? undefined
        : {
            afterMs: o.streams.afterMs,
            maxPerClient: off(o.streams.maxPerClient),
            maxOpen: off(o.streams.maxOpen),
            contentTypes: o.streams.contentTypes,
          },
    overload: off(o.overload),
    acceptQueue: off(o.acceptQueue),
    discovery:
      o.discovery === false || o.discovery === undefined
        ? undefined
        : {
            ...o.discovery,
            forgetAfterMs: off(o.discovery.forgetAfterMs),
            // A private CA or a client certificate says the backends speak TLS.
            requireTls:
              o.discovery.requireTls ??
              (o.backendTls.ca !== undefined || o.backendTls.cert !== undefined),
          },
    clientBodyTimeoutMs: off(o.clientBodyTimeoutMs),
    clientBodyMinRate: off(o.clientBodyMinRate),
    requestBuffering: off(o.requestBuffering),
    maxInFlightPerClient: off(o.maxInFlightPerClient),
    // The number of trusted proxies, what the request path counts with
    // (proxy/forwarded.ts clientAddress): true is one, false none.
    trustForwarded:
      typeof o.trustForwarded === 'number' ? o.trustForwarded : o.trustForwarded ? 1 : 0,
    trustHeaders: o.trustHeaders.map((n) => n.toLowerCase()),
    decisionHeader:
      decisionHeader === true
        ? DEFAULTS.decisionHeader
        : decisionHeader === false
          ? undefined
          : decisionHeader?.toLowerCase(),
    dashboard: off(o.dashboard),
  };
}

export const loadBalanceOptionsSchema = v.pipe(
  strict(entries),
  crossCheck(betweenOptions),
  v.transform(resolve),
);

export function resolveOptions(input: LoadBalanceOptions): ResolvedOptions {
  return parseOptions(loadBalanceOptionsSchema, input);
}

/**
 * A wait given at run time (`lb.close({ graceMs })`, `lb.ready({ timeoutMs })`): a timer's
 * range, or Infinity for no limit. Unchecked, `graceMs: Infinity` ("as long as it takes")
 * became Node's 1 ms and cut every request in flight with 503 LW_GW_CLOSED, and NaN or a
 * negative one was 0.
 */
const wait = leaf<number>((x) =>
  typeof x === 'number' && x >= 0 && (x <= MAX_TIMER_MS || x === Infinity)
    ? undefined
    : expected(`a number of ms in [0, ${MAX_TIMER_MS}], or Infinity for no limit`)(x),
);
/** A listening socket's server (http, https, net): what close() waits for. */
const isServer = (x: unknown): x is NetServer => x instanceof NetServer;
const servers = leaf<NetServer | readonly NetServer[]>((x) =>
  isServer(x) || (Array.isArray(x) && x.every(isServer))
    ? undefined
    : expected('the http.Server (or an array of the servers) the app listens on')(x),
);
const closeOptionsSchema = strict({ graceMs: v.optional(wait), server: v.optional(servers) });
const readyOptionsSchema = strict({
  timeoutMs: v.optional(wait),
  requireBroker: v.optional(bool()),
});

/** lb.close()'s options, checked: throws LW_GW_INVALID_OPTION naming `close.graceMs`. */
export function closeOptions(input: unknown): CloseOptions {
  return parseOptions(closeOptionsSchema, input ?? {}, 'close');
}

/** lb.ready()'s options, checked: throws LW_GW_INVALID_OPTION naming `ready.timeoutMs`. */
export function readyOptions(input: unknown): ReadyOptions {
  return parseOptions(readyOptionsSchema, input ?? {}, 'ready');
}

// Compile-time: the hand-written public types and the schema accept the same
// options. Same<> alone misses an extra optional key in a section (either
// side accepts the other), so each section's keys are compared too.
type Input = v.InferInput<typeof loadBalanceOptionsSchema>;
type Public = LoadBalanceOptions;
/** The keys of a section (of each member of a union); none for arrays and functions. */
type Keys<T> = T extends readonly unknown[] | ((...args: never[]) => unknown)
  ? never
  : T extends object
    ? keyof T
    : never;
type SectionKeys = {
  [K in Exclude<keyof Public, 'load'>]-?: Same<
    Keys<NonNullable<Public[K]>>,
    Keys<NonNullable<Input[K]>>
  >;
};
export type _SchemaMatchesTypes = [
  Check<Same<keyof Input, keyof Public>>,
  // backends may be absent when discovery is on; the type asks for it.
  Check<Same<Omit<Input, 'backends' | 'load'>, Omit<Public, 'backends' | 'load'>>>,
  Check<Same<NonNullable<Input['backends']>, Public['backends']>>,
  Check<Same<Keys<NonNullable<Input['backends']>[number]>, keyof BackendConfig>>,
  Check<Same<SectionKeys[keyof SectionKeys], true>>,
  // `load` is checked against EndpointLoadOptions in load/load-options.ts.
  Check<Same<NonNullable<Input['load']>, EndpointLoadOptions>>,
];
