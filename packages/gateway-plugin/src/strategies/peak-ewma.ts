/**
 * Peak EWMA (Finagle `Balancers.p2cPeakEwma`, Linkerd's default): P2C over
 * cost = latency Peak EWMA × (in-flight + 1), divided by weight and by the
 * slow-start factor (as a share: slow-start.ts). The latency estimate itself
 * lives in src/load.
 *
 * As in Finagle, an endpoint with no latency sample yet costs 0 while idle (one
 * probe request finds out) and a huge penalty once that probe is in flight, so
 * a newcomer is never flooded before its first response. This is the reference
 * strategy; `load-aware` adds capacity, hidden load and the agent's report.
 */
import type { Metric } from './p2c-select';
import { p2c } from './p2c-strategy';
import { fmt, weightOf } from './strategy-options';

/** Finagle's PeakEwma `Penalty`: Long.MaxValue >> 16, i.e. about 1.4e14. */
export const NO_LATENCY_PENALTY = 2 ** 47;

export const peakEwmaMetric: Metric = (ep, nowMs) => {
  const load = ep.load;
  const latency = load.latencyMs(nowMs);
  const inFlight = load.inFlight;
  if (latency === undefined || !(latency >= 0))
    return inFlight === 0 ? 0 : NO_LATENCY_PENALTY + inFlight;
  return (latency * (inFlight + 1)) / (weightOf(ep) * load.slowStartFactor(nowMs));
};

export const createPeakEwma = p2c(peakEwmaMetric, {
  name: 'peak-ewma',
  describe: (_ep, m) => `cost≈${fmt(m)}`,
});
