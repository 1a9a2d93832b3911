import { createEndpointLoad, createLoadCohort } from '../load';
import { hash32 } from './hash';
import { createStrategy } from './registry';
import { createSeededRandom } from './seeded-random';
import type { Endpoint, Strategy } from './types';

function eps(n: number, weights?: number[]): Endpoint[] {
  const cohort = createLoadCohort();
  return Array.from({ length: n }, (_, i) => ({
    id: `backend-${i}`,
    weight: weights?.[i] ?? 1,
    load: createEndpointLoad({ cohort }),
  }));
}

const KEYS = Array.from({ length: 10_000 }, (_, i) => `user-${i}`);

function assign(s: Strategy, exclude?: Set<Endpoint>): Map<string, Endpoint> {
  const m = new Map<string, Endpoint>();
  for (const k of KEYS) m.set(k, s.pick({ nowMs: 0, hashKey: k, exclude })!.endpoint);
  return m;
}

function make(opts: object = {}): Strategy {
  return createStrategy('consistent-hash', { random: createSeededRandom(1), ...opts });
}

describe('consistent-hash', () => {
  it('hash32 is stable (the ring must not change between processes or releases)', () => {
    // Golden values from an independent Python implementation of FNV-1a + murmur3 fmix32.
    expect([hash32('user-1'), hash32('backend-0#0')]).toEqual([2005895916, 2671876726]);
  });

  it('removing an endpoint moves only its keys', () => {
    const e = eps(10);
    const s = make();
    s.setEndpoints(e);
    const before = assign(s);
    s.setEndpoints(e.filter((_, i) => i !== 3));
    const after = assign(s);
    let moved = 0;
    for (const k of KEYS) {
      if (before.get(k) === e[3]) {
        expect(after.get(k)).not.toBe(e[3]);
        moved++;
      } else {
        expect(after.get(k)).toBe(before.get(k));
      }
    }
    // About a tenth of the keys lived on the removed endpoint.
    expect(moved / KEYS.length).toBeGreaterThan(0.06);
    expect(moved / KEYS.length).toBeLessThan(0.14);
    // Putting it back restores the original assignment exactly.
    s.setEndpoints(e);
    expect(assign(s)).toEqual(before);
  });

  it('adding an endpoint moves keys only onto the newcomer', () => {
    const e = eps(9);
    const s = make();
    s.setEndpoints(e.slice(0, 8));
    const before = assign(s);
    s.setEndpoints(e);
    const after = assign(s);
    for (const k of KEYS) {
      if (after.get(k) !== before.get(k)) expect(after.get(k)).toBe(e[8]);
    }
  });

  it.each([
    { weights: [1, 1, 1, 1, 1], expectedRatios: [0.2, 0.2, 0.2, 0.2, 0.2] },
    { weights: [3, 1], expectedRatios: [0.75, 0.25] },
  ])(
    '100 virtual nodes per weight spread keys near $expectedRatios',
    ({ weights, expectedRatios }) => {
      const e = eps(weights.length, weights);
      const s = make();
      s.setEndpoints(e);
      const m = assign(s);
      e.forEach((ep, i) => {
        const share = [...m.values()].filter((x) => x === ep).length / KEYS.length;
        // Ring variance with 100 points per endpoint is about ±10% of the fair share.
        expect(Math.abs(share - expectedRatios[i]!)).toBeLessThan(0.25 * expectedRatios[i]!);
      });
    },
  );

  it('an excluded owner sends its keys to the next on the ring; other keys stay', () => {
    const e = eps(6);
    const s = make();
    s.setEndpoints(e);
    const before = assign(s);
    const exclude = new Set([e[2]!]);
    const retry = assign(s, exclude);
    s.setEndpoints(e.filter((x) => x !== e[2]));
    const removed = assign(s);
    // Excluding an endpoint for one pick is the same as removing it from the ring.
    expect(retry).toEqual(removed);
    for (const k of KEYS) if (before.get(k) !== e[2]) expect(retry.get(k)).toBe(before.get(k));
  });

  it('without a hash key, falls back to the default strategy', () => {
    const s = make({ fallback: 'round-robin' });
    s.setEndpoints(eps(3));
    const p = s.pick({ nowMs: 0, explain: true })!;
    expect(p.reason).toMatch(/^consistent-hash: no key, round-robin: backend-\d/);
    const ids = new Set([0, 1, 2].map(() => s.pick({ nowMs: 0 })!.endpoint.id));
    expect(ids.size).toBe(3);
    expect(make().pick({ nowMs: 0 })).toBeUndefined();
  });

  it('with balanceFactor, a hot key spills over instead of overloading its owner', () => {
    const e = eps(4);
    const s = make({ balanceFactor: 1.25 });
    s.setEndpoints(e);
    const owner = s.pick({ nowMs: 0, hashKey: 'hot' })!.endpoint;
    const placed = new Map<Endpoint, number>();
    for (let i = 0; i < 40; i++) {
      const ep = s.pick({ nowMs: 0, hashKey: 'hot' })!.endpoint;
      ep.load.onRequestStart(0); // none finishes
      placed.set(ep, (placed.get(ep) ?? 0) + 1);
    }
    // Bound: ceil(1.25 × (total + 1) / 4) → the owner holds at most about a third.
    expect(placed.get(owner)!).toBeLessThanOrEqual(Math.ceil((1.25 * 40) / 4) + 1);
    expect(placed.get(owner)!).toBeGreaterThanOrEqual(10);
    expect(placed.size).toBeGreaterThan(1);
  });
});

describe('consistent-hash bounded load bookkeeping', () => {
  it('the watched in-flight total matches a recount after random starts and ends', () => {
    const e = eps(8);
    const s = make({ balanceFactor: 1.5 });
    s.setEndpoints(e);
    const random = createSeededRandom(77);
    const placed: Endpoint[] = [];
    for (let i = 0; i < 2000; i++) {
      if (random() < 0.6 || placed.length === 0) {
        const ep = s.pick({ nowMs: i, hashKey: `k${Math.floor(random() * 5)}` })!.endpoint;
        ep.load.onRequestStart(i);
        placed.push(ep);
      } else {
        placed.splice(Math.floor(random() * placed.length), 1)[0]!.load.onRequestEnd(i, 5, true);
      }
      // The bound holds at every step: nobody exceeds ceil(f × (total + 1) / n) + the one just placed.
      const total = e.reduce((a, ep) => a + ep.load.inFlight, 0);
      for (const ep of e) {
        expect(ep.load.inFlight).toBeLessThanOrEqual(Math.ceil((1.5 * total) / e.length) + 1);
      }
    }
    s.dispose!();
  });
});
