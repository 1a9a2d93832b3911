import { DEFAULT_RESTART, decideRestart, resolveRestart } from './restart-policy';

describe('decideRestart', () => {
  const opts = resolveRestart({
    initialDelayMs: 100,
    maxDelayMs: 1000,
    maxRestarts: 5,
    windowMs: 60_000,
  });

  it('doubles the delay with each crash of the slot in the window, up to the maximum', () => {
    let times: number[] = [];
    const delays: number[] = [];
    for (let i = 0; i < 5; i++) {
      const { decision, crashTimes } = decideRestart(times, 1000 + i, opts);
      times = crashTimes;
      delays.push(decision.restart ? decision.delayMs : -1);
    }
    expect(delays).toEqual([100, 200, 400, 800, 1000]);
  });

  it('gives the slot up after maxRestarts crashes within the window', () => {
    const times = [1, 2, 3, 4, 5];
    expect(decideRestart(times, 6, opts).decision).toEqual({ restart: false });
  });

  it('forgets crashes older than the window: a worker that stayed up starts over at the first delay', () => {
    const { decision, crashTimes } = decideRestart([1, 2, 3, 4, 5], 70_000, opts);
    expect(decision).toEqual({ restart: true, delayMs: 100 });
    expect(crashTimes).toEqual([70_000]);
  });

  it('checks its options', () => {
    expect(resolveRestart()).toEqual(DEFAULT_RESTART);
    expect(() => resolveRestart({ maxRestarts: -1 })).toThrow(RangeError);
    expect(() => resolveRestart({ initialDelayMs: 2000, maxDelayMs: 1000 })).toThrow(RangeError);
  });
});
