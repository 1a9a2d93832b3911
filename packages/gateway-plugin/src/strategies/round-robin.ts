/**
 * Round robin: each endpoint in turn, skipping excluded ones. Like grpc-js's
 * round_robin picker it starts at a random position, so several gateways
 * started together do not send their first requests to the same backend.
 */
import { EndpointList } from './endpoint-list';
import { randomIndex, readCommon } from './strategy-options';
import type { Pick, PickContext, Strategy } from './types';

export function createRoundRobin(opts?: unknown): Strategy {
  const { common } = readCommon('round-robin', opts, []);
  let list = new EndpointList([]);
  let next = 0;
  let started = false;
  return {
    name: 'round-robin',
    setEndpoints(endpoints) {
      list = new EndpointList(endpoints);
      if (!started && list.length > 0) {
        next = randomIndex(common.random, list.length);
        started = true;
      }
    },
    pick(ctx: PickContext): Pick | undefined {
      const n = list.length;
      const items = list.items;
      for (let k = 0; k < n; k++) {
        const i = (next + k) % n;
        const ep = items[i]!;
        if (ctx.exclude !== undefined && ctx.exclude.has(ep)) continue;
        next = (i + 1) % n;
        return ctx.explain
          ? { endpoint: ep, reason: `round-robin: ${ep.id} (${i + 1}/${n})` }
          : { endpoint: ep };
      }
      return undefined;
    },
  };
}
