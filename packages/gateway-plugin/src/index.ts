export { loadBalance, type LoadBalancerMiddleware } from './load-balance';
export type { BalancerHandle } from './handle';
export type { BalancerEvents } from './events';
export {
  GatewayError,
  GATEWAY_ERRORS,
  DROP_REASONS,
  type GatewayErrorCode,
  type DropReason,
} from './errors';
export { ERROR_CODE_HEADER } from './error-response';
export {
  DEFAULT_STRATEGY,
  DEFAULT_CONNECT_TIMEOUT_MS,
  DEFAULT_REQUEST_TIMEOUT_MS,
  DEFAULT_IDEMPOTENT_METHODS,
  DEFAULT_DECISION_HEADER,
  DEFAULT_MAX_SOCKETS,
  DEFAULT_RETRY_MAX_BODY_BYTES,
  DEFAULT_CLOSE_GRACE_MS,
  DEFAULT_READY_TIMEOUT_MS,
  DEFAULT_CLIENT_BODY_TIMEOUT_MS,
  DEFAULT_MAX_IN_FLIGHT_PER_CLIENT,
  type AffinityOptions,
  type BackendConfig,
  type BackendTlsOptions,
  type BrokerOption,
  type BrokerUrlOptions,
  type ClientBodyMinRateOptions,
  type DiscoveryOptions,
  type HealthCheckOptions,
  type WarmUpOptions,
  type LoadBalanceOptions,
  type Logger,
  type MessageLimitOptions,
  type OutlierOptions,
  type OverloadOptions,
  type AcceptQueueOptions,
  type ProxyEventHooks,
  type CloseOptions,
  type ReadyOptions,
  type RequestBufferingOptions,
  type RetryOptions,
  type SaturationOptions,
  type WebSocketOptions,
  type StreamOptions,
} from './options';
export type { DashboardOptions } from './dashboard/options';
export {
  startEmbeddedBroker,
  type EmbeddedBroker,
  type EmbeddedBrokerOptions,
} from './transport/embedded-broker';
export {
  createStrategy,
  registerStrategy,
  strategyNames,
  STRATEGY_NAMES,
  type Strategy,
  type StrategyFactory,
  type Endpoint,
  type EndpointLoad,
  type Pick,
  type PickContext,
  p2c,
  type P2COptions,
  type Metric as EndpointMetric,
} from './strategies';
export type {
  BalancerSnapshot,
  BackendSnapshot,
  BackendStateName,
  ReportedLoad,
  UpstreamErrorKind,
  ShedReason,
  GatewayTotals,
} from './observability';
export {
  statusHandler,
  metricsHandler,
  createGatewayMetrics,
  formatDecisionHeader,
  TOKEN_HEADER,
  DEFAULT_METRICS_PREFIX,
  type HttpHandler,
  type StatusHandlerOptions,
  type ProtectedHandlerOptions,
  type SnapshotSource,
  type GatewayMetrics,
  type GatewayMetricsOptions,
} from './observability';
export { routeUpgrades, type UpgradeListener, type AppHandler } from './upgrade-routing';
export {
  createEndpointLoad,
  createLoadCohort,
  type EndpointLoadOptions,
  type LoadCohort,
  type LoadEstimate,
  type LoadSnapshot,
} from './load';
export { createSeededRandom } from './strategies';
export * from './cluster';
export {
  gatewayServerOptions,
  EXPRESS_REQUEST_FIELDS,
  type GatewayServerOptions,
} from './proxy/server-classes';
