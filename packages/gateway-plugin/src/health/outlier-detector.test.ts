import type { MetricsReport } from '@loadwise/protocol';
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

  type B = Fleet['backends'][0];

  /** A signed report as the registry applies it: agent run `epochMs`, service process `pid`. */
  function report(
    b: B,
    verdict: 'up' | 'down',
    epochMs: number,
    pid: number,
    state: MetricsReport['state'] = 'online',
  ): void {
    const message: MetricsReport = {
      v: 1,
      kind: 'metrics',
      backendId: b.id,
      epochMs,
      seq: seq++,
      ts: Date.now(),
      intervalMs: 1_000,
      state,
      host: { cpuUtilization: 0.1, memoryUtilization: 0.1, memoryAvailableBytes: 1e9 },
      process: { pid, cpuCores: 0.1, rssBytes: 1e8 },
      health: verdict === 'up' ? { verdict } : { verdict, reason: 'probe refused' },
    };
    f.registry.applyMessage(b, message, Date.now());
  }
  let seq = 0;

  /** Three failed requests, as the proxy records them: a failure for the load model too. */
  function fail3(d: OutlierDetector, b: B): void {
    for (let i = 0; i < 3; i++) {
      b.load.onRequestStart(Date.now());
      b.load.onRequestEnd(Date.now(), 2, false);
      d.onFailure(b);
    }
  }

  /** A fleet of four whose `a` reported up (agent run 1000, pid 42), then failed until ejected. */
  function ejectedA(): { d: OutlierDetector; a: B } {
    f = fleet(['a', 'b', 'c', 'd']);
    const d = detector();
    const a = f.backends[0]!;
    report(a, 'up', 1_000, 42);
    fail3(d, a);
    return { d, a };
  }

  it.each([
    { restart: 'another service process', epochMs: 1_000, pid: 43 },
    { restart: 'another agent run', epochMs: 2_000, pid: 42 },
  ])(
    'ejected, down by the agent verdict, up in a report of $restart: restored at once',
    ({ epochMs, pid }) => {
      const { a } = ejectedA(); // killed: refused connections
      expect(eligibleIds(f.registry)).not.toContain('a');
      jest.advanceTimersByTime(1_000);
      report(a, 'down', 1_000, 42); // its agent's probe sees it dead
      jest.advanceTimersByTime(4_000);
      expect(eligibleIds(f.registry)).not.toContain('a');
      report(a, 'up', epochMs, pid); // restarted: the probe passes again, 5 s into a 30 s ejection
      jest.advanceTimersByTime(RECOVERY_CHECK_MS);
      expect(eligibleIds(f.registry)).toContain('a');
      expect(f.seen).toContainEqual(['backend-restored', { id: 'a' }]);
      // A new incarnation: back through slow start, from a clean slate (registry.ts admits it).
      expect(a.load.slowStartFactor(Date.now())).toBeLessThan(1);
      expect(a.load.snapshot(Date.now()).penaltyFactor).toBe(1);
      expect(a.consecutiveFailures).toBe(0);
    },
  );

  it.each([
    { restart: 'another service process', epochMs: 1_000, pid: 43 },
    { restart: 'another agent run', epochMs: 2_000, pid: 42 },
  ])(
    'ejected, never seen down, up in a report of $restart: restored at once, on trial',
    ({ epochMs, pid }) => {
      // Crashed under load (refused connections eject it in milliseconds) and restarted within
      // the agent's probe interval: its verdict never said down. It served its whole ejection.
      const { d, a } = ejectedA();
      jest.advanceTimersByTime(1_000);
      report(a, 'up', 1_000, 42); // the same run and process: nothing
      jest.advanceTimersByTime(RECOVERY_CHECK_MS);
      expect(eligibleIds(f.registry)).not.toContain('a');
      report(a, 'up', epochMs, pid);
      jest.advanceTimersByTime(RECOVERY_CHECK_MS);
      expect(eligibleIds(f.registry)).toContain('a');
      expect(f.seen).toContainEqual(['backend-restored', { id: 'a' }]);
      fail3(d, a); // on trial: failing again, it serves the next ejection in full
      report(a, 'up', epochMs + 1, pid + 1);
      jest.advanceTimersByTime(59_000);
      expect(eligibleIds(f.registry)).not.toContain('a');
    },
  );

  it('no report at the ejection: the first one is no restart unless the verdict said down', () => {
    f = fleet(['a', 'b', 'c', 'd']);
    const d = detector();
    const a = f.backends[0]!;
    fail3(d, a); // a gateway that has heard nothing of it yet
    report(a, 'up', 1_000, 42);
    jest.advanceTimersByTime(5_000);
    expect(eligibleIds(f.registry)).not.toContain('a');
    report(a, 'down', 1_000, 42);
    jest.advanceTimersByTime(RECOVERY_CHECK_MS);
    report(a, 'up', 2_000, 43);
    jest.advanceTimersByTime(RECOVERY_CHECK_MS);
    expect(eligibleIds(f.registry)).toContain('a');
  });

  it('a verdict down and up again within one agent run and one process does not end it', () => {
    // A backend failing every request whose agent alternates down/up every 300 ms: each
    // toggle ended its ejection (6 ejections of ~0.5 s in 15 s, 30 failed requests).
    const { a } = ejectedA();
    for (let t = 0; t < 29_700; t += 300) {
      report(a, t % 600 === 0 ? 'down' : 'up', 1_000, 42);
      jest.advanceTimersByTime(300);
      expect(eligibleIds(f.registry)).not.toContain('a');
    }
    report(a, 'up', 1_000, 42);
    jest.advanceTimersByTime(300); // the ejection's 30 s are over
    expect(eligibleIds(f.registry)).toContain('a');
    expect(f.seen.filter(([n]) => n === 'backend-ejected')).toHaveLength(1);
  });

  it('ended by the active check alone: back at once, keeping its figures and multiplier', () => {
    const { d, a } = ejectedA();
    jest.advanceTimersByTime(1_000);
    a.checkDown = true; // no answer from here: unreachable
    f.registry.recompute();
    jest.advanceTimersByTime(4_000);
    expect(eligibleIds(f.registry)).not.toContain('a');
    a.checkDown = false; // answers again: the path, not a new process
    f.registry.recompute();
    jest.advanceTimersByTime(RECOVERY_CHECK_MS);
    expect(eligibleIds(f.registry)).toContain('a');
    expect(f.seen).toContainEqual(['backend-restored', { id: 'a' }]);
    // The failures that ejected it still count against it (admit() wiped them).
    expect(a.load.snapshot(Date.now()).penaltyFactor).toBeGreaterThan(1);
    a.load.onRequestStart(Date.now());
    a.load.onRequestEnd(Date.now(), 2, true);
    d.onSuccess(a);
    fail3(d, a);
    expect(f.seen.at(-1)).toEqual([
      'backend-ejected',
      { id: 'a', durationMs: 60_000, consecutiveFailures: 3 },
    ]);
  });

  it('ended by the check while drained: a new process after the drain gets a clean slate', () => {
    // A deploy: the check loses it, the agent drains it, the ejection ends on the check alone
    // (figures kept for the same process), and what comes back is another process.
    const { a } = ejectedA();
    a.checkDown = true;
    f.registry.recompute();
    jest.advanceTimersByTime(1_000);
    report(a, 'up', 1_000, 42, 'draining');
    a.checkDown = false;
    f.registry.recompute();
    jest.advanceTimersByTime(RECOVERY_CHECK_MS);
    expect(a.ejectedUntilMs).toBeUndefined(); // the ejection is over
    expect(eligibleIds(f.registry)).not.toContain('a'); // still drained
    report(a, 'up', 2_000, 43); // the new release, online
    expect(eligibleIds(f.registry)).toContain('a');
    expect(a.load.slowStartFactor(Date.now())).toBeLessThan(1);
    expect(a.load.snapshot(Date.now()).penaltyFactor).toBe(1);
  });

  it('ejected again before one success since an early end: serves that ejection in full', () => {
    // Its agent signs whatever its host says, a new run included: the first claim of a
    // restart is believed, a second one without a success in between is not.
    f = fleet(['a', 'b', 'c', 'd']);
    const d = detector();
    const a = f.backends[0]!;
    let epochMs = 1_000;
    const restart = (): void => {
      report(a, 'down', ++epochMs, 42);
      jest.advanceTimersByTime(300);
      report(a, 'up', ++epochMs, 42);
      jest.advanceTimersByTime(RECOVERY_CHECK_MS);
    };
    report(a, 'up', epochMs, 42);
    fail3(d, a);
    restart();
    expect(eligibleIds(f.registry)).toContain('a'); // believed once
    fail3(d, a); // failing as before
    expect(f.seen.at(-1)).toEqual([
      'backend-ejected',
      { id: 'a', durationMs: 60_000, consecutiveFailures: 3 },
    ]);
    const until = a.ejectedUntilMs!;
    while (Date.now() + 1_000 < until) {
      restart();
      expect(eligibleIds(f.registry)).not.toContain('a');
    }
    jest.advanceTimersByTime(until - Date.now());
    expect(eligibleIds(f.registry)).toContain('a');

    // Ended early, then answered a request: the next claim of a restart is believed again.
    fail3(d, a);
    restart();
    expect(eligibleIds(f.registry)).toContain('a');
    d.onSuccess(a);
    fail3(d, a);
    expect(f.seen.at(-1)).toEqual([
      'backend-ejected',
      { id: 'a', durationMs: 120_000, consecutiveFailures: 3 },
    ]);
    restart();
    expect(eligibleIds(f.registry)).toContain('a');
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
