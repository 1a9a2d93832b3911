/**
 * The default strategy: P2C (or best of `choices`) over the expected wait of a
 * new request, `EndpointLoad.expectedWaitMs` (src/load/endpoint-load.ts fuses
 * local in-flight and latency with the agent's report), divided by the static
 * weight and by the slow-start factor so a newcomer ramps up (Envoy slow start;
 * slow-start.ts turns the factor into a share of the traffic).
 *
 * Why random choices rather than the global minimum: reports are up to one
 * interval old and several gateways read the same ones; "go to the least
 * loaded" herds every gateway onto the backend that looked idle in the last
 * report (Mitzenmacher, "How useful is old information?", 2000). Two random
 * choices keep most of the benefit and none of the herding, and cost O(1).
 *
 * Waits within `tieTolerance` of each other are ties, decided by a fair coin.
 * The estimates carry measurement noise of a few percent (a cold first request,
 * scheduling jitter); at low load both candidates are idle, and a strict `<`
 * on that noise sent one of two identical backends every request (bench
 * smoke: 77 of 80), which is "fill one server first", not equal expected wait.
 * One request in flight on a 4-slot backend already moves its wait by 6%
 * (utilizationWeight 0.25 / 4), so real differences still decide.
 */
import { EndpointList } from './endpoint-list';
import { Choice, MAX_CHOICES, selectP2C, type Metric } from './p2c-select';
import { withSlowStartShare } from './slow-start';
import { integerOption, numberOption } from '../load/option-check';
import { fmt, readCommon, weightOf } from './strategy-options';
import type { Pick, PickContext, Strategy } from './types';

export const DEFAULT_CHOICES = 2;
/** Relative difference of expected waits below which two candidates count as equal. */
export const DEFAULT_TIE_TOLERANCE = 0.05;
export const LOAD_AWARE_KEYS = ['choices', 'tieTolerance'] as const;

export const expectedWaitMetric: Metric = (ep, nowMs) => {
  const load = ep.load;
  return load.expectedWaitMs(nowMs) / (weightOf(ep) * load.slowStartFactor(nowMs));
};

export function createLoadAware(opts?: unknown): Strategy {
  const { bag, prefix, common } = readCommon('load-aware', opts, LOAD_AWARE_KEYS);
  const choices = integerOption(bag, prefix, 'choices', DEFAULT_CHOICES, 1, MAX_CHOICES);
  const tieTolerance = numberOption(bag, prefix, 'tieTolerance', DEFAULT_TIE_TOLERANCE, 0, 1);
  let list = new EndpointList([]);
  const choice = new Choice();
  const metric = withSlowStartShare(expectedWaitMetric, common.random);
  return {
    name: 'load-aware',
    setEndpoints(endpoints) {
      list = new EndpointList(endpoints);
    },
    pick(ctx: PickContext): Pick | undefined {
      const c = selectP2C(list, choices, metric, common.random, ctx, choice);
      if (c.best === undefined) return undefined;
      if (
        c.other !== undefined &&
        c.otherMetric - c.bestMetric <= tieTolerance * c.bestMetric &&
        common.random() < 0.5
      ) {
        const best = c.best;
        const bestMetric = c.bestMetric;
        c.best = c.other;
        c.bestMetric = c.otherMetric;
        c.other = best;
        c.otherMetric = bestMetric;
      }
      const ep = c.best;
      if (!ctx.explain) return { endpoint: ep };
      const how = choices === 2 ? 'p2c' : `best of ${choices}`;
      const vs =
        c.other === undefined
          ? ' (only candidate)'
          : ` ${c.otherMetric - c.bestMetric > tieTolerance * c.bestMetric ? '<' : '='} ${c.other.id} wait≈${fmt(c.otherMetric)}ms`;
      return {
        endpoint: ep,
        reason: `load-aware ${how}: ${ep.id} wait≈${fmt(c.bestMetric)}ms${vs}`,
      };
    },
  };
}
