/**
 * P2C on in-flight: two random endpoints, the one with fewer requests in
 * flight per unit of weight wins (nginx `random two least_conn`; Finagle's
 * P2C balancer over `pending`). O(1) per pick whatever the number of endpoints.
 */
import { EndpointList } from './endpoint-list';
import { Choice, selectP2C, type Metric } from './p2c-select';
import { readCommon, weightOf } from './strategy-options';
import type { Pick, PickContext, Strategy } from './types';

export const inFlightMetric: Metric = (ep) => ep.load.inFlight / weightOf(ep);

export function createP2C(opts?: unknown): Strategy {
  const { common } = readCommon('p2c', opts, []);
  let list = new EndpointList([]);
  const choice = new Choice();
  return {
    name: 'p2c',
    setEndpoints(endpoints) {
      list = new EndpointList(endpoints);
    },
    pick(ctx: PickContext): Pick | undefined {
      const c = selectP2C(list, 2, inFlightMetric, common.random, ctx, choice);
      const ep = c.best;
      if (ep === undefined) return undefined;
      if (!ctx.explain) return { endpoint: ep };
      const vs =
        c.other === undefined
          ? 'only candidate'
          : `${c.other.id} in-flight ${c.other.load.inFlight}`;
      return { endpoint: ep, reason: `p2c: ${ep.id} in-flight ${ep.load.inFlight} vs ${vs}` };
    },
  };
}
