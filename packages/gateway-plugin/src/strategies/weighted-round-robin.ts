/**
 * Smooth weighted round robin, nginx's algorithm (ngx_http_upstream_round_robin.c,
 * `ngx_http_upstream_get_peer`; change 1.1.13 "smooth weighted round-robin"):
 * every pick, each endpoint's current weight grows by its weight, the largest
 * is chosen and loses the total. Weights 5:1:1 give a a b a c a a, spread out
 * rather than a a a a a b c.
 *
 * The sequence is periodic with period Σw (after dividing by the gcd), so when
 * the weights are integers and n × Σw is small it is computed once per
 * setEndpoints and a pick is O(1); otherwise (fractional or huge weights) the
 * pick runs the O(n) recurrence, as nginx does. Excluded endpoints are skipped
 * (nginx skips its "tried" peers the same way).
 */
import { EndpointList } from './endpoint-list';
import { randomIndex, readCommon, weightOf } from './strategy-options';
import type { Endpoint, Pick, PickContext, Strategy } from './types';

/** Precompute the schedule while n × period stays under this many steps. */
export const MAX_SCHEDULE_WORK = 4_000_000;

function gcd(a: number, b: number): number {
  while (b !== 0) [a, b] = [b, a % b];
  return a;
}

/** The smooth WRR sequence over one period, as endpoint indices; undefined if too costly. */
export function smoothSchedule(weights: readonly number[]): Uint32Array | undefined {
  if (weights.length === 0 || !weights.every((w) => Number.isInteger(w) && w > 0)) return undefined;
  const g = weights.reduce((acc, w) => gcd(acc, w), 0);
  const w = weights.map((x) => x / g);
  const total = w.reduce((a, b) => a + b, 0);
  if (total * w.length > MAX_SCHEDULE_WORK) return undefined;
  const current = new Float64Array(w.length);
  const out = new Uint32Array(total);
  for (let step = 0; step < total; step++) {
    let best = 0;
    for (let i = 0; i < w.length; i++) {
      current[i]! += w[i]!;
      if (current[i]! > current[best]!) best = i;
    }
    current[best]! -= total;
    out[step] = best;
  }
  return out;
}

export function createWeightedRoundRobin(opts?: unknown): Strategy {
  const { common } = readCommon('weighted-round-robin', opts, []);
  let list = new EndpointList([]);
  let weights: number[] = [];
  let schedule: Uint32Array | undefined;
  let cursor = 0;
  let current = new Float64Array(0);

  const reason = (ep: Endpoint): string =>
    `weighted-round-robin: ${ep.id} (weight ${weightOf(ep)})`;

  return {
    name: 'weighted-round-robin',
    setEndpoints(endpoints) {
      list = new EndpointList(endpoints);
      weights = list.items.map(weightOf);
      schedule = smoothSchedule(weights);
      // A random phase: gateways started together do not move in lockstep.
      cursor = schedule === undefined ? 0 : randomIndex(common.random, schedule.length);
      current = new Float64Array(list.length);
    },
    pick(ctx: PickContext): Pick | undefined {
      const items = list.items;
      const n = items.length;
      if (n === 0) return undefined;
      const ex = ctx.exclude;
      if (schedule !== undefined) {
        const len = schedule.length;
        for (let k = 0; k < len; k++) {
          const ep = items[schedule[cursor]!]!;
          cursor = cursor + 1 === len ? 0 : cursor + 1;
          if (ex !== undefined && ex.has(ep)) continue;
          return ctx.explain ? { endpoint: ep, reason: reason(ep) } : { endpoint: ep };
        }
        return undefined;
      }
      let best = -1;
      let sum = 0;
      for (let i = 0; i < n; i++) {
        if (ex !== undefined && ex.has(items[i]!)) continue;
        current[i]! += weights[i]!;
        sum += weights[i]!;
        if (best < 0 || current[i]! > current[best]!) best = i;
      }
      if (best < 0) return undefined;
      current[best]! -= sum;
      const ep = items[best]!;
      return ctx.explain ? { endpoint: ep, reason: reason(ep) } : { endpoint: ep };
    },
  };
}
