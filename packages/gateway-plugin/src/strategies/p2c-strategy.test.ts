import { createEndpointLoad } from '../load';
import { GatewayError } from '../errors';
import { p2c } from './p2c-strategy';
import { createStrategy, registerStrategy } from './registry';
import { createSeededRandom } from './seeded-random';
import type { Endpoint } from './types';

/** A user's own figure per backend, kept outside loadwise (say, from their own monitoring). */
const cpu = new Map<string, number>();
const leastCpu = (ep: Endpoint): number => cpu.get(ep.id) ?? 1;

function eps(n: number): Endpoint[] {
  return Array.from({ length: n }, (_, i) => ({
    id: `b${i}`,
    weight: 1,
    load: createEndpointLoad(),
  }));
}

function counts(s: ReturnType<typeof createStrategy>, e: Endpoint[], picks: number): number[] {
  s.setEndpoints(e);
  const c = e.map(() => 0);
  for (let i = 0; i < picks; i++) c[e.indexOf(s.pick({ nowMs: 0 })!.endpoint)]!++;
  return c;
}

/** least-cpu-test comparing all of three endpoints, 5% ties. */
function bestOfThree(seed: number): ReturnType<typeof createStrategy> {
  const s = createStrategy('least-cpu-test', {
    random: createSeededRandom(seed),
    choices: 3,
    tieTolerance: 0.05,
  });
  s.setEndpoints(eps(3));
  return s;
}

describe("p2c(metric, options): a user's strategy from a metric", () => {
  beforeAll(() => {
    registerStrategy('least-cpu-test', p2c(leastCpu, { name: 'least-cpu-test' }));
  });

  it('registers by name and picks the lower metric of the sampled pair', () => {
    cpu.set('b0', 0.1).set('b1', 0.5).set('b2', 0.9);
    const s = createStrategy('least-cpu-test', { random: createSeededRandom(3) });
    const c = counts(s, eps(3), 3_000);
    // Pairs {0,1} {0,2} {1,2}, each a third of the time: b0 wins two, b1 one, b2 none.
    expect(c[2]).toBe(0);
    expect(c[0]! / 3_000).toBeCloseTo(2 / 3, 1);
    expect(c[1]! / 3_000).toBeCloseTo(1 / 3, 1);
  });

  it('takes choices from strategyOptions: best of all 3 always finds the lowest', () => {
    cpu.set('b0', 0.9).set('b1', 0.2).set('b2', 0.5);
    const s = createStrategy('least-cpu-test', { random: createSeededRandom(4), choices: 3 });
    expect(counts(s, eps(3), 500)).toEqual([0, 500, 0]);
  });

  it('never picks an excluded endpoint, and answers undefined when all are', () => {
    cpu.set('b0', 0).set('b1', 1);
    const e = eps(2);
    const s = createStrategy('least-cpu-test', { random: createSeededRandom(5) });
    s.setEndpoints(e);
    for (let i = 0; i < 50; i++) {
      expect(s.pick({ nowMs: 0, exclude: new Set([e[0]!]) })!.endpoint.id).toBe('b1');
    }
    expect(s.pick({ nowMs: 0, exclude: new Set(e) })).toBeUndefined();
  });

  it('explains with its name and the figures compared', () => {
    cpu.set('b0', 0.25).set('b1', 0.75);
    const s = createStrategy('least-cpu-test', { random: createSeededRandom(6) });
    s.setEndpoints(eps(2));
    expect(s.pick({ nowMs: 0, explain: true })!.reason).toBe(
      'least-cpu-test p2c: b0 ≈0.25 < b1 ≈0.75',
    );
  });

  it('breaks near-ties in turn when given a tieTolerance', () => {
    cpu.set('b0', 1).set('b1', 1.01);
    const strict = createStrategy('least-cpu-test', { random: createSeededRandom(7) });
    expect(counts(strict, eps(2), 400)).toEqual([400, 0]);
    const tolerant = createStrategy('least-cpu-test', {
      random: createSeededRandom(7),
      tieTolerance: 0.05,
    });
    expect(counts(tolerant, eps(2), 4_000)).toEqual([2_000, 2_000]);
  });

  it('takes tied candidates round robin: each once per round, in the same order', () => {
    cpu.set('b0', 1).set('b1', 1).set('b2', 1);
    const s = bestOfThree(8);
    const ids = Array.from({ length: 30 }, () => s.pick({ nowMs: 0 })!.endpoint.id);
    expect(new Set(ids.slice(0, 3)).size).toBe(3);
    for (let i = 3; i < ids.length; i++) expect(ids[i]).toBe(ids[i - 3]);
  });

  it('a candidate the metric keeps avoiding gets a fair draw of its rare ties, not all of them', () => {
    // b2 ties with b0 in one pick of 10 and loses clearly otherwise. In turn it would win every
    // such tie (its last pick is always older than b0's); not picked for two rounds, it gets a
    // coin: half of its ties, about 5% of the picks.
    cpu.set('b0', 1).set('b1', 5);
    const s = bestOfThree(9);
    let b2 = 0;
    for (let i = 0; i < 20_000; i++) {
      cpu.set('b2', i % 10 === 0 ? 1.01 : 100);
      if (s.pick({ nowMs: 0 })!.endpoint.id === 'b2') b2++;
    }
    expect(Math.abs(b2 / 20_000 - 0.05)).toBeLessThan(0.005);
  });

  it('checks its options like the built-in strategies', () => {
    expect(() => createStrategy('least-cpu-test', { choices: 0 })).toThrow(GatewayError);
    expect(() => createStrategy('least-cpu-test', { chioces: 2 })).toThrow(/chioces/);
  });
});
