import { createEndpointLoad } from '../load';
import { createStrategy } from './registry';
import type { Endpoint } from './types';

const eps = (ids: string[], weights?: number[]): Endpoint[] =>
  ids.map((id, i) => ({ id, weight: weights?.[i] ?? 1, load: createEndpointLoad() }));

function sequence(name: string, endpoints: Endpoint[], n: number, exclude?: Set<Endpoint>): string {
  const s = createStrategy(name, { random: () => 0 });
  s.setEndpoints(endpoints);
  let out = '';
  for (let i = 0; i < n; i++) out += s.pick({ nowMs: i, exclude })!.endpoint.id;
  return out;
}

describe('round-robin', () => {
  it.each([
    { ids: ['a', 'b', 'c'], n: 7, expected: 'abcabca' },
    { ids: ['a'], n: 3, expected: 'aaa' },
  ])('$ids → $expected', ({ ids, n, expected }) => {
    expect(sequence('round-robin', eps(ids), n)).toBe(expected);
  });

  it('skips an excluded endpoint and keeps the rotation', () => {
    const e = eps(['a', 'b', 'c']);
    expect(sequence('round-robin', e, 6, new Set([e[1]!]))).toBe('acacac');
  });

  it('starts at a random position (gateways started together do not align)', () => {
    const s = createStrategy('round-robin', { random: () => 0.5 });
    s.setEndpoints(eps(['a', 'b', 'c', 'd']));
    expect(s.pick({ nowMs: 0 })!.endpoint.id).toBe('c');
  });
});

describe('weighted-round-robin (smooth, nginx)', () => {
  it.each([
    // nginx's own example (ngx_http_upstream_round_robin.c, 1.1.13): { 5, 1, 1 } → a a b a c a a.
    { weights: [5, 1, 1], n: 14, expected: 'aabacaaaabacaa' },
    { weights: [1, 1, 1], n: 6, expected: 'abcabc' },
    { weights: [2, 1], n: 6, expected: 'abaaba' },
    // Fractional weights run the live recurrence; the same sequence as 5:1 (ties go to the first).
    { weights: [2.5, 0.5], n: 6, expected: 'aaabaa' },
    // gcd reduction: 10:5 behaves as 2:1.
    { weights: [10, 5], n: 3, expected: 'aba' },
  ])('weights $weights → $expected', ({ weights, n, expected }) => {
    const ids = ['a', 'b', 'c'].slice(0, weights.length);
    expect(sequence('weighted-round-robin', eps(ids, weights), n)).toBe(expected);
  });

  it.each([
    { weights: [5, 1, 1], picks: 7000, expectedRatios: [5 / 7, 1 / 7, 1 / 7] },
    {
      weights: [3, 2, 1, 0.5],
      picks: 6500,
      expectedRatios: [3 / 6.5, 2 / 6.5, 1 / 6.5, 0.5 / 6.5],
    },
  ])('distribution for $weights is exactly the weights', ({ weights, picks, expectedRatios }) => {
    const e = eps(
      weights.map((_, i) => `e${i}`),
      weights,
    );
    const s = createStrategy('weighted-round-robin', { random: () => 0 });
    s.setEndpoints(e);
    const counts = new Map<Endpoint, number>();
    for (let i = 0; i < picks; i++) {
      const ep = s.pick({ nowMs: i })!.endpoint;
      counts.set(ep, (counts.get(ep) ?? 0) + 1);
    }
    e.forEach((ep, i) => expect((counts.get(ep) ?? 0) / picks).toBeCloseTo(expectedRatios[i]!, 3));
  });

  it('skips excluded endpoints (nginx "tried" peers)', () => {
    const e = eps(['a', 'b', 'c'], [5, 1, 1]);
    expect(sequence('weighted-round-robin', e, 7, new Set([e[0]!]))).toBe('bcbcbcb');
  });

  it('treats an invalid weight as 1 rather than breaking the pick path', () => {
    const e = eps(['a', 'b'], [NaN, -2]);
    expect(sequence('weighted-round-robin', e, 4)).toBe('abab');
  });
});
