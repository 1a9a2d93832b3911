import { createEndpointLoad } from '../load';
import { createStrategy } from './registry';
import { createSeededRandom } from './seeded-random';
import type { Endpoint, EndpointLoad } from './types';

const eps = (n: number, weights?: number[]): Endpoint[] =>
  Array.from({ length: n }, (_, i) => ({
    id: `b${i}`,
    weight: weights?.[i] ?? 1,
    load: createEndpointLoad(),
  }));

function start(ep: Endpoint, times = 1): void {
  for (let i = 0; i < times; i++) ep.load.onRequestStart(0);
}

/** An EndpointLoad from elsewhere: no watchInFlight, so the strategy must scan. */
function foreignLoad(): EndpointLoad & { setInFlight(n: number): void } {
  let inFlight = 0;
  return {
    get inFlight() {
      return inFlight;
    },
    setInFlight: (n) => (inFlight = n),
    onRequestStart: () => inFlight++,
    onRequestEnd: () => (inFlight = Math.max(0, inFlight - 1)),
    onReport: () => undefined,
    hasFreshReport: () => false,
    reportAgeMs: () => undefined,
    latencyMs: () => undefined,
    expectedWaitMs: () => 1,
    admit: () => undefined,
    slowStartFactor: () => 1,
  };
}

describe('least-in-flight', () => {
  it.each([
    { inFlight: [3, 1, 2], weights: [1, 1, 1], expected: 'b1' },
    { inFlight: [0, 5, 10], weights: [1, 1, 1], expected: 'b0' },
    // Weighted: 4 in flight on weight 4 (1 per unit) beats 2 on weight 1.
    { inFlight: [4, 2], weights: [4, 1], expected: 'b0' },
  ])('in-flight $inFlight, weights $weights → $expected', ({ inFlight, weights, expected }) => {
    const e = eps(inFlight.length, weights);
    const s = createStrategy('least-in-flight', { random: createSeededRandom(1) });
    s.setEndpoints(e);
    // State changes after setEndpoints reach the heap through watchInFlight.
    e.forEach((ep, i) => start(ep, inFlight[i]));
    expect(s.pick({ nowMs: 0 })!.endpoint.id).toBe(expected);
  });

  it('rotates among equals (nginx least_conn falls back to round robin on ties)', () => {
    const e = eps(4);
    const s = createStrategy('least-in-flight', { random: createSeededRandom(7) });
    s.setEndpoints(e);
    const seen: string[] = [];
    for (let i = 0; i < 8; i++) {
      const ep = s.pick({ nowMs: i })!.endpoint;
      seen.push(ep.id);
      ep.load.onRequestStart(i);
      ep.load.onRequestEnd(i, 1, true);
    }
    // Every endpoint once per round, the same order both rounds.
    expect(new Set(seen.slice(0, 4)).size).toBe(4);
    expect(seen.slice(4)).toEqual(seen.slice(0, 4));
  });

  it('rotates among equals on picks that start nothing (WebSocket upgrades), heap and scan', () => {
    // A WebSocket upgrade is picked and never in flight: rotated on starts only, the heap
    // sent every one to the same endpoint.
    const watched = eps(3);
    const loads = [foreignLoad(), foreignLoad(), foreignLoad()];
    const scanned: Endpoint[] = loads.map((load, i) => ({ id: `f${i}`, weight: 1, load }));
    for (const e of [watched, scanned]) {
      const s = createStrategy('least-in-flight', { random: createSeededRandom(5) });
      s.setEndpoints(e);
      const seen = Array.from({ length: 6 }, (_, i) => s.pick({ nowMs: i })!.endpoint.id);
      expect(new Set(seen.slice(0, 3)).size).toBe(3);
      expect(seen.slice(3)).toEqual(seen.slice(0, 3));
    }
  });

  it('the heap always yields the brute-force minimum, with and without exclude (seeded random walk)', () => {
    const random = createSeededRandom(42);
    const e = eps(
      50,
      Array.from({ length: 50 }, (_, i) => 1 + (i % 3)),
    );
    const s = createStrategy('least-in-flight', { random });
    s.setEndpoints(e);
    const key = (ep: Endpoint) => ep.load.inFlight / ep.weight;
    for (let step = 0; step < 3000; step++) {
      const ep = e[Math.floor(random() * e.length)]!;
      if (random() < 0.55) ep.load.onRequestStart(step);
      else ep.load.onRequestEnd(step, 5, true);
      const exclude = new Set<Endpoint>();
      const k = Math.floor(random() * 4);
      for (let j = 0; j < k; j++) exclude.add(e[Math.floor(random() * e.length)]!);
      const picked = s.pick({ nowMs: step, exclude })!.endpoint;
      const min = Math.min(...e.filter((x) => !exclude.has(x)).map(key));
      expect(exclude.has(picked)).toBe(false);
      expect(key(picked)).toBe(min);
    }
  });

  it('falls back to a scan when a load cannot be watched', () => {
    const loads = [foreignLoad(), foreignLoad(), foreignLoad()];
    const e: Endpoint[] = loads.map((load, i) => ({ id: `f${i}`, weight: 1, load }));
    const s = createStrategy('least-in-flight', { random: createSeededRandom(3) });
    s.setEndpoints(e);
    loads[0]!.setInFlight(4);
    loads[1]!.setInFlight(2);
    loads[2]!.setInFlight(9);
    expect(s.pick({ nowMs: 0 })!.endpoint.id).toBe('f1');
    expect(s.pick({ nowMs: 0, exclude: new Set([e[1]!]) })!.endpoint.id).toBe('f0');
  });

  it('unsubscribes from endpoints it no longer holds', () => {
    let subscribed = 0;
    const watched = (): EndpointLoad => {
      const base = createEndpointLoad();
      return Object.assign(Object.create(base) as EndpointLoad, {
        watchInFlight: (l: () => void) => {
          subscribed++;
          const off = base.watchInFlight(l);
          return () => {
            subscribed--;
            off();
          };
        },
      });
    };
    const e: Endpoint[] = [0, 1, 2].map((i) => ({ id: `w${i}`, weight: 1, load: watched() }));
    const s = createStrategy('least-in-flight');
    s.setEndpoints(e);
    expect(subscribed).toBe(3);
    s.setEndpoints(e.slice(1));
    expect(subscribed).toBe(2);
    s.dispose!();
    expect(subscribed).toBe(0);
  });
});
