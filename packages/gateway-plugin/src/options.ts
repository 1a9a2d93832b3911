/**
 * The public options of `loadBalance(opts)` and their defaults. Validation is
 * in options-validate.ts; everything after construction reads ResolvedOptions.
 */
import type { MqttClient } from 'mqtt';
import type { Registry as MetricsRegistry } from 'prom-client';
import type { SigningKey } from '@loadwise/protocol';

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
  | { embedded: true; port?: number; host?: string };

export interface AffinityOptions {
  /** Hash key from this request header (e.g. 'x-user-id'). */
  header?: string;
  /** Hash key from this cookie; with setCookie, the gateway sets it when absent. */
  cookie?: string;
  /** Hash key from the client address (after the trusted X-Forwarded-For, see trustForwarded). */
  clientAddress?: boolean;
  setCookie?: boolean;
  cookieMaxAgeSec?: number;
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
  intervalMs?: number;
  timeoutMs?: number;
  /** Consecutive failed checks that mark a backend down (default 2). */
  unhealthyThreshold?: number;
  /** Consecutive passed checks that mark it up again (default 1). */
  healthyThreshold?: number;
}

export interface SaturationOptions {
  /** Requests this gateway keeps outstanding on one backend at most (default agent.maxSockets). */
  maxInFlightPerBackend?: number;
  /** A backend whose expected wait is above this is saturated too (off by default). */
  maxExpectedWaitMs?: number;
  /** Requests waiting for a free backend at most (default 1000); 0 answers 503 at once. */
  queueSize?: number;
  queueTimeoutMs?: number;
}

export interface OverloadOptions {
  /** Shed new requests while the event-loop delay (p99 of the last sample) is above this. */
  maxEventLoopDelayMs?: number;
  sampleIntervalMs?: number;
}

export interface DiscoveryOptions {
  /** CIDRs a registered backend URL must be inside (IP literals only; names are refused). */
  allowedRanges: string[];
  allowedPorts?: number[];
  maxBackends?: number;
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

export interface Logger {
  info(msg: string): void;
  warn(msg: string): void;
  error(msg: string): void;
}

export interface LoadBalanceOptions {
  backends: BackendConfig[];
  /** Where agents' reports come from. Without it, the gateway routes on local signals only. */
  broker?: BrokerOption;
  topicPrefix?: string;
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
  /** Rewrite the Host header to the backend's host (default false). */
  changeOrigin?: boolean;
  /** Keep the client's X-Forwarded-* and append to them (default false: overwrite). */
  trustForwarded?: boolean;
  /** When mounted (app.use('/api', ...)), forward the mount path too (default false, like HPM 3). */
  forwardMountPath?: boolean;
  agent?: {
    maxSockets?: number;
    maxFreeSockets?: number;
    keepAliveMsecs?: number;
    /** Idle pooled sockets close after this (default 15 000), sooner if the backend hints less. */
    idleTimeoutMs?: number;
  };
  retry?: RetryOptions | false;
  outlier?: OutlierOptions;
  healthCheck?: HealthCheckOptions | false;
  saturation?: SaturationOptions;
  overload?: OverloadOptions | false;
  discovery?: DiscoveryOptions | false;
  /** Serve the JSON status here (relative to the mount point); off by default. */
  statusPath?: string;
  /** Bearer token the status endpoint requires. */
  statusToken?: string;
  /** Serve Prometheus metrics here; off by default. */
  metricsPath?: string;
  /** prom-client registry to register the gateway's metrics in (default: one of its own). */
  metricsRegistry?: MetricsRegistry;
  /** Add a response header naming the backend and why (true: 'x-loadwise-decision'). */
  decisionHeader?: boolean | string;
  logger?: Logger;
  /** Injectable clock and random source (tests). */
  now?: () => number;
  random?: () => number;
}

export const DEFAULT_STRATEGY = 'load-aware';
export const DEFAULT_CONNECT_TIMEOUT_MS = 5_000;
export const DEFAULT_REQUEST_TIMEOUT_MS = 30_000;
export const DEFAULT_IDEMPOTENT_METHODS = ['GET', 'HEAD', 'OPTIONS', 'PUT', 'DELETE'];
export const DEFAULT_DECISION_HEADER = 'x-loadwise-decision';
export const DEFAULT_MAX_SOCKETS = 256;

export interface ResolvedOptions {
  backends: Required<BackendConfig>[];
  broker: BrokerOption | undefined;
  topicPrefix: string;
  keys: SigningKey[];
  requireSignature: boolean | undefined;
  allowUnsigned: boolean;
  unsignedMaxPenalty: number;
  maxClockSkewMs: number | undefined;
  maxRetainedAgeMs: number | undefined;
  maxPayloadBytes: number | undefined;
  messageLimits: Required<MessageLimitOptions>;
  strategy: string;
  strategyOptions: Record<string, unknown>;
  load: Record<string, unknown>;
  affinity: AffinityOptions | undefined;
  connectTimeoutMs: number;
  requestTimeoutMs: number;
  changeOrigin: boolean;
  trustForwarded: boolean;
  forwardMountPath: boolean;
  agent: {
    maxSockets: number;
    maxFreeSockets: number;
    keepAliveMsecs: number;
    idleTimeoutMs: number;
  };
  retry: Required<RetryOptions> | undefined;
  outlier: Required<OutlierOptions>;
  healthCheck: Required<HealthCheckOptions> | undefined;
  saturation: Required<Omit<SaturationOptions, 'maxExpectedWaitMs'>> & {
    maxExpectedWaitMs: number | undefined;
  };
  overload: Required<OverloadOptions> | undefined;
  discovery: Required<DiscoveryOptions> | undefined;
  statusPath: string | undefined;
  statusToken: string | undefined;
  metricsPath: string | undefined;
  metricsRegistry: MetricsRegistry | undefined;
  decisionHeader: string | undefined;
  logger: Logger;
  now: () => number;
  random: () => number;
}
