import { createScheduler } from './scheduler';

describe('createScheduler', () => {
  beforeEach(() => jest.useFakeTimers({ now: new Date('2026-01-01T00:00:00.000Z') }));
  afterEach(() => jest.useRealTimers());

  it('fires on interval instants plus the per-agent offset, on a timer', async () => {
    const at: number[] = [];
    const s = createScheduler({
      intervalMs: 500,
      offsetMs: 120,
      tick: async () => void at.push(Date.now() % 10_000),
    });
    expect(s.mode).toBe('timer');
    s.start();
    await jest.advanceTimersByTimeAsync(1600);
    s.stop();
    expect(at).toEqual([120, 620, 1120]);
    await jest.advanceTimersByTimeAsync(2000);
    expect(at).toHaveLength(3);
  });

  it('skips a tick while the previous one is still running (no overlap)', async () => {
    let running = 0;
    let maxRunning = 0;
    let ticks = 0;
    let skipped = 0;
    const s = createScheduler({
      intervalMs: 200,
      offsetMs: 0,
      tick: async () => {
        ticks++;
        running++;
        maxRunning = Math.max(maxRunning, running);
        await new Promise((r) => setTimeout(r, 450)); // slower than two intervals
        running--;
      },
      onSkip: () => skipped++,
    });
    s.start();
    await jest.advanceTimersByTimeAsync(2000);
    s.stop();
    expect(maxRunning).toBe(1);
    expect(ticks).toBeGreaterThanOrEqual(3);
    expect(skipped).toBeGreaterThanOrEqual(ticks); // two of every three instants are skipped
  });

  it('runs a cron expression with node-cron and delays each run by the offset', async () => {
    const at: number[] = [];
    const s = createScheduler({
      cron: '*/2 * * * * *',
      offsetMs: 300,
      tick: async () => void at.push(Date.now() % 60_000),
    });
    expect(s.mode).toBe('cron');
    expect(s.expression).toBe('*/2 * * * * *');
    s.start();
    await jest.advanceTimersByTimeAsync(6500);
    s.stop();
    expect(at).toEqual([2300, 4300, 6300]);
  });
});

describe('createScheduler with a timer that fires early', () => {
  afterEach(() => jest.useRealTimers());

  it('never runs the same instant twice when a timer fires a millisecond early by Date.now()', async () => {
    jest.useFakeTimers({ now: 0 });
    const realNow = Date.now.bind(Date);
    // At each instant Date.now() reads 1 ms early (timers run on the monotonic
    // clock, Date.now() on the wall clock, which NTP may slew).
    const spy = jest
      .spyOn(Date, 'now')
      .mockImplementation(() => (realNow() % 1000 === 0 ? realNow() - 1 : realNow()));
    const at: number[] = [];
    let skipped = 0;
    const s = createScheduler({
      intervalMs: 1000,
      offsetMs: 0,
      tick: async () => void at.push(realNow()),
      onSkip: () => skipped++,
    });
    s.start();
    await jest.advanceTimersByTimeAsync(3500);
    s.stop();
    spy.mockRestore();
    expect(skipped).toBe(0);
    expect(at).toHaveLength(4);
    for (let i = 1; i < at.length; i++) expect(at[i]! - at[i - 1]!).toBeGreaterThanOrEqual(999);
  });
});

describe('createScheduler when the wall clock steps back', () => {
  afterEach(() => jest.useRealTimers());

  it('keeps ticking every interval after the wall clock steps back 60 s', async () => {
    jest.useFakeTimers({ now: 0 });
    const realNow = Date.now.bind(Date);
    let skew = 0;
    // An NTP step or a VM resume: Date.now() jumps back; timers (monotonic) do not.
    const spy = jest.spyOn(Date, 'now').mockImplementation(() => realNow() + skew);
    const at: number[] = [];
    const s = createScheduler({
      intervalMs: 1000,
      offsetMs: 0,
      tick: async () => void at.push(realNow()),
    });
    s.start();
    await jest.advanceTimersByTimeAsync(2500);
    skew = -60_000;
    await jest.advanceTimersByTimeAsync(3000);
    s.stop();
    spy.mockRestore();
    // The tick set before the step runs at 3000; the next within two intervals of it.
    expect(at.slice(0, 3)).toEqual([1000, 2000, 3000]);
    expect(at[3]).toBeDefined();
    expect(at[3]! - 3000).toBeLessThanOrEqual(2000);
    expect(at).toEqual([1000, 2000, 3000, 4000, 5000]);
  });
});
