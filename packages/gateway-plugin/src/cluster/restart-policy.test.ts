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
    const code = (o: object) => {
      try {
        resolveRestart(o);
      } catch (e) {
        return (e as { code?: string }).code;
      }
      return undefined;
    };
    expect(code({ maxRestarts: -1 })).toBe('LW_GW_INVALID_OPTION');
    expect(code({ initialDelayMs: 2000, maxDelayMs: 1000 })).toBe('LW_GW_INVALID_OPTION');
    // Past 2^31 - 1 ms a timer fires after 1 ms: a slot would restart at once.
    expect(code({ maxDelayMs: 3e9 })).toBe('LW_GW_INVALID_OPTION');
    expect(code({ initialDelayMs: 3e9, maxDelayMs: 3e9 })).toBe('LW_GW_INVALID_OPTION');
    expect(code({ maxDelay: 10 })).toBe('LW_GW_INVALID_OPTION');
    expect(code({ windowMs: 1.5 })).toBe('LW_GW_INVALID_OPTION');
  });
});
