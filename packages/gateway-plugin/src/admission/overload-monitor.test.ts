import { OverloadMonitor, type OverloadConfig } from './overload-monitor';

/** Blocks the event loop for `ms`: what a melting gateway looks like. */
function stall(ms: number): void {
  const until = performance.now() + ms;
  while (performance.now() < until) {
    /* busy */
  }
}

/** Resolves with the monitor's first change, or undefined once `boundMs` pass without one. */
function firstChange(
  make: (onChange: (over: boolean, delayMs: number) => void) => OverloadMonitor,
  boundMs: number,
): { monitor: OverloadMonitor; change: Promise<{ over: boolean; delayMs: number } | undefined> } {
  let settle!: (v: { over: boolean; delayMs: number } | undefined) => void;
  const change = new Promise<{ over: boolean; delayMs: number } | undefined>((r) => (settle = r));
  const monitor = make((over, delayMs) => settle({ over, delayMs }));
  const bound = setTimeout(() => settle(undefined), boundMs);
  void change.then(() => clearTimeout(bound));
  return { monitor, change };
}

/**
 * A monitor on a clock of its own, under fake timers: `stall(ms)` is time passing with no
 * timer run; `changes` are its [overloaded, delay] calls, `kinds()` the first of each.
 */
function onOwnClock(config: OverloadConfig) {
  let offsetMs = 0;
  const changes: Array<[boolean, number]> = [];
  const monitor = new OverloadMonitor(
    config,
    (o, d) => changes.push([o, d]),
    () => performance.now() + offsetMs,
  );
  return {
    monitor,
    changes,
    kinds: (): boolean[] => changes.map((c) => c[0]),
    stall: (ms: number): void => void (offsetMs += ms),
  };
}

describe('OverloadMonitor', () => {
  it('sees a stall that starts right after it starts (before its probe first runs)', async () => {
    // 350 ms is less than the window plus the limit: the window's own lateness (50 ms)
    // misses it, and perf_hooks' histogram, just enabled, records nothing for it.
    const { monitor, change } = firstChange(
      (onChange) =>
        new OverloadMonitor({ maxEventLoopDelayMs: 100, sampleIntervalMs: 300 }, onChange),
      3_000,
    );
    try {
      stall(350);
      const seen = await change;
      expect(seen?.over).toBe(true);
      expect(seen!.delayMs).toBeGreaterThan(300);
      expect(monitor.retryAfterSec()).toBe(1);
    } finally {
      monitor.close();
    }
  });

  describe('with a clock of its own (a stall is time passing with no timer run)', () => {
    let rig: ReturnType<typeof onOwnClock>;
    beforeEach(() => {
      jest.useFakeTimers();
      rig = onOwnClock({ maxEventLoopDelayMs: 100, sampleIntervalMs: 200 });
    });
    afterEach(() => {
      rig.monitor.close();
      jest.useRealTimers();
    });

    it('a stall the probe runs after first is counted in that window only', () => {
      jest.advanceTimersByTime(200);
      expect(rig.kinds()).toEqual([]);
      rig.stall(250); // the stall, right after the sample
      jest.advanceTimersByTime(200);
      expect(rig.kinds()).toEqual([true]);
      expect(rig.monitor.eventLoopDelayMs).toBeCloseTo(250, -1);
      expect(rig.monitor.retryAfterSec()).toBe(1);
      jest.advanceTimersByTime(200);
      expect(rig.kinds()).toEqual([true, false]);
    });

    it('a stall the sample runs after first (both due) is counted there, and not again', () => {
      jest.advanceTimersByTime(195);
      rig.stall(250);
      rig.monitor.sample(); // due with the probe; this time it runs first
      expect(rig.kinds()).toEqual([true]);
      expect(rig.monitor.eventLoopDelayMs).toBeCloseTo(245, -1);
      // The probe's next run measures from that sample: the next window is calm.
      jest.advanceTimersByTime(200);
      expect(rig.kinds()).toEqual([true, false]);
    });

    it('a sustained delay keeps it overloaded; retryAfterSec follows the delay', () => {
      for (let i = 0; i < 4; i++) {
        rig.stall(1_600);
        jest.advanceTimersByTime(200);
      }
      expect(rig.kinds()).toEqual([true]);
      expect(rig.monitor.retryAfterSec()).toBe(2);
    });
  });

  describe('in a window of a second or more (hundreds of probe runs)', () => {
    let rig: ReturnType<typeof onOwnClock>;
    beforeEach(() => {
      jest.useFakeTimers();
      rig = onOwnClock({ maxEventLoopDelayMs: 500, sampleIntervalMs: 2_000 });
    });
    afterEach(() => {
      rig.monitor.close();
      jest.useRealTimers();
    });

    it("a stall the probe runs after first, at the window's end, is seen", () => {
      // By count it was one delay of 199: outside the p99, and the sample that followed
      // had nothing pending. The old monitor's own lateness caught this one.
      jest.advanceTimersByTime(1_985);
      rig.stall(1_500);
      jest.advanceTimersByTime(15);
      expect(rig.changes).toHaveLength(1);
      expect(rig.changes[0]![0]).toBe(true);
      expect(rig.changes[0]![1]).toBeCloseTo(1_500, -1);
      expect(rig.monitor.retryAfterSec()).toBe(2);
    });

    it('a stall in the middle of the window is seen (40% of its time)', () => {
      jest.advanceTimersByTime(1_000);
      rig.stall(1_000);
      jest.advanceTimersByTime(1_000);
      expect(rig.kinds()).toEqual([true]);
      expect(rig.changes[0]![1]).toBeCloseTo(1_000, -1);
      jest.advanceTimersByTime(2_000);
      expect(rig.kinds()).toEqual([true, false]);
    });

    it('the same stall counts the same whichever timer runs after it first', () => {
      jest.advanceTimersByTime(1_995);
      rig.stall(1_500);
      rig.monitor.sample(); // due with the probe; this time it runs first
      expect(rig.kinds()).toEqual([true]);
      expect(rig.changes[0]![1]).toBeCloseTo(1_495, 0);
    });

    it("a blip under 1% of the window's time is not its p99", () => {
      jest.advanceTimersByTime(1_000);
      rig.stall(5); // one probe interval of 15 ms in 2 s
      jest.advanceTimersByTime(1_000);
      jest.advanceTimersByTime(0);
      expect(rig.monitor.eventLoopDelayMs).toBeLessThan(1);
    });
  });

  it('forgets what it measured: calm until the next sample says otherwise', () => {
    const changes: boolean[] = [];
    const monitor = new OverloadMonitor(
      { maxEventLoopDelayMs: 100, sampleIntervalMs: 10_000 },
      (o) => changes.push(o),
    );
    try {
      monitor.sample(500);
      expect(monitor.overloaded).toBe(true);
      expect(monitor.retryAfterSec()).toBe(1);
      monitor.forget();
      expect(monitor.overloaded).toBe(false);
      expect(changes).toEqual([true, false]);
    } finally {
      monitor.close();
    }
  });
});
