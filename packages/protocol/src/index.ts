export * from './errors';
export {
  brokerTlsMismatch,
  brokerUrlClientIdProblem,
  brokerUrlNamesUser,
  describeBrokerError,
  isBrokerHangUp,
  NO_CONNACK_HINT,
  redactUrl,
  tlsMaterialProblem,
} from './broker-url';
export * from './topics';
export * from './messages';
export {
  validateMessage,
  MAX_REASON_LENGTH,
  MAX_URL_LENGTH,
  type ValidationFailure,
} from './validate';
export * from './signing';
export {
  ReplayGuard,
  isLastWill,
  DEFAULT_MAX_CLOCK_SKEW_MS,
  DEFAULT_MAX_RETAINED_AGE_MS,
  DEFAULT_MAX_TRACKED_BACKENDS,
} from './replay';
export * from './codec';
export { didYouMean, unknownOptionText } from './did-you-mean';
export {
  ENV_PREFIX,
  GATEWAY_ENV_PREFIX,
  GATEWAY_SIDE_ENV,
  STATUS_ENV,
  WORKER_ENV,
  isGatewaySideVariable,
} from './environment';
