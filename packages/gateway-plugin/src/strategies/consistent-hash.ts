/**
 * Consistent hashing on a ring with virtual nodes (Karger et al., 1997; the
 * ring_hash of Envoy and gRFC A42): each endpoint owns `virtualNodes × weight`
 * points, a key goes to the first point at or after its hash. When an endpoint
 * leaves the eligible set (setEndpoints) only its keys move, to the next
 * endpoint on the ring; an excluded endpoint (a retry) is skipped the same way.
 *
 * Optional bounded load (Mirrokni, Thorup, Zadimoghaddam, "Consistent Hashing
 * with Bounded Loads", 2018; HAProxy `hash-balance-factor`, Envoy
 * `hash_balance_factor`): with `balanceFactor` f > 1, an endpoint whose
 * in-flight count would exceed ceil(f × (total in-flight + 1) / n) is skipped
 * like an excluded one, so a hot key cannot melt its backend. The total is kept
 * current through `watchInFlight`, so the bound costs O(1) per pick.
 *
 * Without a hash key the pick goes to the fallback strategy (default
 * `load-aware`). Point hashes are cached per endpoint id, so rebuilding after
 * an eligibility change only re-sorts (a typed-array sort).
 */
import { EndpointList } from './endpoint-list';
import { hash32 } from './hash';
import { integerOption, numberOption } from '../load/option-check';
import { invalidOption } from '../errors';
import { DEFAULT_STRATEGY } from '../options';
import { readCommon, weightOf } from './strategy-options';
import type { Endpoint, Pick, PickContext, Strategy } from './types';

export const DEFAULT_VIRTUAL_NODES = 100;
/** Bounds the ring: at most this many points in total (gRFC A42 caps ring size at 8M; we stay far below). */
export const MAX_RING_POINTS = 1 << 21;
export const CONSISTENT_HASH_KEYS = [
  'virtualNodes',
  'fallback',
  'fallbackOptions',
  'balanceFactor',
] as const;

/** 2^21 endpoints at most: the endpoint index shares a double with the 32-bit hash when sorting. */
const INDEX_BITS = 2 ** 21;

export interface ConsistentHashDeps {
  /** Builds the fallback strategy (the registry passes its own createStrategy, avoiding an import cycle). */
  createFallback(name: string, opts: unknown): Strategy;
}

export function createConsistentHash(opts: unknown, deps: ConsistentHashDeps): Strategy {
  const { bag, prefix, common } = readCommon('consistent-hash', opts, CONSISTENT_HASH_KEYS);
  const virtualNodes = integerOption(bag, prefix, 'virtualNodes', DEFAULT_VIRTUAL_NODES, 1, 10_000);
  const balanceFactor =
    bag['balanceFactor'] === undefined ? 0 : numberOption(bag, prefix, 'balanceFactor', 0, 1, 100);
  const fallbackOptions = bag['fallbackOptions'];
  if (
    fallbackOptions !== undefined &&
    (typeof fallbackOptions !== 'object' || fallbackOptions === null)
  ) {
    throw invalidOption(`${prefix}fallbackOptions`, 'an object', fallbackOptions);
  }
  const fallbackName = bag['fallback'] ?? DEFAULT_STRATEGY;
  if (typeof fallbackName !== 'string' || fallbackName === 'consistent-hash') {
    throw invalidOption(`${prefix}fallback`, 'the name of another strategy', fallbackName);
  }
  const fallback = deps.createFallback(fallbackName, {
    random: common.random,
    now: common.now,
    ...fallbackOptions,
  });

  const pointCache = new Map<string, Uint32Array>();
  let list = new EndpointList([]);
  let ringHash = new Uint32Array(0);
  let ringOwner = new Uint32Array(0);

  const pointsOf = (ep: Endpoint, count: number): Uint32Array => {
    const cacheKey = `${ep.id}\u0000${count}`;
    let pts = pointCache.get(cacheKey);
    if (pts === undefined) {
      pts = new Uint32Array(count);
      for (let v = 0; v < count; v++) pts[v] = hash32(`${ep.id}#${v}`);
      pointCache.set(cacheKey, pts);
    }
    return pts;
  };

  // Total in-flight for the bound, kept current through watchInFlight (O(1) per pick);
  // summed per pick only when some load cannot be watched.
  let watchedTotal: number | undefined;
  let lastSeen = new Float64Array(0);
  let unsubscribe: Array<() => void> = [];
  const unwatch = (): void => {
    for (const u of unsubscribe) u();
    unsubscribe = [];
    watchedTotal = undefined;
  };
  const watch = (): void => {
    const items = list.items;
    if (balanceFactor === 0 || !items.every((ep) => typeof ep.load.watchInFlight === 'function')) {
      return;
    }
    lastSeen = new Float64Array(items.length);
    let total = 0;
    for (let i = 0; i < items.length; i++) {
      const load = items[i]!.load;
      lastSeen[i] = load.inFlight;
      total += load.inFlight;
      unsubscribe.push(
        load.watchInFlight!(() => {
          watchedTotal = watchedTotal! + load.inFlight - lastSeen[i]!;
          lastSeen[i] = load.inFlight;
        }),
      );
    }
    watchedTotal = total;
  };

  const underBound = (ep: Endpoint): boolean => {
    if (balanceFactor === 0) return true;
    let total = watchedTotal;
    const items = list.items;
    if (total === undefined) {
      total = 0;
      for (let i = 0; i < items.length; i++) total += items[i]!.load.inFlight;
    }
    return ep.load.inFlight + 1 <= Math.ceil((balanceFactor * (total + 1)) / items.length);
  };

  return {
    name: 'consistent-hash',
    setEndpoints(endpoints) {
      unwatch();
      list = new EndpointList(endpoints);
      watch();
      fallback.setEndpoints(endpoints);
      const counts = list.items.map((ep) => Math.max(1, Math.round(virtualNodes * weightOf(ep))));
      let total = counts.reduce((a, b) => a + b, 0);
      if (total > MAX_RING_POINTS) {
        const scale = MAX_RING_POINTS / total;
        for (let i = 0; i < counts.length; i++)
          counts[i] = Math.max(1, Math.floor(counts[i]! * scale));
        total = counts.reduce((a, b) => a + b, 0);
      }
      // Sort (hash, owner) pairs packed into one double: hash × 2^21 + index is exact below 2^53.
      const packed = new Float64Array(total);
      let k = 0;
      const live = new Set<string>();
      for (let i = 0; i < list.length; i++) {
        const ep = list.items[i]!;
        const pts = pointsOf(ep, counts[i]!);
        live.add(`${ep.id}\u0000${counts[i]!}`);
        for (let v = 0; v < pts.length; v++) packed[k++] = pts[v]! * INDEX_BITS + i;
      }
      for (const key of pointCache.keys()) if (!live.has(key)) pointCache.delete(key);
      packed.sort();
      ringHash = new Uint32Array(total);
      ringOwner = new Uint32Array(total);
      for (let p = 0; p < total; p++) {
        const h = Math.floor(packed[p]! / INDEX_BITS);
        ringHash[p] = h;
        ringOwner[p] = packed[p]! - h * INDEX_BITS;
      }
    },
    pick(ctx: PickContext): Pick | undefined {
      if (ctx.hashKey === undefined) {
        const p = fallback.pick(ctx);
        if (p !== undefined && ctx.explain)
          p.reason = `consistent-hash: no key, ${p.reason ?? fallback.name}`;
        return p;
      }
      const size = ringHash.length;
      if (size === 0 || list.excludedCount(ctx) >= list.length) return undefined;
      const h = hash32(ctx.hashKey);
      // First point with hash >= h (lower bound), wrapping to 0.
      let lo = 0;
      let hi = size;
      while (lo < hi) {
        const mid = (lo + hi) >>> 1;
        if (ringHash[mid]! < h) lo = mid + 1;
        else hi = mid;
      }
      const start = lo === size ? 0 : lo;
      let skipped = 0;
      let overloaded: Endpoint | undefined;
      for (let s = 0; s < size; s++) {
        const p = start + s < size ? start + s : start + s - size;
        const ep = list.items[ringOwner[p]!]!;
        if (ctx.exclude !== undefined && ctx.exclude.has(ep)) {
          skipped++;
          continue;
        }
        if (!underBound(ep)) {
          overloaded ??= ep;
          skipped++;
          continue;
        }
        if (!ctx.explain) return { endpoint: ep };
        const moved = skipped === 0 ? '' : ` (${skipped} ring points skipped)`;
        return { endpoint: ep, reason: `consistent-hash: key → ${ep.id}${moved}` };
      }
      // Every allowed endpoint is over the bound (cannot happen for f > 1 unless all are excluded
      // but one): the first allowed one on the ring keeps the key's affinity.
      if (overloaded === undefined) return undefined;
      return ctx.explain
        ? { endpoint: overloaded, reason: `consistent-hash: key → ${overloaded.id} (over bound)` }
        : { endpoint: overloaded };
    },
    dispose() {
      unwatch();
      fallback.dispose?.();
    },
  };
}
