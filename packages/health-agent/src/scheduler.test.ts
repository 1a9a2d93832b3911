import { createScheduler, cronExpressionForInterval } from './scheduler';

describe('cronExpressionForInterval', () => {
  it.each([
    [1000, '* * * * * *'],
    [5000, '*/5 * * * * *'],
    [30000, '*/30 * * * * *'],
    [500, undefined],
    [7000, undefined],
    [1500, undefined],
    [120000, undefined],
  ])('%i ms → %s', (ms, expr) => {
    expect(cronExpressionForInterval(ms)).toBe(expr);
  });
});

describe('createScheduler', () => {
  beforeEach(() => jest.useFakeTimers({ now: new Date('2026-01-01T00:00:00.000Z') }));
  afterEach(() => jest.useRealTimers());

  it('fires on interval instants plus the per-agent offset, on a timer when cron cannot express it', async () => {
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

  it('uses node-cron for whole-second intervals and delays each run by the offset', async () => {
    const at: number[] = [];
    const s = createScheduler({
      intervalMs: 2000,
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
