export {
  createGatewayMetrics,
  DEFAULT_METRICS_PREFIX,
  LATENCY_BUCKETS_S,
  UPSTREAM_ERROR_KINDS,
  SHED_REASONS,
  type GatewayMetrics,
  type GatewayTotals,
  type GatewayMetricsOptions,
  type UpstreamErrorKind,
  type ShedReason,
} from './metrics';
export {
  BACKEND_STATE_NAMES,
  type BalancerSnapshot,
  type BackendSnapshot,
  type BackendStateName,
  type ReportedLoad,
} from './snapshot';
export {
  statusHandler,
  metricsHandler,
  TOKEN_HEADER,
  type SnapshotSource,
  type HttpHandler,
  type StatusHandlerOptions,
  type ProtectedHandlerOptions,
} from './handlers';
export { formatDecisionHeader, MAX_DECISION_REASON_LENGTH } from './decision-header';
export {
  TrafficWindow,
  DEFAULT_TRAFFIC_WINDOW_MS,
  DEFAULT_TRAFFIC_WINDOW_SLOTS,
  type TrafficWindowOptions,
  type TrafficCounts,
} from './traffic-window';
