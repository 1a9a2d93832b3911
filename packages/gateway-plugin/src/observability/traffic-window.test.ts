import { TrafficWindow } from './traffic-window';

describe('TrafficWindow', () => {
  it('counts requests per backend within the window', () => {
    const w = new TrafficWindow({ windowMs: 1000, slots: 10 });
    for (let i = 0; i < 30; i++) w.record('a', 5_000 + i);
    for (let i = 0; i < 10; i++) w.record('b', 5_100 + i);
    const c = w.counts(5_200);
    expect(c.total).toBe(40);
    expect(c.perBackend.get('a')).toBe(30);
    expect(c.perBackend.get('b')).toBe(10);
  });

  it('forgets requests older than the window, slot by slot', () => {
    const w = new TrafficWindow({ windowMs: 1000, slots: 10 });
    w.record('a', 0); // slot 0
    w.record('a', 450); // slot 4
    w.record('b', 950); // slot 9
    expect(w.counts(999).total).toBe(3);
    // At 1000 ms slot 10 reuses ring index 0: the request at 0 ms drops out.
    expect(w.counts(1000).perBackend.get('a')).toBe(1);
    // At 1450 ms slot 14 drops the request at 450 ms.
    expect(w.counts(1450).perBackend.has('a')).toBe(false);
    expect(w.counts(1450).total).toBe(1);
    // Long idle: everything is cleared even though many slots were skipped.
    w.record('b', 1960);
    expect(w.counts(50_000).total).toBe(0);
  });

  it('rejects nonsense options', () => {
    expect(() => new TrafficWindow({ slots: 0 })).toThrow(RangeError);
    expect(() => new TrafficWindow({ windowMs: 0 })).toThrow(RangeError);
  });
});
