/**
 * Error catalogue of @loadwise/gateway-plugin (fastify `FST_ERR_*` / undici
 * `UND_ERR_*` style). Codes are stable: users match on them and docs/gateway.md
 * lists every one, with its HTTP status (a test checks that the two agree).
 *
 * Construction errors (`status` undefined) are thrown by `loadBalance(opts)`.
 * Request errors (`status` set) are never thrown on the request path: they are
 * written as a JSON response `{ "error": { "code", "message" } }` with the
 * `X-Loadwise-Error` header, so a request is never silently lost.
 */
export const GATEWAY_ERRORS = {
  LW_GW_INVALID_OPTION: { status: undefined, message: 'an option has the wrong type or range' },
  LW_GW_NO_BACKENDS: {
    status: undefined,
    message: 'no backends configured and discovery is off',
  },
  LW_GW_INVALID_BACKEND_ID: {
    status: undefined,
    message: 'backend id is not a valid protocol backend id',
  },
  LW_GW_DUPLICATE_BACKEND: { status: undefined, message: 'two backends share an id or a URL' },
  LW_GW_INVALID_BACKEND_URL: {
    status: undefined,
    message:
      'backend url is not an absolute http(s) URL without credentials, query or hash, or its port is 0',
  },
  LW_GW_INVALID_BROKER: {
    status: undefined,
    message: 'broker is not a mqtt/mqtts/ws/wss URL, an mqtt client or { embedded: true }',
  },
  LW_GW_UNKNOWN_STRATEGY: { status: undefined, message: 'strategy name is not registered' },
  LW_GW_BROKER_UNREACHABLE: {
    status: undefined,
    message: 'ready() timed out: the broker did not accept a connection in time',
  },
  LW_GW_INVALID_DISCOVERY: {
    status: undefined,
    message: 'discovery needs signing keys and at least one valid allowed range (CIDR)',
  },
  LW_GW_NO_BACKEND: { status: 503, message: 'no backend is available for this request' },
  LW_GW_SATURATED: {
    status: 503,
    message: 'every backend is saturated and the wait queue is full or the wait expired',
  },
  LW_GW_OVERLOADED: { status: 503, message: 'the gateway itself is overloaded (event-loop delay)' },
  LW_GW_CLOSED: { status: 503, message: 'the balancer is closed' },
  LW_GW_CLOSED_IN_FLIGHT: {
    status: 502,
    message: 'the balancer closed while a backend had the request: its outcome is unknown',
  },
  LW_GW_DRAINING: {
    status: 503,
    message: 'the gateway is shutting down; in-flight requests finish, new ones go elsewhere',
  },
  LW_GW_BODY_CONSUMED: {
    status: 500,
    message: 'the request body was read before the balancer and cannot be forwarded',
  },
  LW_GW_HOOK_FAILED: { status: 500, message: 'an on.proxyReq or on.proxyRes hook threw' },
  LW_GW_UPSTREAM_FAILED: {
    status: 502,
    message: 'every attempt to reach a backend failed (refused, reset or closed)',
  },
  LW_GW_UPSTREAM_TIMEOUT: { status: 504, message: 'the backend did not answer in time' },
  LW_GW_LOOP: {
    status: 508,
    message:
      'the request came back to the gateway that sent it (X-Loadwise-Via), on its own connection (a backend is the gateway itself) or for the fourth time (a loop through another proxy)',
  },
  LW_GW_BAD_REQUEST: {
    status: 400,
    message:
      'the request cannot be forwarded safely (Transfer-Encoding other than chunked, Content-Length with Transfer-Encoding or not a single number, duplicate Host, or a header Node refuses to send)',
  },
  LW_GW_BAD_PATH: {
    status: 400,
    message:
      'the request path has a dot-segment ("." or "..", also percent-encoded or between backslashes) that could leave the backend base path, an empty segment ("//") or a backslash that the proxy would rewrite, or the target is not a path',
  },
  LW_GW_METHOD_NOT_ALLOWED: {
    status: 405,
    message:
      'TRACE is not proxied: the backend would echo the headers the gateway added (credentials, identity, X-Forwarded-*)',
  },
  LW_GW_BODY_TIMEOUT: {
    status: 408,
    message: 'the client sent no request body bytes for clientBodyTimeoutMs',
  },
  LW_GW_CLIENT_LIMIT: {
    status: 429,
    message: 'this client already has maxInFlightPerClient requests in flight',
  },
  LW_GW_PROXY_ERROR: {
    status: 502,
    message: 'the gateway could not send the request to the backend (logged)',
  },
} as const satisfies Record<string, { status: number | undefined; message: string }>;

/**
 * Why a wire message that decoded fine was still dropped (counted by code with
 * the LW_PROTO_* decode failures, logged rate-limited; never an exception).
 */
export const DROP_REASONS = {
  LW_GW_UNKNOWN_BACKEND: 'the message names a backend that is not configured (and not discovered)',
  LW_GW_REGISTRATION_REJECTED:
    'a registration was ignored: discovery off, unsigned, address outside the allowed ranges or ports, a changed address, or too many backends',
  LW_GW_RATE_LIMITED:
    "the gateway's or a backend's message rate (messageLimits) was exceeded; dropped before it was parsed or applied",
  LW_GW_UNSIGNED_IGNORED:
    'an unsigned status was ignored: only signed messages change whether a backend is routable (allowUnsigned)',
  LW_GW_PACKET_TOO_LARGE:
    'the embedded broker disconnected a client whose packet exceeds messageLimits.maxPacketBytes',
  LW_GW_BROKER_LIMIT:
    "the embedded broker refused a client's retained message, topic, subscription, QoS 2 publish or persistent session past its bounds",
} as const;

export type DropReason = keyof typeof DROP_REASONS;

export type GatewayErrorCode = keyof typeof GATEWAY_ERRORS;

export class GatewayError extends Error {
  readonly code: GatewayErrorCode;
  /** HTTP status this error answers with, undefined for construction errors. */
  readonly status: number | undefined;
  constructor(code: GatewayErrorCode, detail?: string) {
    super(`${code}: ${detail ?? GATEWAY_ERRORS[code].message}`);
    this.name = 'GatewayError';
    this.code = code;
    this.status = GATEWAY_ERRORS[code].status;
  }
}

export function invalidOption(name: string, expected: string, value: unknown): GatewayError {
  return new GatewayError(
    'LW_GW_INVALID_OPTION',
    `${name} must be ${expected}, got ${shown(value)}`,
  );
}

/**
 * A user's value in an error message: JSON, at most 80 characters. Never throws: a BigInt or
 * a cycle, which JSON.stringify throws on, is named by its type.
 */
export function shown(value: unknown): string {
  if (typeof value === 'function') return 'a function';
  if (typeof value === 'bigint') return `${value}n`.slice(0, 80);
  // JSON says null for NaN and ±Infinity: `got null` for `intervalMs: NaN` misled.
  if (typeof value === 'number' && !Number.isFinite(value)) return String(value);
  try {
    return String(JSON.stringify(value)).slice(0, 80);
  } catch {
    return typeof value;
  }
}
