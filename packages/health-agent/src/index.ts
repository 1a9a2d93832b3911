export {
  trackRequests,
  DEFAULT_MAX_QUEUE,
  DEFAULT_TRACKER_WINDOW_MS,
} from './tracker/track-requests';
export type {
  TrackRequestsOptions,
  TrackerSnapshot,
  RequestTracker,
  RiseWait,
  Next,
} from './tracker/track-requests';
export type { SnapshotProvider } from './queue/tracker-source';
export { createAgent } from './agent';
export type { Agent, AgentEvents, MetricsBody } from './agent';
export type {
  AgentOptions,
  QueueOptions,
  ResolvedAgentOptions,
  ResolvedQueueOptions,
} from './options';
export { DEFAULT_INTERVAL_MS, DEFAULT_DRAIN_GRACE_MS } from './options';
export type { BrokerOptions } from './mqtt-publisher';
export type { Thresholds } from './verdict';
export { DEFAULT_THRESHOLDS } from './verdict';
export type { HostSource } from './samplers/host';
export { AgentError, AGENT_ERRORS, type AgentErrorCode } from './errors';
