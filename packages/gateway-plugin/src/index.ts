export { loadBalance, type LoadBalancerMiddleware } from './load-balance';
export { Balancer } from './balancer';
export type { BalancerEvents } from './events';
export {
  GatewayError,
  GATEWAY_ERRORS,
  DROP_REASONS,
  type GatewayErrorCode,
  type DropReason,
} from './errors';
export { ERROR_CODE_HEADER } from './error-response';
export * from './options';
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
} from './strategies';
export type { BalancerSnapshot, BackendSnapshot, BackendStateName } from './observability';
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
