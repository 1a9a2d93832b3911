/**
 * Validates `loadBalance(opts)` once, at construction (http-proxy-middleware's
 * verifyConfig, fastify's option checks): every mistake throws a GatewayError
 * with a stable code; nothing on the request path re-checks options.
 */
import { BlockList } from 'node:net';
import {
  DEFAULT_TOPIC_PREFIX,
  assertValidKey,
  assertValidPrefix,
  isValidBackendId,
} from '@loadwise/protocol';
import { resolveDashboardOptions } from './dashboard/options';
import { GatewayError, invalidOption } from './errors';
import {
  DEFAULT_CLIENT_BODY_TIMEOUT_MS,
  DEFAULT_CONNECT_TIMEOUT_MS,
  DEFAULT_DECISION_HEADER,
  DEFAULT_IDEMPOTENT_METHODS,
  DEFAULT_MAX_IN_FLIGHT_PER_CLIENT,
  DEFAULT_MAX_SOCKETS,
  DEFAULT_REQUEST_TIMEOUT_MS,
  DEFAULT_RETRY_MAX_BODY_BYTES,
  DEFAULT_STRATEGY,
  DEFAULT_WARM_UP_CONNECTIONS,
  DEFAULT_WARM_UP_REQUESTS,
  type LoadBalanceOptions,
  type ResolvedOptions,
} from './options';
import {
  HEADER_NAME_RE,
  backend,
  bool,
  broker,
  fn,
  isObject,
  logger,
  num,
  parseCidr,
  path,
  section,
} from './options-checks';
import { rejectUnknownOptions } from './options-keys';

import { DEFAULT_UNSIGNED_MAX_PENALTY } from './registry/unsigned-report';
import { DEFAULT_MAX_PACKET_BYTES } from './transport/embedded-broker';

export { backendUrl } from './options-checks';

function metricsRegistry(v: unknown): ResolvedOptions['metricsRegistry'] {
  if (v === undefined) return undefined;
  const r = v as { registerMetric?: unknown; metrics?: unknown };
  if (!isObject(v) || typeof r.registerMetric !== 'function' || typeof r.metrics !== 'function') {
    throw invalidOption('metricsRegistry', 'a prom-client Registry', '<object>');
  }
  return v as unknown as ResolvedOptions['metricsRegistry'];
}

/** A Prometheus metric name prefix: [a-zA-Z_:][a-zA-Z0-9_:]* (the exposition format's name rule). */
function metricsPrefix(v: unknown): string | undefined {
  if (v === undefined) return undefined;
  if (typeof v !== 'string' || !/^[a-zA-Z_:][a-zA-Z0-9_:]*$/.test(v))
    throw invalidOption('metricsPrefix', 'a metric name prefix like "gw_"', v);
  return v;
}

/** Self-overload shedding defaults (docs/gateway.md "Self-overload"). */
const DEFAULT_MAX_EVENT_LOOP_DELAY_MS = 500;
const DEFAULT_OVERLOAD_SAMPLE_MS = 200;

export function resolveOptions(input: LoadBalanceOptions): ResolvedOptions {
  if (!isObject(input)) throw invalidOption('options', 'an object', input);
  const o = input as unknown as Record<string, unknown>;
  rejectUnknownOptions(o);
  if (o.backends !== undefined && !Array.isArray(o.backends))
    throw invalidOption('backends', 'an array', o.backends);
  const backends = ((o.backends as unknown[] | undefined) ?? []).map(backend);
  const seen = new Set<string>();
  const urls = new Map<string, number>();
  backends.forEach((b, i) => {
    if (seen.has(b.id))
      throw new GatewayError('LW_GW_DUPLICATE_BACKEND', `backend id ${b.id} appears twice`);
    seen.add(b.id);
    // Two ids for one server would split its load estimate in two halves that each look idle.
    const first = urls.get(b.url);
    if (first !== undefined)
      throw new GatewayError(
        'LW_GW_DUPLICATE_BACKEND',
        `backends[${i}].url ${b.url} is also backends[${first}].url`,
      );
    urls.set(b.url, i);
  });
  if (o.service !== undefined && !isValidBackendId(o.service))
    throw invalidOption(
      'service',
      '1-64 characters of [A-Za-z0-9._:@-] (one topic level)',
      o.service,
    );

  const topicPrefix = o.topicPrefix ?? DEFAULT_TOPIC_PREFIX;
  try {
    assertValidPrefix(topicPrefix as string);
  } catch {
    throw invalidOption(
      'topicPrefix',
      "topic levels of [A-Za-z0-9._:@-] separated by '/'",
      topicPrefix,
    );
  }
  if (o.keys !== undefined && !Array.isArray(o.keys))
    throw invalidOption('keys', 'an array of { keyId, secret }', o.keys);
  const keys = (o.keys as ResolvedOptions['keys'] | undefined) ?? [];
  for (const k of keys) {
    try {
      assertValidKey(k);
    } catch (err) {
      throw invalidOption('keys', `valid keys (${(err as Error).message})`, k?.keyId);
    }
  }
  if (o.requireSignature !== undefined) bool('requireSignature', o.requireSignature, false);
  if (o.requireSignature === true && keys.length === 0)
    throw invalidOption('requireSignature', 'false when no keys are given', true);
  // Secure by default: unsigned reports are refused unless allowed (SECURITY.md).
  const allowUnsigned = bool('allowUnsigned', o.allowUnsigned, o.requireSignature === false);
  if (allowUnsigned && o.requireSignature === true)
    throw invalidOption('allowUnsigned', 'false when requireSignature is true', true);
  const limits = section('messageLimits', o.messageLimits);
  const perBackendPerSec = num('messageLimits.perBackendPerSec', limits.perBackendPerSec, 20, 0.01);
  const totalPerSec = num('messageLimits.totalPerSec', limits.totalPerSec, 20_000, 0.01);
  const messageLimits: ResolvedOptions['messageLimits'] = {
    perBackendPerSec,
    perBackendBurst: num(
      'messageLimits.perBackendBurst',
      limits.perBackendBurst,
      Math.max(1, 2 * perBackendPerSec),
      1,
    ),
    totalPerSec,
    totalBurst: num('messageLimits.totalBurst', limits.totalBurst, Math.max(1, totalPerSec), 1),
    maxPacketBytes: num(
      'messageLimits.maxPacketBytes',
      limits.maxPacketBytes,
      DEFAULT_MAX_PACKET_BYTES,
      1024,
      256 * 1024 * 1024,
      true,
    ),
  };

  const strategy = o.strategy ?? DEFAULT_STRATEGY;
  if (typeof strategy !== 'string' || strategy === '')
    throw invalidOption('strategy', 'a strategy name', strategy);

  const aff = o.affinity === undefined ? undefined : section('affinity', o.affinity);
  if (aff) {
    for (const k of ['header', 'cookie'] as const) {
      if (
        aff[k] !== undefined &&
        (typeof aff[k] !== 'string' || !HEADER_NAME_RE.test(aff[k] as string))
      ) {
        throw invalidOption(`affinity.${k}`, 'a header/cookie name', aff[k]);
      }
    }
    bool('affinity.clientAddress', aff.clientAddress, false);
    if (bool('affinity.setCookie', aff.setCookie, false) && aff.cookie === undefined) {
      throw invalidOption('affinity.setCookie', 'used together with affinity.cookie', true);
    }
    num('affinity.cookieMaxAgeSec', aff.cookieMaxAgeSec, 0, 0, 400 * 86400, true);
    const secure = aff.cookieSecure;
    if (secure !== undefined && secure !== 'auto' && typeof secure !== 'boolean') {
      throw invalidOption('affinity.cookieSecure', "true, false or 'auto'", secure);
    }
    if (aff.header === undefined && aff.cookie === undefined && aff.clientAddress !== true) {
      throw invalidOption('affinity', 'one of header, cookie or clientAddress', aff);
    }
  }

  const agent = section('agent', o.agent);
  const maxSockets = num('agent.maxSockets', agent.maxSockets, DEFAULT_MAX_SOCKETS, 1, 1e6, true);
  // As many idle sockets as the pool may hold (Node's default too): a lower
  // cap closes sockets after every burst and reopens them on the next one.
  const maxFreeSockets = num(
    'agent.maxFreeSockets',
    agent.maxFreeSockets,
    maxSockets,
    0,
    1e6,
    true,
  );
  const keepAliveMsecs = num('agent.keepAliveMsecs', agent.keepAliveMsecs, 1000, 1);
  const idleTimeoutMs = num('agent.idleTimeoutMs', agent.idleTimeoutMs, 15_000, 1);
  const retry = section('retry', o.retry);
  const methods = retry.methods ?? DEFAULT_IDEMPOTENT_METHODS;
  if (
    !Array.isArray(methods) ||
    methods.some((m) => typeof m !== 'string' || !HEADER_NAME_RE.test(m))
  ) {
    throw invalidOption('retry.methods', 'an array of HTTP method names', methods);
  }
  const out = section('outlier', o.outlier);
  const hc = section('healthCheck', o.healthCheck);
  const sat = section('saturation', o.saturation);
  const warm = section('warmUp', o.warmUp);
  const ovl = section('overload', o.overload);

  let discovery: ResolvedOptions['discovery'];
  if (o.discovery !== undefined && o.discovery !== false) {
    const d = section('discovery', o.discovery);
    if (keys.length === 0)
      throw new GatewayError(
        'LW_GW_INVALID_DISCOVERY',
        'discovery needs keys: registrations are honoured only when signed',
      );
    if (!Array.isArray(d.allowedRanges) || d.allowedRanges.length === 0) {
      throw new GatewayError(
        'LW_GW_INVALID_DISCOVERY',
        'discovery.allowedRanges must list at least one CIDR',
      );
    }
    d.allowedRanges.forEach((r) => parseCidr(r, new BlockList()));
    const ports = d.allowedPorts ?? [];
    if (!Array.isArray(ports))
      throw invalidOption('discovery.allowedPorts', 'an array of ports', ports);
    ports.forEach((p, i) => num(`discovery.allowedPorts[${i}]`, p, 0, 1, 65535, true));
    discovery = {
      allowedRanges: d.allowedRanges as string[],
      allowedPorts: ports as number[],
      maxBackends: num('discovery.maxBackends', d.maxBackends, 100, 1, 10_000, true),
    };
  } else if (backends.length === 0) {
    throw new GatewayError('LW_GW_NO_BACKENDS');
  }

  let decisionHeader: string | undefined;
  if (o.decisionHeader === true) decisionHeader = DEFAULT_DECISION_HEADER;
  else if (typeof o.decisionHeader === 'string' && HEADER_NAME_RE.test(o.decisionHeader))
    decisionHeader = o.decisionHeader.toLowerCase();
  else if (o.decisionHeader !== undefined && o.decisionHeader !== false)
    throw invalidOption('decisionHeader', 'a boolean or a header name', o.decisionHeader);
  if (
    o.statusToken !== undefined &&
    (typeof o.statusToken !== 'string' || o.statusToken.length < 8)
  ) {
    throw invalidOption('statusToken', 'a string of at least 8 characters', '<redacted>');
  }
  if (o.statusToken !== undefined && o.statusPath === undefined && o.metricsPath === undefined)
    throw invalidOption(
      'statusToken',
      'used with statusPath or metricsPath (it protects them)',
      '<redacted>',
    );
  const on = section('on', o.on);
  for (const k of ['proxyReq', 'proxyRes'] as const) fn(`on.${k}`, on[k], undefined);
  for (const k of ['strategyOptions', 'load'] as const) section(k, o[k]);

  const resolved: ResolvedOptions = {
    backends,
    broker: broker(o.broker),
    // A service is one more topic level: its agents publish under it, and
    // another service's reports never reach this balancer.
    topicPrefix: o.service === undefined ? (topicPrefix as string) : `${topicPrefix}/${o.service}`,
    service: o.service as string | undefined,
    keys,
    requireSignature: o.requireSignature as boolean | undefined,
    allowUnsigned,
    unsignedMaxPenalty: num(
      'unsignedMaxPenalty',
      o.unsignedMaxPenalty,
      DEFAULT_UNSIGNED_MAX_PENALTY,
      1,
      8,
    ),
    maxClockSkewMs:
      o.maxClockSkewMs === undefined ? undefined : num('maxClockSkewMs', o.maxClockSkewMs, 0, 1),
    maxRetainedAgeMs:
      o.maxRetainedAgeMs === undefined
        ? undefined
        : num('maxRetainedAgeMs', o.maxRetainedAgeMs, 0, 1),
    maxPayloadBytes:
      o.maxPayloadBytes === undefined
        ? undefined
        : num('maxPayloadBytes', o.maxPayloadBytes, 0, 256, 1 << 20, true),
    messageLimits,
    strategy,
    strategyOptions: section('strategyOptions', o.strategyOptions),
    load: section('load', o.load),
    affinity: aff,
    connectTimeoutMs: num(
      'connectTimeoutMs',
      o.connectTimeoutMs,
      DEFAULT_CONNECT_TIMEOUT_MS,
      1,
      2 ** 31 - 1,
    ),
    requestTimeoutMs: num(
      'requestTimeoutMs',
      o.requestTimeoutMs,
      DEFAULT_REQUEST_TIMEOUT_MS,
      1,
      2 ** 31 - 1,
    ),
    clientBodyTimeoutMs:
      o.clientBodyTimeoutMs === false
        ? undefined
        : num(
            'clientBodyTimeoutMs',
            o.clientBodyTimeoutMs,
            DEFAULT_CLIENT_BODY_TIMEOUT_MS,
            1,
            2 ** 31 - 1,
          ),
    maxInFlightPerClient:
      o.maxInFlightPerClient === false
        ? undefined
        : num(
            'maxInFlightPerClient',
            o.maxInFlightPerClient,
            DEFAULT_MAX_IN_FLIGHT_PER_CLIENT,
            1,
            1e6,
            true,
          ),
    changeOrigin: bool('changeOrigin', o.changeOrigin, false),
    trustForwarded: bool('trustForwarded', o.trustForwarded, false),
    forwardMountPath: bool('forwardMountPath', o.forwardMountPath, false),
    agent: { maxSockets, maxFreeSockets, keepAliveMsecs, idleTimeoutMs },
    retry:
      o.retry === false
        ? undefined
        : {
            maxRetries: num('retry.maxRetries', retry.maxRetries, 2, 0, 10, true),
            methods: methods.map((m: string) => m.toUpperCase()),
            budgetRatio: num('retry.budgetRatio', retry.budgetRatio, 0.2, 0, 1),
            minRetriesPerSec: num('retry.minRetriesPerSec', retry.minRetriesPerSec, 10, 0),
            budgetWindowMs: num(
              'retry.budgetWindowMs',
              retry.budgetWindowMs,
              10_000,
              1000,
              600_000,
              true,
            ),
            maxBodyBytes: num(
              'retry.maxBodyBytes',
              retry.maxBodyBytes,
              DEFAULT_RETRY_MAX_BODY_BYTES,
              0,
              64 << 20,
              true,
            ),
          },
    on: on as ResolvedOptions['on'],
    outlier: {
      consecutiveFailures: num(
        'outlier.consecutiveFailures',
        out.consecutiveFailures,
        5,
        1,
        1e6,
        true,
      ),
      baseEjectionMs: num('outlier.baseEjectionMs', out.baseEjectionMs, 30_000, 1),
      maxEjectionMs: num('outlier.maxEjectionMs', out.maxEjectionMs, 300_000, 1),
      maxEjectionPercent: num('outlier.maxEjectionPercent', out.maxEjectionPercent, 50, 0, 100),
      panicThresholdPercent: num(
        'outlier.panicThresholdPercent',
        out.panicThresholdPercent,
        50,
        0,
        100,
      ),
      failOn5xx: bool('outlier.failOn5xx', out.failOn5xx, true),
    },
    healthCheck:
      o.healthCheck === false
        ? undefined
        : {
            path: path('healthCheck.path', hc.path) ?? '/',
            intervalMs: num('healthCheck.intervalMs', hc.intervalMs, 5000, 10),
            timeoutMs: num('healthCheck.timeoutMs', hc.timeoutMs, 2000, 1),
            unhealthyThreshold: num(
              'healthCheck.unhealthyThreshold',
              hc.unhealthyThreshold,
              2,
              1,
              100,
              true,
            ),
            healthyThreshold: num(
              'healthCheck.healthyThreshold',
              hc.healthyThreshold,
              1,
              1,
              100,
              true,
            ),
          },
    warmUp:
      o.warmUp === false
        ? undefined
        : {
            requests: num(
              'warmUp.requests',
              warm.requests,
              DEFAULT_WARM_UP_REQUESTS,
              0,
              100_000,
              true,
            ),
            connectionsPerBackend: num(
              'warmUp.connectionsPerBackend',
              warm.connectionsPerBackend,
              DEFAULT_WARM_UP_CONNECTIONS,
              0,
              1024,
              true,
            ),
          },
    saturation: {
      // Default: the pool size. Beyond it requests would wait inside the
      // agent, an unbounded queue we cannot see; they wait in ours instead.
      maxInFlightPerBackend: num(
        'saturation.maxInFlightPerBackend',
        sat.maxInFlightPerBackend,
        maxSockets,
        1,
        1e6,
        true,
      ),
      maxExpectedWaitMs:
        sat.maxExpectedWaitMs === undefined
          ? undefined
          : num('saturation.maxExpectedWaitMs', sat.maxExpectedWaitMs, 0, 1),
      queueSize: num('saturation.queueSize', sat.queueSize, 1000, 0, 1e6, true),
      queueTimeoutMs: num('saturation.queueTimeoutMs', sat.queueTimeoutMs, 5000, 1),
    },
    overload:
      o.overload === false
        ? undefined
        : {
            // 500 ms, sampled every 200 ms (bench/results/burst.md): at 1 s the gateway never
            // shed while its tails reached 10-20 s; at 200 ms it shed a fresh gateway's first
            // requests on a busy host (its own startup stall was 255 ms).
            maxEventLoopDelayMs: num(
              'overload.maxEventLoopDelayMs',
              ovl.maxEventLoopDelayMs,
              DEFAULT_MAX_EVENT_LOOP_DELAY_MS,
              1,
            ),
            sampleIntervalMs: num(
              'overload.sampleIntervalMs',
              ovl.sampleIntervalMs,
              DEFAULT_OVERLOAD_SAMPLE_MS,
              10,
            ),
          },
    discovery,
    statusPath: path('statusPath', o.statusPath),
    statusToken: o.statusToken as string | undefined,
    metricsPath: path('metricsPath', o.metricsPath),
    metricsRegistry: metricsRegistry(o.metricsRegistry),
    metricsPrefix: metricsPrefix(o.metricsPrefix),
    decisionHeader,
    dashboard: resolveDashboardOptions(o.dashboard, {
      statusToken: o.statusToken,
      statusPath: o.statusPath as string | undefined,
      metricsPath: o.metricsPath as string | undefined,
    }),
    logger: logger(o.logger),
    now: fn('now', o.now, Date.now),
    random: fn('random', o.random, Math.random),
  };
  if (
    resolved.maxPayloadBytes !== undefined &&
    resolved.messageLimits.maxPacketBytes <= resolved.maxPayloadBytes
  ) {
    throw invalidOption(
      'messageLimits.maxPacketBytes',
      '> maxPayloadBytes (a packet holds the topic and headers too)',
      resolved.messageLimits.maxPacketBytes,
    );
  }
  if (resolved.outlier.maxEjectionMs < resolved.outlier.baseEjectionMs) {
    throw invalidOption(
      'outlier.maxEjectionMs',
      '>= outlier.baseEjectionMs',
      resolved.outlier.maxEjectionMs,
    );
  }
  return resolved;
}
