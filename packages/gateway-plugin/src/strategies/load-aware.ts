/**
 * The default strategy: best of 3 sampled backends (`choices`; 2 is P2C) over
 * the expected wait of a new request, `EndpointLoad.expectedWaitMs` (src/load/endpoint-load.ts fuses
 * local in-flight and latency with the agent's report), divided by the static
 * weight and by the slow-start factor so a newcomer ramps up (Envoy slow start;
 * slow-start.ts turns the factor into a share of the traffic).
 *
 * Why random choices rather than the global minimum: reports are up to one
 * interval old and several gateways read the same ones; "go to the least
 * loaded" herds every gateway onto the backend that looked idle in the last
 * report (Mitzenmacher, "How useful is old information?", 2000). A few random
 * choices keep most of the benefit and none of the herding, and cost O(1).
 * Three, not two: over the handful of backends a gateway usually fronts, two
 * leave the best one out of a third of the picks or more, and three had the
 * lower p99 in every simulated fleet and most benchmarked ones, one to four
 * gateways (docs/strategies.md, "Three choices"). A fleet of three is compared
 * in full; each gateway's own requests count in its estimate at once, so a
 * backend a report showed idle fills up in every gateway's view as they send
 * to it. A backend that sampling leaves idle is still probed by the path check
 * (health/active-checker.ts), so a fault on it is seen without traffic.
 *
 * Waits within `tieTolerance` of each other are ties.
 * The estimates carry measurement noise of a few percent (a cold first request,
 * scheduling jitter); at low load both candidates are idle, and a strict `<`
 * on that noise sent one of two identical backends every request (bench
 * smoke: 77 of 80), which is "fill one server first", not equal expected wait.
 * One request in flight on a 4-slot backend already moves its wait by 6%
 * (utilizationWeight 0.25 / 4), so real differences still decide.
 *
 * Waits within the gateway's own event-loop lateness of each other are ties
 * too (`noiseTies`, load/loop-delay.ts), and a tie goes to the candidate with
 * fewer requests in flight from this gateway, then to the least recently
 * picked (round robin among equals: p2c-strategy.ts, breakTie). The latencies
 * behind `s` are timed by this event loop: after a stall, the backends that
 * had requests in flight during it looked slower than identical others for
 * seconds, P2C left them alone, and only a pick could refresh their figure
 * (docs/strategies.md, "Ties"). Within the noise, fewer in flight is what
 * least-connections decides on, and it corrects itself with every pick.
 */
import type { Metric } from './p2c-select';
import { p2c } from './p2c-strategy';
import { fmt, weightOf } from './strategy-options';

export const DEFAULT_CHOICES = 3;
/** Relative difference of expected waits below which two candidates count as equal. */
export const DEFAULT_TIE_TOLERANCE = 0.05;

export const expectedWaitMetric: Metric = (ep, nowMs) => {
  const load = ep.load;
  return load.expectedWaitMs(nowMs) / (weightOf(ep) * load.slowStartFactor(nowMs));
};

export const createLoadAware = p2c(expectedWaitMetric, {
  name: 'load-aware',
  choices: DEFAULT_CHOICES,
  tieTolerance: DEFAULT_TIE_TOLERANCE,
  noiseTies: true,
  describe: (_ep, m) => `wait≈${fmt(m)}ms`,
});
