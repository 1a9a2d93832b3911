import { createEndpointLoad } from '../load';
import { p2c } from './p2c-strategy';
import { createStrategy } from './registry';
import { createSeededRandom } from './seeded-random';
import type { Endpoint } from './types';

function eps(inFlight: number[]): Endpoint[] {
  return inFlight.map((n, i) => {
    const load = createEndpointLoad();
    for (let k = 0; k < n; k++) load.onRequestStart(0);
    return { id: `b${i}`, weight: 1, load };
  });
}

function shares(name: string, e: Endpoint[], picks: number, seed: number, opts: object = {}) {
  const s = createStrategy(name, { random: createSeededRandom(seed), ...opts });
  s.setEndpoints(e);
  const counts = e.map(() => 0);
  for (let i = 0; i < picks; i++) counts[e.indexOf(s.pick({ nowMs: 0 })!.endpoint)]!++;
  return counts.map((c) => c / picks);
}

describe('p2c (power of two choices on in-flight)', () => {
  // With the state frozen, each of the 3 pairs is drawn with probability 1/3 and the lower one wins:
  // {0,5} → 0, {0,10} → 0, {5,10} → 5. So the idle one gets 2/3, the middle 1/3, the busiest never.
  it.each([
    { inFlight: [0, 5, 10], expectedRatios: [2 / 3, 1 / 3, 0] },
    { inFlight: [1, 1], expectedRatios: [0.5, 0.5] },
    // One idle among ten: it is in the sampled pair with probability 1 - C(9,2)/C(10,2) = 1/5.
    // "Always the least loaded" would send it everything: this is the herding P2C avoids.
    { inFlight: [0, 3, 3, 3, 3, 3, 3, 3, 3, 3], expectedRatios: [0.2, ...Array(9).fill(0.8 / 9)] },
  ])('in-flight $inFlight → shares $expectedRatios', ({ inFlight, expectedRatios }) => {
    const got = shares('p2c', eps(inFlight), 30_000, 11);
    got.forEach((share, i) => expect(Math.abs(share - expectedRatios[i]!)).toBeLessThan(0.015));
  });

  it('reacts to in-flight changes at once (no index to rebuild)', () => {
    const e = eps([0, 0]);
    const s = createStrategy('p2c', { random: createSeededRandom(5) });
    s.setEndpoints(e);
    for (let k = 0; k < 3; k++) e[0]!.load.onRequestStart(0);
    for (let i = 0; i < 20; i++) expect(s.pick({ nowMs: 0 })!.endpoint.id).toBe('b1');
  });

  it('explains the comparison', () => {
    const s = createStrategy('p2c', { random: createSeededRandom(5) });
    s.setEndpoints(eps([0, 4]));
    expect(s.pick({ nowMs: 0, explain: true })!.reason).toBe(
      'p2c: b0 in-flight 0 < b1 in-flight 4',
    );
  });
});

describe('peak-ewma (Finagle/Linkerd: latency × (in-flight + 1), via P2C)', () => {
  function timed(latencies: number[], inFlight: number[]): Endpoint[] {
    return latencies.map((lat, i) => {
      const load = createEndpointLoad();
      load.onRequestStart(0);
      load.onRequestEnd(0, lat, true);
      for (let k = 0; k < inFlight[i]!; k++) load.onRequestStart(0);
      return { id: `b${i}`, weight: 1, load };
    });
  }

  it.each([
    { latencies: [10, 50], inFlight: [0, 0], expectedRatios: [1, 0] },
    // 10 ms × 6 = 60 > 50 ms × 1: the idle slow one wins.
    { latencies: [10, 50], inFlight: [5, 0], expectedRatios: [0, 1] },
    { latencies: [10, 10], inFlight: [1, 1], expectedRatios: [0.5, 0.5] },
  ])(
    'latency $latencies, in-flight $inFlight → $expectedRatios',
    ({ latencies, inFlight, expectedRatios }) => {
      const got = shares('peak-ewma', timed(latencies, inFlight), 10_000, 3);
      got.forEach((share, i) => expect(Math.abs(share - expectedRatios[i]!)).toBeLessThan(0.02));
    },
  );

  it('a newcomer without a latency sample gets one probe, then waits for its answer', () => {
    const e = timed([10, 10], [0, 0]);
    const newcomer: Endpoint = { id: 'new', weight: 1, load: createEndpointLoad() };
    const s = createStrategy('peak-ewma', { random: createSeededRandom(9) });
    s.setEndpoints([...e, newcomer]);
    let toNewcomer = 0;
    for (let i = 0; i < 300; i++) {
      const ep = s.pick({ nowMs: 0 })!.endpoint;
      if (ep === newcomer) toNewcomer++;
      ep.load.onRequestStart(0); // none finishes: the probe stays in flight
    }
    expect(toNewcomer).toBe(1);
  });

  it('slow start is a share: an admitted backend gets about f × its share, not nothing', () => {
    const e = timed([10, 10], [0, 0]);
    // Admission forgets earlier samples (a new incarnation); it is then measured as fast as b0.
    e[1]!.load.admit(0);
    e[1]!.load.onRequestStart(0);
    e[1]!.load.onRequestEnd(0, 10, true);
    // At the start of the ramp f = 0.1: b1 competes undivided in 1 pick of 10 and then ties
    // with b0 (a coin), so it gets 0.1 × 1/2 of the picks. Dividing alone gave it 0.
    const early = shares('peak-ewma', e, 5000, 4);
    expect(Math.abs(early[1]! - 0.05)).toBeLessThan(0.01);
  });

  it('admission forgets what the previous incarnation measured', () => {
    const e = timed([10, 500], [0, 0]);
    expect(e[1]!.load.latencyMs(0)).toBe(500);
    e[1]!.load.admit(0);
    expect(e[1]!.load.latencyMs(0)).toBeUndefined();
  });
});

describe('noise ties (load-aware): differences within the gateway event loop lateness', () => {
  // Two candidates, so every pick compares both: the fixed metric says b0 is 2 ms faster.
  function setup(inFlight: [number, number], seed = 3) {
    const e = eps(inFlight);
    const metric = (ep: Endpoint): number => (ep.id === 'b0' ? 10 : 12);
    const s = p2c(metric, { name: 't', tieTolerance: 0.05, noiseTies: true, slowStart: false })({
      random: createSeededRandom(seed),
    });
    s.setEndpoints(e);
    return (noiseMs: number, picks = 2_000): number[] => {
      const counts = [0, 0];
      for (let i = 0; i < picks; i++)
        counts[s.pick({ nowMs: 0, measurementNoiseMs: noiseMs })!.endpoint.id === 'b0' ? 0 : 1]!++;
      return counts.map((c) => c / picks);
    };
  }

  it('a gap beyond tieTolerance decides while there is no noise, or the gap exceeds it', () => {
    const pick = setup([3, 1]);
    expect(pick(0)).toEqual([1, 0]);
    expect(pick(1)).toEqual([1, 0]); // 2 ms > 5% of 10 + 1 ms
  });

  it('within the noise, the candidate with fewer requests in flight wins', () => {
    expect(setup([3, 1])(3)).toEqual([0, 1]);
    expect(setup([1, 3])(3)).toEqual([1, 0]);
  });

  it('within the noise and with as many in flight, they take turns', () => {
    expect(setup([2, 2])(3, 20_000)).toEqual([0.5, 0.5]);
  });

  it('explains a noise tie with "="', () => {
    const e = eps([3, 1]);
    const s = p2c((ep) => (ep.id === 'b0' ? 10 : 12), {
      name: 't',
      tieTolerance: 0.05,
      noiseTies: true,
      slowStart: false,
    })({ random: createSeededRandom(1) });
    s.setEndpoints(e);
    expect(s.pick({ nowMs: 0, explain: true, measurementNoiseMs: 3 })!.reason).toBe(
      't p2c: b1 ≈12.0 = b0 ≈10.0',
    );
  });
});
