/**
 * The default strategy: P2C (or best of `choices`) over the expected wait of a
 * new request, `EndpointLoad.expectedWaitMs` (src/load/endpoint-load.ts fuses
 * local in-flight and latency with the agent's report), divided by the static
 * weight and by the slow-start factor so a newcomer ramps up (Envoy slow start).
 *
 * Why random choices rather than the global minimum: reports are up to one
 * interval old and several gateways read the same ones; "go to the least
 * loaded" herds every gateway onto the backend that looked idle in the last
 * report (Mitzenmacher, "How useful is old information?", 2000). Two random
 * choices keep most of the benefit and none of the herding, and cost O(1).
 */
import { EndpointList } from './endpoint-list';
import { Choice, MAX_CHOICES, selectP2C, type Metric } from './p2c-select';
import { integerOption } from '../load/option-check';
import { fmt, readCommon, weightOf } from './strategy-options';
import type { Pick, PickContext, Strategy } from './types';

export const DEFAULT_CHOICES = 2;
export const LOAD_AWARE_KEYS = ['choices'] as const;

export const expectedWaitMetric: Metric = (ep, nowMs) => {
  const load = ep.load;
  return load.expectedWaitMs(nowMs) / (weightOf(ep) * load.slowStartFactor(nowMs));
};

export function createLoadAware(opts?: unknown): Strategy {
  const { bag, prefix, common } = readCommon('load-aware', opts, LOAD_AWARE_KEYS);
  const choices = integerOption(bag, prefix, 'choices', DEFAULT_CHOICES, 1, MAX_CHOICES);
  let list = new EndpointList([]);
  const choice = new Choice();
  return {
    name: 'load-aware',
    setEndpoints(endpoints) {
      list = new EndpointList(endpoints);
    },
    pick(ctx: PickContext): Pick | undefined {
      const c = selectP2C(list, choices, expectedWaitMetric, common.random, ctx, choice);
      const ep = c.best;
      if (ep === undefined) return undefined;
      if (!ctx.explain) return { endpoint: ep };
      const how = choices === 2 ? 'p2c' : `best of ${choices}`;
      const vs =
        c.other === undefined
          ? ' (only candidate)'
          : ` ${c.bestMetric < c.otherMetric ? '<' : '='} ${c.other.id} wait≈${fmt(c.otherMetric)}ms`;
      return {
        endpoint: ep,
        reason: `load-aware ${how}: ${ep.id} wait≈${fmt(c.bestMetric)}ms${vs}`,
      };
    },
  };
}
