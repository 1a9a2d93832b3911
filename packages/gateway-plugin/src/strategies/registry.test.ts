import { createEndpointLoad, createLoadCohort } from '../load';
import { GatewayError } from '../errors';
import { createStrategy, registerStrategy, STRATEGY_NAMES, strategyNames } from './registry';
import { createSeededRandom } from './seeded-random';
import type { Endpoint, Strategy } from './types';

function endpoints(n: number): Endpoint[] {
  // One cohort per balancer, as the balancer wires it: a backend without data scores the mean.
  const cohort = createLoadCohort();
  return Array.from({ length: n }, (_, i) => ({
    id: `b${i}`,
    weight: 1,
    load: createEndpointLoad({ cohort }),
  }));
}

function make(name: string, seed = 1): Strategy {
  return createStrategy(name, { random: createSeededRandom(seed) });
}

describe('strategy registry', () => {
  it('lists the built-in strategies in one place, load-aware the default', () => {
    expect(STRATEGY_NAMES).toEqual([
      'round-robin',
      'weighted-round-robin',
      'least-in-flight',
      'p2c',
      'peak-ewma',
      'consistent-hash',
      'load-aware',
    ]);
    expect(createStrategy().name).toBe('load-aware');
    for (const name of STRATEGY_NAMES) expect(make(name).name).toBe(name);
  });

  it('an unknown name throws LW_GW_UNKNOWN_STRATEGY', () => {
    expect(() => createStrategy('fastest')).toThrow(
      expect.objectContaining({ code: 'LW_GW_UNKNOWN_STRATEGY' }),
    );
  });

  it.each([
    ['p2c', { random: 3 }],
    ['round-robin', { choices: 2 }],
    ['load-aware', { choices: 0 }],
    ['load-aware', { choices: 2.5 }],
    ['consistent-hash', { virtualNodes: 0 }],
    ['consistent-hash', { fallback: 'consistent-hash' }],
    ['consistent-hash', { fallback: 'nope' }],
    ['consistent-hash', { balanceFactor: 0.5 }],
    ['consistent-hash', { fallbackOptions: 3 }],
    ['least-in-flight', 'fast'],
  ])('%s with %j throws a coded error', (name, opts) => {
    expect(() => createStrategy(name, opts)).toThrow(GatewayError);
  });

  it('registers a user strategy by name, never over a built-in', () => {
    const factory = () => make('round-robin');
    registerStrategy('my-first', factory);
    expect(strategyNames()).toContain('my-first');
    expect(createStrategy('my-first').name).toBe('round-robin');
    expect(() => registerStrategy('p2c', factory)).toThrow(GatewayError);
    expect(() => registerStrategy('Bad Name', factory)).toThrow(GatewayError);
  });
});

describe.each(STRATEGY_NAMES.map((name) => ({ name })))('$name: the contract', ({ name }) => {
  it('returns undefined with no endpoints', () => {
    const s = make(name);
    expect(s.pick({ nowMs: 0, hashKey: 'k' })).toBeUndefined();
    s.setEndpoints([]);
    expect(s.pick({ nowMs: 0, hashKey: 'k' })).toBeUndefined();
  });

  it('honours exclude: a retry never goes back to an excluded endpoint', () => {
    const eps = endpoints(5);
    const s = make(name);
    s.setEndpoints(eps);
    const exclude = new Set([eps[0]!, eps[2]!, eps[3]!]);
    const seen = new Set<string>();
    for (let i = 0; i < 200; i++) {
      const p = s.pick({ nowMs: i, exclude, hashKey: `key-${i}` });
      expect(p).toBeDefined();
      expect(exclude.has(p!.endpoint)).toBe(false);
      seen.add(p!.endpoint.id);
      // As the balancer does: the request starts and finishes.
      p!.endpoint.load.onRequestStart(i);
      p!.endpoint.load.onRequestEnd(i, 5, true);
    }
    // Both remaining endpoints are reachable (keys spread over the ring for consistent-hash).
    expect([...seen].sort()).toEqual(['b1', 'b4']);
  });

  it('returns undefined when every endpoint is excluded', () => {
    const eps = endpoints(3);
    const s = make(name);
    s.setEndpoints(eps);
    expect(s.pick({ nowMs: 0, exclude: new Set(eps), hashKey: 'k' })).toBeUndefined();
  });

  it('with one endpoint left, picks it', () => {
    const eps = endpoints(4);
    const s = make(name);
    s.setEndpoints(eps);
    const exclude = new Set(eps.slice(1));
    expect(s.pick({ nowMs: 0, exclude, hashKey: 'k' })?.endpoint).toBe(eps[0]);
  });

  it('fills a reason only when asked', () => {
    const s = make(name);
    s.setEndpoints(endpoints(3));
    expect(s.pick({ nowMs: 0, hashKey: 'k' })?.reason).toBeUndefined();
    const reason = s.pick({ nowMs: 0, hashKey: 'k', explain: true })?.reason;
    expect(reason).toMatch(new RegExp(`^${name}`));
    expect(reason).toMatch(/b\d/);
  });

  it('picks only endpoints of the current set after setEndpoints', () => {
    const eps = endpoints(6);
    const s = make(name);
    s.setEndpoints(eps);
    s.setEndpoints(eps.slice(3));
    for (let i = 0; i < 50; i++) {
      expect(eps.slice(3)).toContain(s.pick({ nowMs: i, hashKey: `k${i}` })!.endpoint);
    }
    s.dispose?.();
  });
});
