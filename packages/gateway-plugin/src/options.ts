/**
 * The public options of `loadBalance(opts)` (hand-written, for their doc
 * comments) and the table of their defaults. The schema in
 * options-validate.ts checks them, and a compile-time check there keeps it
 * and these types equal; everything after construction reads ResolvedOptions.
 */
import { monotonicNow } from './clock';
import type { ClientRequest, IncomingMessage, ServerResponse } from 'node:http';
import type { Server as NetServer } from 'node:net';
import type { MqttClient } from 'mqtt';
import type { Registry as MetricsRegistry } from 'prom-client';
import type { SigningKey } from '@loadwise/protocol';
import type { InferOutput } from 'valibot';
import { DEFAULT_TOPIC_PREFIX } from '@loadwise/protocol';
import type { DashboardOptions } from './dashboard/options';
import { DEFAULT_METRICS_PREFIX } from './observability/metrics';
import type { loadBalanceOptionsSchema } from './options-validate';

/** A backend from configuration: the allow-list. MQTT can only change its share of traffic. */
export interface BackendConfig {
  /** Protocol backend id: the `<backendId>` topic level its agent publishes under. */
  id: string;
  /** Absolute http(s) URL; its path, if any, is prepended to every proxied path. */
  url: string;
  /** Static weight (default 1). */
  weight?: number;
}

export interface BrokerUrlOptions {
  url: string;
  username?: string;
  password?: string | Buffer;
  /** TLS (mqtts/wss): CA, client certificate and key (PEM). */
  ca?: string | Buffer | Array<string | Buffer>;
  cert?: string | Buffer;
  key?: string | Buffer;
  rejectUnauthorized?: boolean;
  /** Prefix of the MQTT client id; a random suffix keeps several gateways apart. */
  clientIdPrefix?: string;
  keepaliveSec?: number;
  reconnectPeriodMs?: number;
  connectTimeoutMs?: number;
  /**
   * MQTT protocol level: 5 (default) asks the broker not to send packets over
   * messageLimits.maxPacketBytes, and falls back to 4 (3.1.1) if the broker
   * refuses 5; 4 never tries 5.
   */
  protocolVersion?: 4 | 5;
}

export type BrokerOption =
  | string
  | BrokerUrlOptions
  /** An mqtt.js client the user owns: the balancer subscribes but never ends it. */
  | { client: MqttClient }
  /** An aedes broker hosted in this process (single gateway); its URL is `balancer.brokerUrl`. */
  | {
      embedded: true;
      port?: number;
      host?: string;
      /** Client connections at once (default 1024). */
      maxConnections?: number;
      /** Client connections at once from one remote address (default 256). */
      maxConnectionsPerAddress?: number;
    };

export interface AffinityOptions {
  /** Hash key from this request header (e.g. 'x-user-id'). */
  header?: string;
  /** Hash key from this cookie; with setCookie, the gateway sets it when absent. */
  cookie?: string;
  /** Hash key from the client address (the socket's, or the one trustForwarded gives). */
  clientAddress?: boolean;
  setCookie?: boolean;
  cookieMaxAgeSec?: number;
  /**
   * `Secure` on the cookie the gateway sets: `'auto'` (default) when the
   * client's request came over TLS, or, with trustForwarded, said
   * `X-Forwarded-Proto: https`; `true` always; `false` never.
   */
  cookieSecure?: boolean | 'auto';
}

export interface RetryOptions {
  /** Further attempts after the first, each to a different backend (default 2). */
  maxRetries?: number;
  /** Methods considered idempotent (default GET HEAD OPTIONS PUT DELETE). */
  methods?: string[];
  /** Retries may add at most this share of requests over the window (default 0.2, Finagle). */
  budgetRatio?: number;
  /** Retries always allowed per second regardless of the ratio (default 10). */
  minRetriesPerSec?: number;
  budgetWindowMs?: number;
  /**
   * A retryable request with a body of at most this many bytes (Content-Length)
   * is read into memory before it is sent, so a retry can send it again
   * (default 16 384; 0: requests with a body are never retried).
   */
  maxBodyBytes?: number;
}

/** Hooks on each attempt, in http-proxy-middleware's `on: { proxyReq, proxyRes }` shape. */
export interface ProxyEventHooks {
  /**
   * Before the request to the backend is sent (every attempt): `proxyReq.setHeader(...)`.
   * A throw, or a rejection of the promise it returns, answers `500 LW_GW_HOOK_FAILED`.
   */
  proxyReq?: (proxyReq: ClientRequest, req: IncomingMessage, res: ServerResponse) => void;
  /**
   * The backend's response headers arrived: change `proxyRes.headers` before they are
   * copied, or write the answer yourself (`selfHandleResponse`).
   */
  proxyRes?: (proxyRes: IncomingMessage, req: IncomingMessage, res: ServerResponse) => void;
}

export interface OutlierOptions {
  /** Consecutive failures that eject a backend (default 5, Envoy consecutive_5xx). */
  consecutiveFailures?: number;
  /** Ejection lasts baseEjectionMs × times ejected, at most maxEjectionMs (Envoy). */
  baseEjectionMs?: number;
  maxEjectionMs?: number;
  /** At most this share of backends is ejected at once; at least one may be (Envoy). */
  maxEjectionPercent?: number;
  /** Below this share of healthy backends, spread over all routable ones (Envoy panic). */
  panicThresholdPercent?: number;
  /** Whether a 5xx response counts as a failure (default true). */
  failOn5xx?: boolean;
}

export interface HealthCheckOptions {
  path?: string;
  /**
   * The `Host` header of checks and of the warm-up's preconnect GETs (default:
   * the backend URL's host and port). For backends behind a proxy that routes
   * by `Host` (a virtual host, an ingress), which answers the backend's own
   * address with a default server: requests carry the client's `Host`.
   */
  host?: string;
  intervalMs?: number;
  timeoutMs?: number;
  /** Consecutive failed checks that mark a backend down (default 2). */
  unhealthyThreshold?: number;
  /** Consecutive passed checks that mark it up again (default 1). */
  healthyThreshold?: number;
}

/**
 * What the gateway does before `lb.ready()` resolves, so that its first real
 * requests neither run uncompiled code nor open a backend connection each
 * (docs/gateway.md, "Warm-up").
 */
export interface WarmUpOptions {
  /**
   * Synthetic requests sent through this gateway's own request path (the
   * flow, http-proxy, Node's HTTP client and server) against a loopback sink
   * in this process, never a backend, and counted nowhere (default 300; 0: none).
   */
  requests?: number;
  /**
   * Keep-alive connections opened to each backend, configured or discovered,
   * by GETs of `healthCheck.path` through its pool (default 4; 0: none).
   * Skipped with `healthCheck: false`: Node's pool only keeps a socket that
   * carried a request.
   */
  connectionsPerBackend?: number;
}

/**
 * TLS to https backends: the pools, the active health checks and the
 * warm-up's preconnects (docs/gateway.md, "TLS to backends"). The name a
 * backend's certificate is verified against always comes from its configured
 * URL (or `servername`), never from a client's `Host` header.
 */
export interface BackendTlsOptions {
  /** CA certificates (PEM) to trust instead of Node's bundled roots: a private CA. */
  ca?: string | Buffer | Array<string | Buffer>;
  /** Client certificate (PEM) for mutual TLS; needs `key`. */
  cert?: string | Buffer;
  /** Client key (PEM) for mutual TLS; needs `cert`. */
  key?: string | Buffer;
  /**
   * The name every backend's certificate is verified against, and sent as
   * SNI, instead of the URL's hostname: for backends addressed by IP whose
   * certificates carry a DNS name. Without it, a hostname is verified (and
   * sent) as it is, and an IP address is verified against the certificate's
   * IP entries with no SNI.
   */
  servername?: string;
  /** Verify backends' certificates (default true); `false` is logged as a warning. */
  rejectUnauthorized?: boolean;
}

export interface SaturationOptions {
  /**
   * Requests this gateway keeps outstanding on one backend at most (default agent.maxSockets).
   * A backend whose agent reports a concurrency limit `c`, and full in its fresh report,
   * takes `max(2c, c + 4)` first attempts at most (docs/gateway.md, "Saturation").
   */
  maxInFlightPerBackend?: number;
  /** A backend whose expected wait is above this is saturated too (off by default). */
  maxExpectedWaitMs?: number;
  /** Requests waiting for a free backend at most (default 1000); 0 answers 503 at once. */
  queueSize?: number;
  queueTimeoutMs?: number;
}

/**
 * Bounds on WebSockets (upgrades) through a balancer: an open WebSocket holds
 * a client connection and a backend connection until one side closes it, so
 * without bounds one client, or clients that vanish without a FIN, hold the
 * gateway's and the backends' sockets for good.
 */
export interface WebSocketOptions {
  /**
   * A WebSocket with no byte in either direction for this long is closed,
   * client and backend side (default 300 000, Envoy's stream idle timeout;
   * false: never). Applications that stay quiet longer send pings.
   */
  idleTimeoutMs?: number | false;
  /**
   * WebSockets one client address (IPv6: its /64) may hold open through this
   * balancer; more get 429 LW_GW_CLIENT_LIMIT (default 256; false: no bound).
   */
  maxPerClient?: number | false;
  /**
   * WebSockets open through this balancer at most; more get 503
   * LW_GW_OVERLOADED with Retry-After (default 10 000; false: no bound).
   */
  maxOpen?: number | false;
}

/**
 * The lane of long streamed answers (docs/gateway.md, "Streams"): an event
 * stream (`contentTypes`) that gave no length and is still running `afterMs`
 * after its head is no longer a request the backend is working on. It leaves
 * the bounds of requests (saturation.maxInFlightPerBackend,
 * maxInFlightPerClient) and the load the strategy sees, and holds a place
 * here instead, with a connection of its backend's pool beyond
 * agent.maxSockets. Without it, 256 open event
 * streams filled a backend's slots and every other request got 503, and 65
 * from one NAT address got that address 429.
 */
export interface StreamOptions {
  /** Time after the head before a streamed answer moves to the lane (default 1 000). */
  afterMs?: number;
  /**
   * Streams one client address (IPv6: its /64) may hold in the lane (default
   * 256; false: no bound). Past it a stream stays counted as a request.
   */
  maxPerClient?: number | false;
  /** Streams in the lane at most (default 10 000; false: no bound). Past it, as above. */
  maxOpen?: number | false;
  /**
   * Media types of the answers that are streams (default ['text/event-stream']).
   * Not every chunked answer: server-side rendering or an export streams chunks
   * while the backend works, and must stay within its bounds.
   */
  contentTypes?: string[];
}

/**
 * The slowest a request body may arrive (Kestrel's MinRequestBodyDataRate):
 * past `graceMs` of the gateway reading it, a body whose average rate since
 * it began waiting for it is under `bytesPerSec` is answered 408
 * LW_GW_BODY_TIMEOUT. Time the gateway does not read (a slow backend's
 * backpressure) does not count.
 */
export interface ClientBodyMinRateOptions {
  /** Default 240 (Kestrel's). */
  bytesPerSec?: number;
  /** Reading time before the rate is checked (default 5 000, Kestrel's). */
  graceMs?: number;
}

/**
 * The request body is read into memory before a backend is picked (nginx's
 * `proxy_request_buffering` with `client_body_buffer_size`, in memory only), so
 * a slow upload holds no backend slot while it trickles.
 */
export interface RequestBufferingOptions {
  /**
   * A body that ends within this many bytes is sent whole, with a Content-Length
   * (a chunked one too); a longer one is dispatched once more than this has come,
   * that much sent first and the rest streamed (default 65 536).
   */
  maxBytes?: number;
  /**
   * Bytes of request bodies this balancer holds in memory at once, in all
   * (default 67 108 864, 64 MiB). A body that would pass it is dispatched with
   * what it has and streamed, as without buffering.
   */
  maxTotalBytes?: number;
}

export interface OverloadOptions {
  /** Shed new requests while the event-loop delay (p99 of the last sample) is above this. */
  maxEventLoopDelayMs?: number;
  sampleIntervalMs?: number;
}

/**
 * Shedding on the listen socket's accept queue (Linux; docs/gateway.md,
 * "Accept queue"). Shares are of the effective backlog: `backlog` capped by
 * net.core.somaxconn.
 */
export interface AcceptQueueOptions {
  /** The backlog your server listens with: `server.listen({ port, backlog })` (Node's default 511). */
  backlog?: number;
  /**
   * Start shedding new requests once this share of the backlog waits to be accepted (0-1);
   * the share of requests shed grows with the depth, to all of them at a full queue.
   */
  shedAt?: number;
  /** The shed share falls only while at most this share of the backlog waits (below `shedAt`). */
  resumeAt?: number;
  /** Time the shed share takes to fall from all to none while the queue stays short. */
  holdMs?: number;
  /**
   * The most of new requests ever shed (0-1). A shed answer costs the gateway
   * much of what proxying costs, so shedding everything frees little CPU and
   * serves nobody: a CPU-starved gateway that shed up to all served 56 req/s
   * of 1,400 where it served 873 without this signal (docs/gateway.md).
   */
  maxShare?: number;
  /** How often the queue is read while requests arrive (not at all when idle). */
  sampleIntervalMs?: number;
}

export interface DiscoveryOptions {
  /**
   * CIDRs a registered backend URL must be inside (IP literals only; names are
   * refused). Loopback and NAT64 (64:ff9b::/96) addresses are admitted only
   * inside a range that lies within those blocks (`127.0.0.0/8`; `0.0.0.0/0`
   * does not admit them).
   */
  allowedRanges: string[];
  allowedPorts?: number[];
  maxBackends?: number;
  /**
   * The most weight a registration may claim (default 1, from 0.01 to 1e6): a heavier one
   * is taken at this. A registration is signed by the backend's own key, and the weight
   * divides its score: one key holder that claimed 1e6 took every request of the fleet.
   * Raise it where your agents announce weights of your choosing.
   */
  maxWeight?: number;
  /**
   * A discovered backend whose agent has sent nothing signed for this long,
   * counted while this gateway is connected to the broker, is forgotten once
   * it has no request in flight (default 600 000; false: kept until the
   * gateway restarts). Its id may then register again, at another address.
   */
  forgetAfterMs?: number | false;
  /**
   * Refuse registrations at `http:` URLs (default: true when `backendTls` has a `ca` or a
   * `cert`, which say the backends speak TLS; false otherwise). A registration is the
   * agent's word: without this, an `http:` one was admitted beside a private CA or mutual
   * TLS, and its requests went out in clear, without the client certificate.
   */
  requireTls?: boolean;
}

/** Bounds on the control channel (docs/gateway.md, "Control channel limits"). */
export interface MessageLimitOptions {
  /**
   * Messages per second applied per backend, counted separately for verified
   * signed and for unsigned messages (token bucket; default 20, burst 40).
   */
  perBackendPerSec?: number;
  perBackendBurst?: number;
  /** Messages per second the gateway looks at in all, before any check (default 20 000). */
  totalPerSec?: number;
  totalBurst?: number;
  /**
   * Largest MQTT packet: the MQTT 5 Maximum Packet Size asked of URL brokers,
   * and the embedded broker's limit (default 65 536).
   */
  maxPacketBytes?: number;
}

/**
 * pino-compatible: the balancer calls `logger.warn(fields, msg)` (an object of
 * structured fields, then the sentence), so `pino()`, `console` and objects of
 * `(msg) => void` functions all work (see observability/event-log.ts).
 */
export interface Logger {
  info(objOrMsg: object | string, msg?: string): void;
  warn(objOrMsg: object | string, msg?: string): void;
  error(objOrMsg: object | string, msg?: string): void;
}

export interface LoadBalanceOptions {
  backends: BackendConfig[];
  /** Where agents' reports come from. Without it, the gateway routes on local signals only. */
  broker?: BrokerOption;
  topicPrefix?: string;
  /**
   * The service these backends make up, when one gateway runs several
   * balancers: topics become `<topicPrefix>/<service>/v1/...` (agents take the
   * same `--service`), and metrics and status carry it.
   */
  service?: string;
  /** Verification keys; with keys, unsigned reports are dropped unless requireSignature is false. */
  keys?: SigningKey[];
  /** Legacy spelling: `requireSignature: false` is `allowUnsigned: true`. */
  requireSignature?: boolean;
  /**
   * Accept unsigned reports (default false: refused, with one warning). Even
   * then an unsigned message can never drain, offline, mark down or eject a
   * backend: an unsigned status is ignored and an unsigned report only raises
   * the backend's expected wait, at most by `unsignedMaxPenalty`. SECURITY.md.
   */
  allowUnsigned?: boolean;
  /** Largest factor an unsigned report may put on a backend's expected wait (default 2). */
  unsignedMaxPenalty?: number;
  maxClockSkewMs?: number;
  /** Retained messages (except the Last Will) older than this are ignored (default 60 000). */
  maxRetainedAgeMs?: number;
  maxPayloadBytes?: number;
  messageLimits?: MessageLimitOptions;
  /** Strategy name (default 'load-aware'); see docs/gateway.md. */
  strategy?: string;
  strategyOptions?: Record<string, unknown>;
  /** Options of the per-backend load estimate (createEndpointLoad). */
  load?: Record<string, unknown>;
  affinity?: AffinityOptions;
  connectTimeoutMs?: number;
  requestTimeoutMs?: number;
  /**
   * A request body that sends nothing for this long is answered 408
   * LW_GW_BODY_TIMEOUT and its backend attempt aborted, not counted against
   * the backend (default 10 000; false: off).
   */
  clientBodyTimeoutMs?: number | false;
  /**
   * A request body slower than this on average, once its grace is over, is
   * answered 408 LW_GW_BODY_TIMEOUT and its backend attempt aborted, not
   * counted against the backend (default `{ bytesPerSec: 240, graceMs: 5000 }`;
   * false: off). A body trickling under clientBodyTimeoutMs held a backend
   * slot until the server's requestTimeout.
   */
  clientBodyMinRate?: ClientBodyMinRateOptions | false;
  /**
   * Read a request's body (up to `maxBytes`, within `maxTotalBytes` in all) before
   * picking a backend, so that a slow upload holds no backend slot while it arrives;
   * clientBodyTimeoutMs and clientBodyMinRate run meanwhile (default
   * `{ maxBytes: 65536, maxTotalBytes: 67108864 }`; false: bodies stream from dispatch,
   * except those read for retries, `retry.maxBodyBytes`).
   */
  requestBuffering?: RequestBufferingOptions | false;
  /**
   * Requests one client address (IPv6: its /64) may have in the gateway at
   * once, waiting or proxied; more get 429 LW_GW_CLIENT_LIMIT (default 64;
   * false: off). The address is the one trustForwarded gives: behind your own
   * proxies, set it to their number or every client shares their address.
   */
  maxInFlightPerClient?: number | false;
  /** Rewrite the Host header to the backend's host (default false). */
  changeOrigin?: boolean;
  /**
   * The proxies in front of the gateway that it trusts (default false: none).
   * A number n (0-32) is how many: each must append the address it got the
   * request from to X-Forwarded-For (nginx `$proxy_add_x_forwarded_for`, AWS
   * ALB, Envoy), and the client address is the n-th entry from the right
   * (the left-most one when there are fewer), as Envoy's
   * `xff_num_trusted_hops` and Express's numeric `trust proxy` count; entries
   * further left are the client's own and never believed. true is 1. That
   * address keys maxInFlightPerClient, webSockets.maxPerClient and
   * affinity.clientAddress, and is sent as X-Real-IP. With trust the gateway
   * appends to X-Forwarded-For and keeps the proxy's X-Forwarded-Proto,
   * -Host and -Port; without, it overwrites them from the connection.
   */
  trustForwarded?: boolean | number;
  /**
   * With trustForwarded: the other forwarding headers your trusted proxies
   * set themselves, which the gateway then passes on (default none: removed,
   * trusted proxies or not, since nginx and an AWS ALB pass a client's copy
   * on). Any of x-forwarded-ssl, x-forwarded-scheme, x-forwarded-prefix,
   * x-forwarded-server, x-forwarded-protocol, x-url-scheme, front-end-https,
   * x-client-ip, client-ip, true-client-ip, cf-connecting-ip,
   * fastly-client-ip, x-cluster-client-ip, forwarded (RFC 7239: kept then only when
   * sound); case does not matter.
   */
  trustHeaders?: string[];
  /** When mounted (app.use('/api', ...)), forward the mount path too (default false, like HPM 3). */
  forwardMountPath?: boolean;
  agent?: {
    maxSockets?: number;
    maxFreeSockets?: number;
    keepAliveMsecs?: number;
    /** Idle pooled sockets close after this (default 15 000), sooner if the backend hints less. */
    idleTimeoutMs?: number;
    /**
     * Answers one backend connection carries before it is closed (default
     * 1000, as nginx's `keepalive_requests`): bounds how long a connection
     * the backend put out of step unnoticed can serve wrong answers.
     */
    maxRequestsPerConnection?: number;
  };
  /** TLS to https backends: a private CA, mutual TLS, the verified name. */
  backendTls?: BackendTlsOptions;
  retry?: RetryOptions | false;
  /** Hooks on the request to the backend and on its response. */
  on?: ProxyEventHooks;
  /**
   * `on.proxyRes` writes the answer itself (http-proxy-middleware's option of
   * the same name, which its `responseInterceptor` needs): the balancer writes
   * neither the backend's head nor its body. Default false.
   */
  selfHandleResponse?: boolean;
  outlier?: OutlierOptions;
  healthCheck?: HealthCheckOptions | false;
  /** Warm-up before `lb.ready()` resolves (on by default); `false` turns it off. */
  warmUp?: WarmUpOptions | false;
  saturation?: SaturationOptions;
  /** Bounds on WebSockets: idle timeout, per client, in all. */
  webSockets?: WebSocketOptions;
  /** The lane of long streamed answers; `false`: they stay counted as requests. */
  streams?: StreamOptions | false;
  overload?: OverloadOptions | false;
  /** Shed on the kernel's accept-queue depth (Linux); `false` disables. */
  acceptQueue?: AcceptQueueOptions | false;
  discovery?: DiscoveryOptions | false;
  /** Serve the JSON status here (relative to the mount point); off by default. */
  statusPath?: string;
  /**
   * Token the status and metrics endpoints require, in `X-Loadwise-Token`
   * (or `Authorization: Bearer` when the app does not use that header itself).
   * Unset, they answer anyone who reaches them, and the gateway warns once
   * (`status-unprotected`); `false` says so on purpose (the app's own auth in
   * front) and is not warned of.
   */
  statusToken?: string | false;
  /** Serve Prometheus metrics here; off by default. */
  metricsPath?: string;
  /** prom-client registry to register the gateway's metrics in (default: one of its own). */
  metricsRegistry?: MetricsRegistry;
  /** Prefix of every metric name (default 'loadwise_'). */
  metricsPrefix?: string;
  /** Add a response header naming the backend and why (true: 'x-loadwise-decision'). */
  decisionHeader?: boolean | string;
  /** A live dashboard page behind its own read-only token; off by default (docs/dashboard.md). */
  dashboard?: DashboardOptions | false;
  logger?: Logger;
  /**
   * Injectable clock and random source (tests). Given, `now` is the only clock, the
   * wall clock of message timestamps included; by default the gateway times itself on
   * a monotonic clock and reads the wall clock only for what other hosts stamp.
   */
  now?: () => number;
  random?: () => number;
}

export const DEFAULT_STRATEGY = 'load-aware';
export const DEFAULT_CONNECT_TIMEOUT_MS = 5_000;
export const DEFAULT_REQUEST_TIMEOUT_MS = 30_000;
export const DEFAULT_IDEMPOTENT_METHODS = ['GET', 'HEAD', 'OPTIONS', 'PUT', 'DELETE'];
export const DEFAULT_DECISION_HEADER = 'x-loadwise-decision';
export const DEFAULT_MAX_SOCKETS = 256;
/**
 * A client sending nothing mid-body for 10 s: several TCP retransmission
 * timeouts (1 s initial RTO, doubling, RFC 6298), far beyond a live upload's
 * pauses; Apache's mod_reqtimeout allows 20 s, but here the backend slot is
 * held meanwhile.
 */
export const DEFAULT_CLIENT_BODY_TIMEOUT_MS = 10_000;
/**
 * 64: ten times what a browser opens to one host over HTTP/1.1 (6), so a
 * NAT of a few busy users fits; a quarter of one backend's default pool
 * (agent.maxSockets 256), so a single address cannot fill even a
 * one-backend gateway.
 */
export const DEFAULT_MAX_IN_FLIGHT_PER_CLIENT = 64;
/** HAProxy's default buffer size (`tune.bufsize`), which bounds what its l7 retries can replay. */
export const DEFAULT_RETRY_MAX_BODY_BYTES = 16_384;
/** How long `lb.close()` lets in-flight requests finish by default. */
export const DEFAULT_CLOSE_GRACE_MS = 10_000;
/** How long `lb.ready()` waits for the broker by default. */
export const DEFAULT_READY_TIMEOUT_MS = 10_000;

/**
 * The one table of option defaults: the schema (options-validate.ts) fills
 * every absent option from here, and docs/gateway.md's options table shows
 * the same figures (options-validate.test.ts checks it). A few defaults
 * follow other options and are filled by the schema's last step:
 * `messageLimits.perBackendBurst` (2 × perBackendPerSec), `totalBurst`
 * (totalPerSec), `agent.maxFreeSockets` and `saturation.maxInFlightPerBackend`
 * (agent.maxSockets), and `allowUnsigned` (`requireSignature === false`).
 */
export const DEFAULTS = {
  backend: { weight: 1 },
  topicPrefix: DEFAULT_TOPIC_PREFIX,
  unsignedMaxPenalty: 2, // ×2: what a genuine report of 100% CPU gives by default
  messageLimits: { perBackendPerSec: 20, totalPerSec: 20_000, maxPacketBytes: 64 * 1024 },
  strategy: DEFAULT_STRATEGY,
  connectTimeoutMs: DEFAULT_CONNECT_TIMEOUT_MS,
  requestTimeoutMs: DEFAULT_REQUEST_TIMEOUT_MS,
  clientBodyTimeoutMs: DEFAULT_CLIENT_BODY_TIMEOUT_MS,
  // Kestrel's MinRequestBodyDataRate: 240 B/s after a 5 s grace.
  clientBodyMinRate: { bytesPerSec: 240, graceMs: 5_000 },
  /**
   * 64 KiB a body: a form, a JSON document or an API call fits whole (nginx's
   * client_body_buffer_size is 8-16 KiB, but spills to disk beyond it; here the rest
   * streams instead), and the minimum rate (240 B/s) needs about 4.5 minutes to
   * deliver it, so a trickle is cut long before it could take a backend slot. 64 MiB
   * in all: a thousand such bodies at once, a small share of a gateway's memory.
   */
  requestBuffering: { maxBytes: 65_536, maxTotalBytes: 64 << 20 },
  maxInFlightPerClient: DEFAULT_MAX_IN_FLIGHT_PER_CLIENT,
  changeOrigin: false,
  trustForwarded: false,
  trustHeaders: [] as string[],
  forwardMountPath: false,
  agent: {
    maxSockets: DEFAULT_MAX_SOCKETS,
    keepAliveMsecs: 1_000,
    idleTimeoutMs: 15_000,
    maxRequestsPerConnection: 1_000,
  },
  backendTls: { rejectUnauthorized: true },
  retry: {
    maxRetries: 2,
    methods: DEFAULT_IDEMPOTENT_METHODS,
    budgetRatio: 0.2,
    minRetriesPerSec: 10,
    budgetWindowMs: 10_000,
    maxBodyBytes: DEFAULT_RETRY_MAX_BODY_BYTES,
  },
  outlier: {
    consecutiveFailures: 5,
    baseEjectionMs: 30_000,
    maxEjectionMs: 300_000,
    maxEjectionPercent: 50,
    panicThresholdPercent: 50,
    failOn5xx: true,
  },
  healthCheck: {
    path: '/',
    intervalMs: 5_000,
    timeoutMs: 2_000,
    unhealthyThreshold: 2,
    healthyThreshold: 1,
  },
  /**
   * 3,000: on a slow 2-core machine, where a Node gateway used 550-730 CPU µs
   * a request, the cold start's whole-run p99 was 60-137 ms after 3,000 and
   * 153-1,481 ms after 300 (docs/bench.md, "Cold start"); V8 was still
   * speeding the path up at 3,000 (200 requests took 255 ms at first, 105 ms
   * at the end). On a fast one both gave the same. 3,000 take about 1 s
   * there and 2.7 s on the slow one; the warm-up's 5 s budget bounds it.
   */
  warmUp: { requests: 3_000, connectionsPerBackend: 4 },
  saturation: { queueSize: 1_000, queueTimeoutMs: 5_000 },
  /**
   * 300 s idle: Envoy's stream idle timeout, which covers its WebSockets
   * (nginx closes after 60 s without a read); 256 per client: a WebSocket is
   * long-lived, so a client behind a NAT may hold many; 10 000 in all, 20 000
   * file descriptors, under the usual limit of 65 536.
   */
  webSockets: { idleTimeoutMs: 300_000, maxPerClient: 256, maxOpen: 10_000 },
  /**
   * 1 s: an event stream still open a second after its head is a stream, not
   * a slow reply; the bounds as WebSockets', which hold the same two sockets.
   */
  streams: {
    afterMs: 1_000,
    maxPerClient: 256,
    maxOpen: 10_000,
    contentTypes: ['text/event-stream'],
  },
  /**
   * 500 ms, sampled every 200 ms (bench/results/burst.md): at 1 s the gateway
   * never shed while its tails reached 10-20 s; at 200 ms it shed a fresh
   * gateway's first requests on a busy host (its own startup stall was 255 ms).
   */
  overload: { maxEventLoopDelayMs: 500, sampleIntervalMs: 200 },
  /**
   * Shedding starts when half of the backlog waits (Node 20 accepts one
   * connection per event-loop turn, so a busy loop lets the queue grow: 256
   * waiting is half-way to overflowing 511) and sheds all once the queue is
   * full; the share falls over 1 s once at most a tenth waits (docs/gateway.md,
   * "Accept queue"). 50 ms sampling reads a table head (~0.1 ms) while
   * requests arrive, never when idle.
   */
  acceptQueue: {
    backlog: 511,
    shedAt: 0.5,
    resumeAt: 0.1,
    holdMs: 1_000,
    maxShare: 0.5,
    sampleIntervalMs: 50,
  },
  /**
   * forgetAfterMs 10 min: a lease, as Eureka's (90 s) or a Consul check's
   * deregister_critical_service_after, but long: an agent restarting, or cut
   * from the broker for minutes, must not take a working backend out.
   */
  discovery: {
    allowedPorts: [] as number[],
    maxBackends: 100,
    maxWeight: 1,
    forgetAfterMs: 600_000,
  },
  decisionHeader: DEFAULT_DECISION_HEADER,
  metricsPrefix: DEFAULT_METRICS_PREFIX,
  dashboard: { path: '/_lb/dashboard', maxViewers: 10, intervalMs: 1_000, historySec: 300 },
  // Monotonic (clock.ts). Read at construction, not at import: tests fake the clocks
  // after importing.
  get now(): () => number {
    return monotonicNow;
  },
  get random(): () => number {
    return Math.random;
  },
} as const;

/** What every part of the gateway reads after construction: the schema's output. */
export type ResolvedOptions = InferOutput<typeof loadBalanceOptionsSchema>;

/** `lb.close()`'s options. */
export interface CloseOptions {
  /**
   * How long requests in flight and waiting may take to finish (default 10 000 ms;
   * `Infinity`: as long as they take). Outside 0 to 2^31 - 1 (other than Infinity),
   * close() rejects with LW_GW_INVALID_OPTION and closes nothing.
   */
  graceMs?: number;
  /**
   * The server (or servers) the app listens on, stopped with `server.close()` just before.
   * close() then waits, within the grace, for their connections too: requests still in
   * the app's middleware (a body being read, an auth lookup) reach the balancer and are
   * proxied, and at the grace's end their leftover connections are cut. Without it the
   * balancer knows a server only once a request or upgrade has reached it, and right after
   * a start close() resolved at once and those requests got 503 LW_GW_CLOSED.
   */
  server?: NetServer | readonly NetServer[];
}

/** `lb.ready()`'s options. */
export interface ReadyOptions {
  /**
   * How long to wait for the broker (default 10 000 ms; `Infinity`: no limit). Outside 0
   * to 2^31 - 1 (other than Infinity), ready() rejects with LW_GW_INVALID_OPTION.
   */
  timeoutMs?: number;
  /**
   * Reject with LW_GW_BROKER_UNREACHABLE when the broker is not connected
   * and subscribed within `timeoutMs` (fail fast on a wrong URL or
   * credentials). Default false: resolve then with one warning, routing on
   * local signals and reconnecting, so a broker outage does not keep a
   * restarted gateway from listening.
   */
  requireBroker?: boolean;
}
