export { createEndpointLoad } from './endpoint-load';
export type { EndpointLoad, LoadEstimate, LoadSnapshot } from './types';
export {
  resolveLoadOptions,
  type EndpointLoadOptions,
  type ResolvedLoadOptions,
  DEFAULT_STALE_AFTER_INTERVALS,
  DEFAULT_MIN_STALE_AFTER_MS,
  DEFAULT_MAX_STALE_AFTER_MS,
  DEFAULT_SLOW_START_MS,
  DEFAULT_SLOW_START_MIN_FACTOR,
  DEFAULT_DECAY_MS,
  DEFAULT_SERVICE_DECAY_MS,
  DEFAULT_LATENCY_MS,
  DEFAULT_CAPACITY,
  MAX_EXPECTED_WAIT_MS,
} from './load-options';
export { createLoadCohort, type LoadCohort } from './cohort';
export { PeakEwma } from './peak-ewma';
