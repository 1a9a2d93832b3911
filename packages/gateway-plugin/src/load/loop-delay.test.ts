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

describe('LoopDelay.delayedMs', () => {
  it('counts the stalls that can have delayed an event: ending just before it, or going on', () => {
    jest.useFakeTimers();
    const d = new LoopDelay();
    try {
      const t0 = 1_000_000;
      d.tick(t0);
      d.tick(t0 + 50);
      // On time (a few ms late at most): no stall.
      d.tick(t0 + 120);
      expect(d.delayedMs(t0, t0 + 120)).toBe(0);
      // 550 ms between two ticks of 50: the loop stood still for 500 of them, [170, 670).
      d.tick(t0 + 670);
      // An answer handled right after it: delayed by all of it within the request's time.
      expect(d.delayedMs(t0, t0 + 700)).toBe(500);
      expect(d.delayedMs(t0 + 600, t0 + 700)).toBe(70);
      expect(d.delayedMs(t0 + 680, t0 + 700)).toBe(0);
      // One handled 60 ms after it ended came after it: not delayed.
      expect(d.delayedMs(t0, t0 + 730)).toBe(0);
      // An answer handled right after a long task, before the tick that records it: the
      // time since the tick that did not come (t0 + 720) counts.
      expect(d.delayedMs(t0 + 680, t0 + 1020)).toBe(300);
      expect(d.delayedMs(t0 + 680, t0 + 760)).toBe(0);
      // Ticks on time until t0 + 2020.
      for (let at = t0 + 720; at <= t0 + 2020; at += 50) d.tick(at);
      // A stall in the middle of a 2 s wait delayed nothing (it read 1.5 s for a 2 s backend).
      expect(d.delayedMs(t0, t0 + 2000)).toBe(0);
      // Nor one just after the request started: it had been written (read 1.5 s for 2 s).
      expect(d.delayedMs(t0 + 130, t0 + 2000)).toBe(0);
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
