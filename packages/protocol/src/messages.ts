import type { MessageKind } from './topics';

/** Payload schema version. A decoder rejects any other with LW_PROTO_UNKNOWN_VERSION. */
export const PROTOCOL_VERSION = 1 as const;

/** Lifecycle of a backend as its agent reports it. Also the agent's MQTT Last Will (`offline`). */
export type BackendState = 'online' | 'draining' | 'offline';
export const BACKEND_STATES: readonly BackendState[] = ['online', 'draining', 'offline'];

/** The agent's verdict on the service, from its local probe and its thresholds. */
export type HealthVerdict = 'up' | 'degraded' | 'down';
export const HEALTH_VERDICTS: readonly HealthVerdict[] = ['up', 'degraded', 'down'];

/** Where a request-queue figure came from: the sources this version's agent has. */
export type KnownQueueSource = 'tracker' | 'kernel' | 'prometheus';
export const QUEUE_SOURCES: readonly KnownQueueSource[] = ['tracker', 'kernel', 'prometheus'];
/**
 * On the wire a source is informational: a newer agent may name one this
 * version does not know (validate.ts accepts any short lowercase token), so
 * the type stays open; `QUEUE_SOURCES` lists the known ones.
 */
export type QueueSource = KnownQueueSource | (string & {});

export type QueueField = 'inFlight' | 'queued' | 'acceptBacklog' | 'openConnections';
export const QUEUE_FIELDS: readonly QueueField[] = [
  'inFlight',
  'queued',
  'acceptBacklog',
  'openConnections',
];

/**
 * Fields every message carries. `(epochMs, seq)` orders one agent's messages:
 * `epochMs` is when the agent process started, `seq` counts up from 0 within
 * it, so a restarted agent is newer without remembering its old sequence.
 */
export interface MessageHeader {
  v: typeof PROTOCOL_VERSION;
  kind: MessageKind;
  backendId: string;
  epochMs: number;
  seq: number;
  /** Wall-clock send time, ms since the Unix epoch. */
  ts: number;
}

export interface HostMetrics {
  /** Busy share of all host CPUs over the last interval, 0..1. */
  cpuUtilization: number;
  /** 1 - available/total, 0..1. */
  memoryUtilization: number;
  memoryAvailableBytes: number;
  loadAverage1m?: number;
  cpuCount?: number;
}

export interface ProcessMetrics {
  pid: number;
  /** CPU time used per wall-clock second, in cores (2 busy cores = 2). */
  cpuCores: number;
  rssBytes: number;
}

export interface CgroupMetrics {
  /** CPU quota / period, when a quota is set. */
  cpuLimitCores?: number;
  /** Share of the CPU quota used over the last interval, 0..1. */
  cpuUtilization?: number;
  memoryLimitBytes?: number;
  memoryUsedBytes?: number;
  /** memoryUsedBytes / memoryLimitBytes, 0..1. */
  memoryUtilization?: number;
}

export interface QueueMetrics {
  /** Requests being served right now. */
  inFlight?: number;
  /** Requests accepted but waiting for a slot (the app limits concurrency). */
  queued?: number;
  /** Connections waiting in the listen socket's accept queue. */
  acceptBacklog?: number;
  /** Established connections to the service's port. */
  openConnections?: number;
  /** Which source produced each figure present above. */
  source: Partial<Record<QueueField, QueueSource>>;
}

export interface TrafficMetrics {
  /** Requests completed per second over `windowMs`. */
  rps?: number;
  /** Share of completed requests that failed (5xx or aborted), 0..1. */
  errorRate?: number;
  latencyMeanMs?: number;
  latencyP50Ms?: number;
  latencyP90Ms?: number;
  latencyP99Ms?: number;
  windowMs?: number;
}

/** The causes of a `degraded` verdict this version's agent names (HealthReport.causes). */
export type KnownDegradedCause = 'cpu' | 'memory' | 'queue';

export interface HealthReport {
  verdict: HealthVerdict;
  /** Short human reason for `degraded` / `down`; at most 200 characters. */
  reason?: string;
  /**
   * What made the verdict `degraded`, as short tokens (`cpu`, `memory`,
   * `queue`; a newer agent may add others), at most 8: a gateway that judges
   * CPU as capacity does not also penalise a verdict CPU alone explains.
   * Optional: older agents omit it, older gateways ignore it.
   */
  causes?: string[];
  probeLatencyMs?: number;
  probeStatus?: number;
}

export interface MetricsReport extends MessageHeader {
  kind: 'metrics';
  /** How often this agent reports; a gateway derives freshness from it. */
  intervalMs: number;
  /** Repeats the lifecycle state so a gateway never depends on a retained status alone. */
  state: BackendState;
  host: HostMetrics;
  process?: ProcessMetrics;
  cgroup?: CgroupMetrics;
  queue?: QueueMetrics;
  /** Requests the service serves at once (worker slots), when known. */
  concurrencyLimit?: number;
  traffic?: TrafficMetrics;
  health: HealthReport;
  /**
   * Set on a report sent between two scheduled ones because the backend's
   * outstanding requests rose sharply (the agent's early reports): its queue
   * and traffic figures are fresh, the rest repeats the last scheduled report.
   * Absent on scheduled reports. Optional: older gateways ignore it and treat
   * the report as a scheduled one.
   */
  early?: boolean;
}

export interface StatusMessage extends MessageHeader {
  kind: 'status';
  state: BackendState;
  /** Set on the agent's MQTT Last Will; see the replay rules in signing.ts. */
  will?: boolean;
  reason?: string;
}

/**
 * A backend announcing its own address. Gateways ignore these unless discovery
 * is on, the message is signed, and the URL is inside an allowed range.
 */
export interface RegistrationMessage extends MessageHeader {
  kind: 'register';
  url: string;
  weight?: number;
}

export type Message = MetricsReport | StatusMessage | RegistrationMessage;
