/**
 * The default strategy: the best of `choices` (default 3) random backends by
 * the expected wait of a new request, `EndpointLoad.expectedWaitMs`
 * (src/load/endpoint-load.ts fuses local in-flight and latency with the
 * agent's report), divided by the static weight and by the slow-start factor
 * so a newcomer ramps up (Envoy slow start; slow-start.ts turns the factor
 * into a share of the traffic).
 *
 * Why random choices rather than the global minimum: reports are up to one
 * interval old and several gateways read the same ones; "go to the least
 * loaded" herds every gateway onto the backend that looked idle in the last
 * report (Mitzenmacher, "How useful is old information?", 2000). A few random
 * choices keep most of the benefit, bound the herd (an idle backend among ten
 * is among three sampled 3 times in 10), and cost O(1).
 *
 * Why three, not two: a gateway fronts a handful of backends more often than
 * hundreds, and over three of them two random choices leave the best one out
 * of a third of the picks. Three compare them all. Each gateway's own
 * requests count at once, and the cohort adds the other gateways' in
 * proportion (load/cohort.ts), so comparing all three did not herd: the
 * seeded simulations of the benchmark's scenarios gave a lower p99 in every
 * seed tried, and two and four gateways on one broker a lower worst-gateway
 * p99 (docs/strategies.md, "Why three choices", with what it costs).
 *
 * Waits within `tieTolerance` of the best are ties, won by the fewest in
 * flight from this gateway, then by a fair draw.
 * The estimates carry measurement noise of a few percent (a cold first request,
 * scheduling jitter); at low load both candidates are idle, and a strict `<`
 * on that noise sent one of two identical backends every request (bench
 * smoke: 77 of 80), which is "fill one server first", not equal expected wait.
 * One request in flight on a 4-slot backend already moves its wait by 6%
 * (utilizationWeight 0.25 / 4), so real differences still decide.
 *
 * Waits within the gateway's own event-loop lateness of each other are ties
 * too (`noiseTies`, load/loop-delay.ts), decided the same way. The latencies
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
