/**
 * P2C on in-flight: two random endpoints, the one with fewer requests in
 * flight per unit of weight wins (nginx `random two least_conn`; Finagle's
 * P2C balancer over `pending`). O(1) per pick whatever the number of endpoints.
 */
import type { Metric } from './p2c-select';
import { p2c } from './p2c-strategy';
import { weightOf } from './strategy-options';

export const inFlightMetric: Metric = (ep) => ep.load.inFlight / weightOf(ep);

export const createP2C = p2c(inFlightMetric, {
  name: 'p2c',
  label: 'p2c',
  slowStart: false,
  describe: (ep) => `in-flight ${ep.load.inFlight}`,
});
