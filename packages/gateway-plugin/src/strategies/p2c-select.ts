/**
 * Power of d choices (Mitzenmacher, "The Power of Two Choices in Randomized
 * Load Balancing", 2001): sample d endpoints uniformly, keep the one with the
 * lowest metric. It knows only "lower is better" (tower's `p2c::Balance` over a
 * `Load`), so every load-based strategy shares it. Randomness is the point:
 * with stale or shared information, "always the least loaded" sends every
 * gateway to the same backend until the next report; d random choices do not
 * herd, and still beat random placement exponentially.
 *
 * The result goes into a reusable holder: a pick allocates nothing.
 */
import { EndpointList } from './endpoint-list';
import { randomIndex } from './strategy-options';
import type { Endpoint, PickContext } from './types';

export type Metric = (ep: Endpoint, nowMs: number) => number;

/** Most endpoints sampled per pick. */
export const MAX_CHOICES = 64;

export class Choice {
  best: Endpoint | undefined;
  bestMetric = 0;
  /** The runner-up among the sampled (for explain), undefined when only one was sampled. */
  other: Endpoint | undefined;
  otherMetric = 0;
  /** Every sampled endpoint and its metric, in sampling order (ties among more than two). */
  count = 0;
  readonly sampled: Array<Endpoint | undefined> = new Array<Endpoint | undefined>(MAX_CHOICES);
  readonly metrics = new Float64Array(MAX_CHOICES);
}

/** Indices sampled in the current pick (d <= MAX_CHOICES); reused, picks are synchronous. */
const sampled = new Int32Array(MAX_CHOICES);

/** Samples up to `d` distinct allowed endpoints and keeps the lowest `metric`. */
export function selectP2C(
  list: EndpointList,
  d: number,
  metric: Metric,
  random: () => number,
  ctx: PickContext,
  out: Choice,
): Choice {
  out.best = undefined;
  out.other = undefined;
  out.count = 0;
  const n = list.length;
  const excluded = list.excludedCount(ctx);
  const allowedCount = n - excluded;
  if (allowedCount <= 0) return out;
  if (excluded > 0 && excluded * 2 >= n) {
    // Most are excluded: rejection sampling could take long; sample the short list instead.
    return sampleFrom(list.allowed(ctx), d, metric, random, ctx.nowMs, out);
  }
  const items = list.items;
  const k = Math.min(d, allowedCount, MAX_CHOICES);
  if (k === 2 && excluded === 0) {
    // The common case, without a loop: two distinct uniform indices.
    const i = randomIndex(random, n);
    let j = randomIndex(random, n - 1);
    if (j >= i) j++;
    return consider(
      consider(out, items[i]!, metric(items[i]!, ctx.nowMs)),
      items[j]!,
      metric(items[j]!, ctx.nowMs),
    );
  }
  if (k >= allowedCount) {
    // d covers every allowed endpoint: compare them all (deterministic, no sampling).
    for (let i = 0; i < n; i++) {
      const ep = items[i]!;
      if (excluded === 0 || !ctx.exclude!.has(ep)) consider(out, ep, metric(ep, ctx.nowMs));
    }
    return out;
  }
  // General case: k distinct, non-excluded samples by rejection. Fewer than half are excluded
  // and k < allowed, so a draw succeeds often; the bound keeps a hostile random source finite.
  let taken = 0;
  for (let tries = 0; taken < k && tries < 64 * k; tries++) {
    const i = randomIndex(random, n);
    const ep = items[i]!;
    if (excluded > 0 && ctx.exclude!.has(ep)) continue;
    let dup = false;
    for (let j = 0; j < taken; j++) if (sampled[j] === i) dup = true;
    if (dup) continue;
    sampled[taken++] = i;
    consider(out, ep, metric(ep, ctx.nowMs));
  }
  if (out.best === undefined) {
    for (const ep of items) {
      if (!ctx.exclude?.has(ep)) return consider(out, ep, metric(ep, ctx.nowMs));
    }
  }
  return out;
}

function sampleFrom(
  pool: Endpoint[],
  d: number,
  metric: Metric,
  random: () => number,
  nowMs: number,
  out: Choice,
): Choice {
  // Partial Fisher-Yates: the first k entries become a uniform sample without repeats.
  const k = d < pool.length ? d : pool.length;
  for (let i = 0; i < k; i++) {
    const j = i + randomIndex(random, pool.length - i);
    const t = pool[i]!;
    pool[i] = pool[j]!;
    pool[j] = t;
    consider(out, pool[i]!, metric(pool[i]!, nowMs));
  }
  return out;
}

function consider(out: Choice, ep: Endpoint, m: number): Choice {
  // A NaN metric from a foreign EndpointLoad must not win: treat it as +Infinity.
  const v = m === m ? m : Infinity;
  if (out.count < MAX_CHOICES) {
    out.sampled[out.count] = ep;
    out.metrics[out.count++] = v;
  }
  if (out.best === undefined) {
    out.best = ep;
    out.bestMetric = v;
  } else if (v < out.bestMetric) {
    out.other = out.best;
    out.otherMetric = out.bestMetric;
    out.best = ep;
    out.bestMetric = v;
  } else if (out.other === undefined || v < out.otherMetric) {
    out.other = ep;
    out.otherMetric = v;
  }
  return out;
}
