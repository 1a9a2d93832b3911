/**
 * Unknown option keys are mistakes: in plain JavaScript nothing else catches
 * `stratgy: 'round-robin'` or `healthCheck: { pathh: '/healthz' }`, and the
 * option silently keeps its default. One pass over the input against the
 * known keys, before any value is read, names the option's full path and the
 * nearest known key.
 *
 * `strategyOptions` and `load` are checked by the strategy and the load
 * estimate themselves (load/option-check.ts); objects the user owns (a
 * metrics registry, a logger, an mqtt client) are not walked.
 */
import { unknownOptionText } from '@loadwise/protocol';
import { GatewayError } from './errors';
import { isObject } from './options-checks';

/** A section: its known keys, each with the shape of its value (undefined: a leaf). */
type Shape = { readonly [key: string]: Shape | undefined };

const BACKEND: Shape = { id: undefined, url: undefined, weight: undefined };

const SHAPE: Shape = {
  backends: undefined, // an array of BACKEND, handled below
  broker: undefined, // one of BROKER_SHAPES, handled below
  topicPrefix: undefined,
  service: undefined,
  keys: undefined,
  requireSignature: undefined,
  maxClockSkewMs: undefined,
  maxPayloadBytes: undefined,
  allowUnsigned: undefined,
  unsignedMaxPenalty: undefined,
  maxRetainedAgeMs: undefined,
  messageLimits: {
    perBackendPerSec: undefined,
    perBackendBurst: undefined,
    totalPerSec: undefined,
    totalBurst: undefined,
    maxPacketBytes: undefined,
  },
  strategy: undefined,
  strategyOptions: undefined,
  load: undefined,
  affinity: {
    header: undefined,
    cookie: undefined,
    clientAddress: undefined,
    setCookie: undefined,
    cookieMaxAgeSec: undefined,
    cookieSecure: undefined,
  },
  connectTimeoutMs: undefined,
  requestTimeoutMs: undefined,
  changeOrigin: undefined,
  trustForwarded: undefined,
  forwardMountPath: undefined,
  clientBodyTimeoutMs: undefined,
  maxInFlightPerClient: undefined,
  agent: {
    maxSockets: undefined,
    maxFreeSockets: undefined,
    keepAliveMsecs: undefined,
    idleTimeoutMs: undefined,
  },
  retry: {
    maxRetries: undefined,
    methods: undefined,
    budgetRatio: undefined,
    minRetriesPerSec: undefined,
    budgetWindowMs: undefined,
    maxBodyBytes: undefined,
  },
  on: { proxyReq: undefined, proxyRes: undefined },
  outlier: {
    consecutiveFailures: undefined,
    baseEjectionMs: undefined,
    maxEjectionMs: undefined,
    maxEjectionPercent: undefined,
    panicThresholdPercent: undefined,
    failOn5xx: undefined,
  },
  healthCheck: {
    path: undefined,
    intervalMs: undefined,
    timeoutMs: undefined,
    unhealthyThreshold: undefined,
    healthyThreshold: undefined,
  },
  warmUp: { requests: undefined, connectionsPerBackend: undefined },
  saturation: {
    maxInFlightPerBackend: undefined,
    maxExpectedWaitMs: undefined,
    queueSize: undefined,
    queueTimeoutMs: undefined,
  },
  overload: { maxEventLoopDelayMs: undefined, sampleIntervalMs: undefined },
  discovery: { allowedRanges: undefined, allowedPorts: undefined, maxBackends: undefined },
  statusPath: undefined,
  statusToken: undefined,
  metricsPath: undefined,
  metricsRegistry: undefined,
  metricsPrefix: undefined,
  decisionHeader: undefined,
  dashboard: {
    path: undefined,
    token: undefined,
    maxViewers: undefined,
    intervalMs: undefined,
    historySec: undefined,
  },
  logger: undefined,
  now: undefined,
  random: undefined,
};

const BROKER_URL: Shape = {
  url: undefined,
  username: undefined,
  password: undefined,
  ca: undefined,
  cert: undefined,
  key: undefined,
  rejectUnauthorized: undefined,
  clientIdPrefix: undefined,
  keepaliveSec: undefined,
  reconnectPeriodMs: undefined,
  connectTimeoutMs: undefined,
  protocolVersion: undefined,
};

function check(value: Record<string, unknown>, shape: Shape, path: string): void {
  const known = Object.keys(shape);
  for (const key of Object.keys(value)) {
    const full = `${path}${key}`;
    if (!Object.prototype.hasOwnProperty.call(shape, key)) {
      throw new GatewayError('LW_GW_INVALID_OPTION', unknownOptionText(key, known, path));
    }
    const sub = shape[key];
    if (sub !== undefined && isObject(value[key]))
      check(value[key] as Record<string, unknown>, sub, `${full}.`);
  }
}

/** Throws LW_GW_INVALID_OPTION naming the first unknown key, with its path and a suggestion. */
export function rejectUnknownOptions(input: Record<string, unknown>): void {
  check(input, SHAPE, '');
  if (Array.isArray(input.backends)) {
    input.backends.forEach((b, i) => {
      if (isObject(b)) check(b, BACKEND, `backends[${i}].`);
    });
  }
  const b = input.broker;
  if (isObject(b) && !('client' in b)) {
    if ('embedded' in b)
      check(b, { embedded: undefined, port: undefined, host: undefined }, 'broker.');
    else check(b, BROKER_URL, 'broker.');
  }
}
