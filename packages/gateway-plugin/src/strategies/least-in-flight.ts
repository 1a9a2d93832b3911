/**
 * Least in flight (nginx/HAProxy `least_conn`, weighted: in-flight / weight).
 * Ties go to the endpoint picked least recently, which makes it round robin
 * among equals, as nginx does; without that, a lightly loaded gateway (every
 * request done before the next) would send everything to one. Picked, not
 * started: a WebSocket upgrade is picked and never in flight, and with ties
 * rotated on starts every one went to the same backend.
 *
 * An O(n) scan per pick costs microseconds at 1,000 endpoints, so the
 * endpoints sit in a binary min-heap keyed on (in-flight / weight, last pick)
 * and re-sifted in O(log n) when an in-flight count changes (EndpointLoad
 * `watchInFlight`). A pick reads the root; with `exclude`, a best-first walk
 * from the root visits at most 2k + 1 nodes for k excluded endpoints. Loads
 * that cannot be watched fall back to the scan.
 */
import { EndpointList } from './endpoint-list';
import { readCommon, weightOf } from './strategy-options';
import type { Endpoint, Pick, PickContext, Strategy } from './types';

export function createLeastInFlight(opts?: unknown): Strategy {
  const { common } = readCommon('least-in-flight', opts, []);
  let list = new EndpointList([]);
  let heap: Int32Array = new Int32Array(0); // heap position → endpoint index
  let pos: Int32Array = new Int32Array(0); // endpoint index → heap position
  let key: Float64Array = new Float64Array(0);
  let last: Float64Array = new Float64Array(0); // tie-breaker: order of the last pick
  let weights: Float64Array = new Float64Array(0);
  let unsubscribe: Array<() => void> = [];
  let indexed = false;
  let counter = 1;
  const candidates: number[] = [];

  const less = (a: number, b: number): boolean =>
    key[a]! < key[b]! || (key[a] === key[b] && last[a]! < last[b]!);

  const swap = (p: number, q: number): void => {
    const a = heap[p]!;
    const b = heap[q]!;
    heap[p] = b;
    heap[q] = a;
    pos[b] = p;
    pos[a] = q;
  };

  const siftUp = (p: number): void => {
    while (p > 0) {
      const parent = (p - 1) >> 1;
      if (!less(heap[p]!, heap[parent]!)) return;
      swap(p, parent);
      p = parent;
    }
  };

  const siftDown = (p: number): void => {
    const n = heap.length;
    for (;;) {
      const l = 2 * p + 1;
      if (l >= n) return;
      const r = l + 1;
      const c = r < n && less(heap[r]!, heap[l]!) ? r : l;
      if (!less(heap[c]!, heap[p]!)) return;
      swap(p, c);
      p = c;
    }
  };

  const update = (i: number): void => {
    key[i] = list.items[i]!.load.inFlight / weights[i]!;
    siftUp(pos[i]!);
    siftDown(pos[i]!);
  };

  // A pick moves the endpoint behind its equals: round robin among ties. Its key is
  // unchanged and its order only later, so it can only move down.
  const picked = (i: number): void => {
    last[i] = counter++;
    siftDown(pos[i]!);
  };

  let scanStart = 0;
  const scan = (ctx: PickContext): number => {
    let best = -1;
    let bestKey = Infinity;
    const items = list.items;
    const n = items.length;
    // A rotating start makes ties round robin here too.
    scanStart = scanStart + 1 < n ? scanStart + 1 : 0;
    for (let step = 0; step < n; step++) {
      const i = (scanStart + step) % n;
      const ep = items[i]!;
      if (ctx.exclude !== undefined && ctx.exclude.has(ep)) continue;
      const k = ep.load.inFlight / weights[i]!;
      if (best < 0 || k < bestKey) {
        best = i;
        bestKey = k;
      }
    }
    return best;
  };

  const fromHeap = (ctx: PickContext): number => {
    if (heap.length === 0) return -1;
    const ex = ctx.exclude;
    const root = heap[0]!;
    if (ex === undefined || ex.size === 0 || !ex.has(list.items[root]!)) return root;
    // Best-first walk: only children of excluded nodes can hold the answer.
    candidates.length = 0;
    candidates.push(0);
    while (candidates.length > 0) {
      let bi = 0;
      for (let c = 1; c < candidates.length; c++) {
        if (less(heap[candidates[c]!]!, heap[candidates[bi]!]!)) bi = c;
      }
      const p = candidates[bi]!;
      candidates[bi] = candidates[candidates.length - 1]!;
      candidates.pop();
      const i = heap[p]!;
      if (!ex.has(list.items[i]!)) return i;
      if (2 * p + 1 < heap.length) candidates.push(2 * p + 1);
      if (2 * p + 2 < heap.length) candidates.push(2 * p + 2);
    }
    return -1;
  };

  const dispose = (): void => {
    for (const u of unsubscribe) u();
    unsubscribe = [];
  };

  return {
    name: 'least-in-flight',
    setEndpoints(endpoints: readonly Endpoint[]) {
      dispose();
      list = new EndpointList(endpoints);
      const n = list.length;
      heap = new Int32Array(n);
      pos = new Int32Array(n);
      key = new Float64Array(n);
      last = new Float64Array(n);
      weights = new Float64Array(n);
      indexed = list.items.every((ep) => typeof ep.load.watchInFlight === 'function');
      for (let i = 0; i < n; i++) {
        const ep = list.items[i]!;
        weights[i] = weightOf(ep);
        key[i] = ep.load.inFlight / weights[i]!;
        // Random initial order among equals (below every later pick, which counts from 1).
        last[i] = common.random();
        heap[i] = i;
        pos[i] = i;
      }
      if (!indexed) return;
      for (let p = (n >> 1) - 1; p >= 0; p--) siftDown(p);
      for (let i = 0; i < n; i++) {
        unsubscribe.push(list.items[i]!.load.watchInFlight!(() => update(i)));
      }
    },
    pick(ctx: PickContext): Pick | undefined {
      const i = indexed ? fromHeap(ctx) : scan(ctx);
      if (i < 0) return undefined;
      if (indexed) picked(i);
      const ep = list.items[i]!;
      if (!ctx.explain) return { endpoint: ep };
      return {
        endpoint: ep,
        reason: `least-in-flight: ${ep.id} in-flight ${ep.load.inFlight} (weight ${weights[i]})`,
      };
    },
    dispose,
  };
}
