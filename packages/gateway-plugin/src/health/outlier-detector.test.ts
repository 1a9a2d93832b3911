import { OutlierDetector, RECOVERY_CHECK_MS } from './outlier-detector';
import { eligibleIds, fleet, type Fleet } from './test-fleet';

const config = {
  consecutiveFailures: 3,
  baseEjectionMs: 10_000,
  maxEjectionMs: 25_000,
  maxEjectionPercent: 50,
};

describe('OutlierDetector (Envoy consecutive failures)', () => {
  let f: Fleet;
  beforeEach(() => jest.useFakeTimers({ now: 1_000_000 }));
  afterEach(() => {
    f.close();
    jest.useRealTimers();
  });

  function detector(cfg = config): OutlierDetector {
    return new OutlierDetector(cfg, f.registry, f.events, () => Date.now());
  }

  it('ejects after consecutive failures for base × times ejected, capped, then restores', () => {
    f = fleet(['a', 'b', 'c', 'd']);
    const d = detector();
    const [a] = f.backends as [(typeof f.backends)[0]];
    d.onFailure(a);
    d.onFailure(a);
    d.onSuccess(a); // a success resets the streak
    d.onFailure(a);
    d.onFailure(a);
    expect(eligibleIds(f.registry)).toEqual(['a', 'b', 'c', 'd']);
    expect(d.onFailure(a)).toBe(true);
    expect(eligibleIds(f.registry)).toEqual(['b', 'c', 'd']);
    expect(f.seen).toContainEqual([
      'backend-ejected',
      { id: 'a', durationMs: 10_000, consecutiveFailures: 3 },
    ]);

    jest.advanceTimersByTime(9_999);
    expect(eligibleIds(f.registry)).not.toContain('a');
    jest.advanceTimersByTime(1);
    expect(eligibleIds(f.registry)).toEqual(['a', 'b', 'c', 'd']);
    expect(f.seen).toContainEqual(['backend-restored', { id: 'a' }]);
    // Restored through slow start.
    expect(a.load.slowStartFactor(Date.now())).toBeLessThan(1);

    for (let i = 0; i < 3; i++) d.onFailure(a);
    expect(f.seen.at(-1)).toEqual([
      'backend-ejected',
      { id: 'a', durationMs: 20_000, consecutiveFailures: 3 },
    ]);
    jest.advanceTimersByTime(20_000);
    for (let i = 0; i < 3; i++) d.onFailure(a);
    expect(f.seen.at(-1)).toEqual([
      'backend-ejected',
      { id: 'a', durationMs: 25_000, consecutiveFailures: 3 },
    ]);
    jest.advanceTimersByTime(25_000);
    expect(eligibleIds(f.registry)).toContain('a');
  });

  it('forgets the multiplier after a quiet maxEjectionMs', () => {
    f = fleet(['a', 'b']);
    const d = detector({ ...config, maxEjectionPercent: 100 });
    const a = f.backends[0]!;
    for (let i = 0; i < 3; i++) d.onFailure(a);
    jest.advanceTimersByTime(10_000 + 25_001);
    for (let i = 0; i < 3; i++) d.onFailure(a);
    expect(f.seen.filter(([n]) => n === 'backend-ejected').at(-1)?.[1]).toMatchObject({
      durationMs: 10_000,
    });
  });

  it('never ejects more than maxEjectionPercent, but always allows one', () => {
    f = fleet(['a', 'b', 'c', 'd']);
    const d = detector({ ...config, maxEjectionPercent: 10 });
    const [a, b] = f.backends as [(typeof f.backends)[0], (typeof f.backends)[0]];
    for (let i = 0; i < 3; i++) d.onFailure(a);
    for (let i = 0; i < 3; i++) d.onFailure(b);
    expect(eligibleIds(f.registry)).toEqual(['b', 'c', 'd']);
  });

  it('enters panic when too few are healthy: spreads over every routable backend', () => {
    f = fleet(['a', 'b', 'c'], 50);
    const d = detector({ ...config, maxEjectionPercent: 100 });
    const [a, b] = f.backends as [(typeof f.backends)[0], (typeof f.backends)[0]];
    for (let i = 0; i < 3; i++) d.onFailure(a);
    expect(eligibleIds(f.registry)).toEqual(['b', 'c']);
    for (let i = 0; i < 3; i++) d.onFailure(b);
    // 1 healthy of 3 < 50%: panic, all three eligible again.
    expect(f.registry.panic).toBe(true);
    expect(eligibleIds(f.registry)).toEqual(['a', 'b', 'c']);
    expect(f.seen).toContainEqual(['panic', { panic: true, healthy: 1, routable: 3 }]);
    jest.advanceTimersByTime(10_000);
    expect(f.registry.panic).toBe(false);
    expect(eligibleIds(f.registry)).toEqual(['a', 'b', 'c']);
  });

  it('starts slow start when the backend is eligible again, not when one reason ends', () => {
    f = fleet(['a', 'b', 'c', 'd']);
    const d = detector();
    const a = f.backends[0]!;
    for (let i = 0; i < 3; i++) d.onFailure(a);
    a.checkDown = true; // the health check also failed meanwhile
    f.registry.recompute();
    jest.advanceTimersByTime(10_000); // ejection over, still down by the check
    expect(eligibleIds(f.registry)).not.toContain('a');
    jest.advanceTimersByTime(60_000); // longer than any ramp
    a.checkDown = false;
    f.registry.recompute();
    expect(eligibleIds(f.registry)).toContain('a');
    expect(a.load.slowStartFactor(Date.now())).toBeLessThan(1);
    // The initial set never ramps.
    expect(f.backends[1]!.load.slowStartFactor(Date.now())).toBe(1);
  });

  it('panic never overrides draining', () => {
    f = fleet(['a', 'b'], 100);
    const [a, b] = f.backends as [(typeof f.backends)[0], (typeof f.backends)[0]];
    a.agentState = 'draining';
    b.checkDown = true;
    f.registry.recompute();
    expect(f.registry.panic).toBe(true);
    expect(eligibleIds(f.registry)).toEqual(['b']);
    expect(f.seen).toContainEqual(['backend-draining', { id: 'a' }]);
    expect(f.seen).toContainEqual([
      'backend-down',
      { id: 'b', reason: 'active health check failed' },
    ]);
  });
});

describe('OutlierDetector: a restarted backend is not kept out by its ejection', () => {
  let f: Fleet;
  beforeEach(() => jest.useFakeTimers({ now: 1_000_000 }));
  afterEach(() => {
    f.close();
    jest.useRealTimers();
  });

  const detector = (): OutlierDetector =>
    new OutlierDetector(
      { ...config, baseEjectionMs: 30_000, maxEjectionMs: 300_000 },
      f.registry,
      f.events,
      () => Date.now(),
    );

  it.each([
    { signal: 'agent verdict', set: (b: Fleet['backends'][0], v: boolean) => (b.verdictDown = v) },
    { signal: 'active check', set: (b: Fleet['backends'][0], v: boolean) => (b.checkDown = v) },
  ])('ejected, then down by the $signal, then up: restored at once', ({ set }) => {
    f = fleet(['a', 'b', 'c', 'd']);
    const d = detector();
    const a = f.backends[0]!;
    for (let i = 0; i < 3; i++) d.onFailure(a); // killed: refused connections
    expect(eligibleIds(f.registry)).not.toContain('a');
    jest.advanceTimersByTime(1_000);
    set(a, true); // its own health signal sees it dead
    f.registry.recompute();
    jest.advanceTimersByTime(4_000);
    expect(eligibleIds(f.registry)).not.toContain('a');
    set(a, false); // restarted: the probe passes again, 5 s into a 30 s ejection
    f.registry.recompute();
    jest.advanceTimersByTime(RECOVERY_CHECK_MS);
    expect(eligibleIds(f.registry)).toContain('a');
    expect(f.seen).toContainEqual(['backend-restored', { id: 'a' }]);
    // Back through slow start, from a clean slate (registry.ts admits it).
    expect(a.load.slowStartFactor(Date.now())).toBeLessThan(1);
    expect(a.consecutiveFailures).toBe(0);
  });

  it('a backend whose health signals never said down serves its whole ejection', () => {
    f = fleet(['a', 'b', 'c', 'd']);
    const d = detector();
    const a = f.backends[0]!;
    for (let i = 0; i < 3; i++) d.onFailure(a); // failing requests, probe fine all along
    jest.advanceTimersByTime(29_999);
    expect(eligibleIds(f.registry)).not.toContain('a');
    jest.advanceTimersByTime(1);
    expect(eligibleIds(f.registry)).toContain('a');
  });

  it('stays out while still down when the ejection expires; close() clears the timer', () => {
    f = fleet(['a', 'b', 'c', 'd']);
    const d = detector();
    const a = f.backends[0]!;
    for (let i = 0; i < 3; i++) d.onFailure(a);
    a.verdictDown = true;
    f.registry.recompute();
    jest.advanceTimersByTime(30_000);
    expect(a.ejectedUntilMs).toBeUndefined();
    expect(eligibleIds(f.registry)).not.toContain('a');
    expect(jest.getTimerCount()).toBe(0);
    for (let i = 0; i < 3; i++) d.onFailure(a);
    f.close();
    expect(jest.getTimerCount()).toBe(0);
  });
});
