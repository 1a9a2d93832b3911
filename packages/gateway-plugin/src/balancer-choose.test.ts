/**
 * Balancer.choose: eligibility, saturation and the pick of one attempt, with
 * the saturation test on the strategy's pick only (O(choices)), seeded and on
 * an injected clock. A request must still wait exactly when every untried
 * backend is saturated, whatever share of them is.
 */
import type { Balancer } from './balancer';
import type { LoadBalanceOptions } from './options';
import { createSeededRandom } from './strategies/seeded-random';
import { testBalancer } from './test-balancer';

const T0 = 1_800_000_000_000;

function fleet(n: number, extra: Partial<LoadBalanceOptions> = {}): Balancer {
  const backends = Array.from({ length: n }, (_, i) => ({
    id: `b${i}`,
    url: `http://127.0.0.1:${10000 + i}`,
  }));
  return testBalancer(backends, () => T0, { random: createSeededRandom(7), ...extra });
}

/** Fills `backend` up to `slots` requests in flight. */
function fill(lb: Balancer, id: string, slots: number): void {
  const b = lb.registry.get(id)!;
  for (let i = 0; i < slots; i++) lb.attemptStarted(b, T0);
}

describe('Balancer.choose', () => {
  const open: Balancer[] = [];
  afterEach(async () => {
    await Promise.all(open.splice(0).map((lb) => lb.close({ graceMs: 0 })));
  });
  const make = (n: number, extra: Partial<LoadBalanceOptions> = {}): Balancer => {
    const lb = fleet(n, extra);
    open.push(lb);
    return lb;
  };

  it('tests saturation on the picks only while few backends are saturated', () => {
    const lb = make(1000, { saturation: { maxInFlightPerBackend: 2 } });
    const spy = jest.spyOn(lb, 'isSaturated');
    for (let i = 0; i < 200; i++) {
      const b = lb.choose(T0, undefined, undefined);
      expect(typeof b).toBe('object');
    }
    // One test per pick (a few more when a pick was saturated), never one per backend.
    expect(spy.mock.calls.length).toBeLessThan(200 * 2);
  });

  it('finds the one backend left with a free slot, among 99 saturated', () => {
    const lb = make(100, { saturation: { maxInFlightPerBackend: 1 } });
    for (let i = 0; i < 100; i++) if (i !== 42) fill(lb, `b${i}`, 1);
    for (let k = 0; k < 20; k++) {
      const b = lb.choose(T0, undefined, undefined);
      expect(b).toBe(lb.registry.get('b42'));
    }
  });

  it('answers saturated when every backend is, and all-tried when a retry tried them all', () => {
    const lb = make(10, { saturation: { maxInFlightPerBackend: 1 } });
    for (let i = 0; i < 10; i++) fill(lb, `b${i}`, 1);
    expect(lb.choose(T0, undefined, undefined)).toBe('saturated');
    const tried = new Set(lb.registry.eligible.map((b) => b.endpoint));
    expect(lb.choose(T0, tried, undefined)).toBe('all-tried');
  });

  it('saturated when the untried backends are all saturated and the free one was tried', () => {
    const lb = make(3, { saturation: { maxInFlightPerBackend: 1 } });
    fill(lb, 'b1', 1);
    fill(lb, 'b2', 1);
    const tried = new Set([lb.registry.get('b0')!.endpoint]);
    expect(lb.choose(T0, tried, undefined)).toBe('saturated');
    expect(lb.choose(T0, undefined, undefined)).toBe(lb.registry.get('b0'));
  });

  it('with maxExpectedWaitMs, skips the backends whose expected wait is above it', () => {
    // No data: every backend's wait is the neutral estimate (defaultLatencyMs); requests in
    // flight beyond its capacity raise it above the bound.
    const lb = make(50, { saturation: { maxExpectedWaitMs: 500, maxInFlightPerBackend: 1000 } });
    for (let i = 0; i < 50; i++) if (i !== 7) fill(lb, `b${i}`, 200);
    for (const b of lb.registry.eligible) {
      expect(lb.isSaturated(b, T0)).toBe(b.id !== 'b7');
    }
    for (let k = 0; k < 10; k++)
      expect(lb.choose(T0, undefined, undefined)).toBe(lb.registry.get('b7'));
    fill(lb, 'b7', 200);
    expect(lb.choose(T0, undefined, undefined)).toBe('saturated');
  });

  it('with maxExpectedWaitMs below the service time, an idle backend still takes a request', () => {
    // The neutral estimate (defaultLatencyMs) is above 1 ms: the wait of an idle backend is
    // its service time. Saturated then, nothing was ever sent, nothing completed to lower
    // the estimate, and every request got 503 LW_GW_SATURATED after queueTimeoutMs.
    const lb = make(3, { saturation: { maxExpectedWaitMs: 1, maxInFlightPerBackend: 1000 } });
    for (const b of lb.registry.eligible) expect(lb.isSaturated(b, T0)).toBe(false);
    expect(lb.choose(T0, undefined, undefined)).not.toBe('saturated');
    // With requests of its own in flight, the bound applies.
    for (let i = 0; i < 3; i++) fill(lb, `b${i}`, 1);
    expect(lb.choose(T0, undefined, undefined)).toBe('saturated');
  });
});
