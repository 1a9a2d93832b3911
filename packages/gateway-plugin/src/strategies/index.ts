export type { Endpoint, EndpointLoad, Pick, PickContext, Strategy } from './types';
export {
  createStrategy,
  registerStrategy,
  strategyNames,
  isStrategyName,
  STRATEGY_NAMES,
  DEFAULT_STRATEGY_NAME,
  type StrategyFactory,
} from './registry';
export { createSeededRandom } from './seeded-random';
export { selectP2C, Choice, type Metric } from './p2c-select';
export { p2c, type P2COptions } from './p2c-strategy';
export { expectedWaitMetric } from './load-aware';
export { peakEwmaMetric } from './peak-ewma';
export { inFlightMetric } from './p2c';
export { smoothSchedule } from './weighted-round-robin';
export { hash32 } from './hash';
