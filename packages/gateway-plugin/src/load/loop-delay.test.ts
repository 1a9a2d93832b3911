import { acquireLoopDelay, LoopDelay, releaseLoopDelay } from './loop-delay';

describe('LoopDelay', () => {
  let d: LoopDelay;
  beforeEach(() => {
    d = new LoopDelay();
  });
  afterEach(() => d.close());

  it('is the largest of the last four reads, so a stall counts for about 2 s', () => {
    expect(d.valueMs).toBe(0);
    d.record(6);
    expect(d.valueMs).toBe(6);
    for (const ms of [1, 2, 0.5]) d.record(ms);
    expect(d.valueMs).toBe(6);
    d.record(1); // the stall's read is the fifth from now: forgotten
    expect(d.valueMs).toBe(2);
  });
});

describe('LoopDelay.stalledMs', () => {
  it("says how long of a request's time the loop stood still, a stall not yet ticked too", () => {
    jest.useFakeTimers();
    const d = new LoopDelay();
    try {
      const t0 = 1_000_000;
      d.tick(t0);
      d.tick(t0 + 50);
      // On time (a few ms late at most): no stall.
      d.tick(t0 + 120);
      expect(d.stalledMs(t0, t0 + 120)).toBe(0);
      // 550 ms between two ticks of 50: the loop stood still for 500 of them.
      d.tick(t0 + 670);
      expect(d.stalledMs(t0, t0 + 700)).toBe(500);
      // Only the part within the request's time.
      expect(d.stalledMs(t0 + 600, t0 + 700)).toBe(70);
      expect(d.stalledMs(t0 + 680, t0 + 700)).toBe(0);
      // A response handled right after a long task, before the tick that records it: the
      // time since the tick that did not come (t0 + 720) counts.
      expect(d.stalledMs(t0 + 680, t0 + 1020)).toBe(300);
      expect(d.stalledMs(t0 + 680, t0 + 760)).toBe(0);
    } finally {
      d.close();
      jest.useRealTimers();
    }
  });
});

describe('acquireLoopDelay: one sampler per process', () => {
  it('is shared by its users and stops with the last release', () => {
    const a = acquireLoopDelay();
    const b = acquireLoopDelay();
    expect(b).toBe(a);
    releaseLoopDelay(a);
    const c = acquireLoopDelay();
    expect(c).toBe(a);
    releaseLoopDelay(b);
    releaseLoopDelay(c);
    const d = acquireLoopDelay();
    expect(d).not.toBe(a);
    releaseLoopDelay(d);
  });
});
