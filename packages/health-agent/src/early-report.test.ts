import { EarlyReporter, outstandingOf, type EarlyReporterOptions } from './early-report';
import type { RiseReading } from './queue/types';

/**
 * The early-report trigger and its rate limit, in fake time. The source is a
 * stand-in for the tracker's rise watch: the test decides when a rise happens.
 */
interface Watch {
  from: number;
  rise: number;
  answer(outstanding: number, rose: boolean): void;
}

function reading(outstanding: number, rose: boolean): RiseReading {
  return {
    queue: { inFlight: Math.min(outstanding, 8), queued: Math.max(0, outstanding - 8), source: {} },
    rose,
  };
}

function setup(over: Partial<EarlyReporterOptions> = {}) {
  const watches: Watch[] = [];
  const published: Array<{ atMs: number; outstanding: number | undefined }> = [];
  let last: { outstanding: number; atMs: number } | undefined = {
    outstanding: 2,
    atMs: performance.now(),
  };
  let connected = true;
  const reporter = new EarlyReporter({
    source: {
      waitForRise: (from, rise, timeoutMs, signal) =>
        new Promise<RiseReading>((resolve) => {
          const finish = (n: number, rose: boolean): void => {
            clearTimeout(timer);
            signal.removeEventListener('abort', onAbort);
            resolve(reading(n, rose));
          };
          const onAbort = (): void => finish(from, false);
          const timer = setTimeout(() => finish(from, false), timeoutMs);
          signal.addEventListener('abort', onAbort);
          watches.push({ from, rise, answer: finish });
        }),
    },
    rise: 2,
    minGapMs: 100,
    waitMs: 1000,
    retryMs: 250,
    last: () => last,
    publish: (r) => {
      if (!connected) return false;
      const outstanding = outstandingOf(r.queue);
      published.push({ atMs: performance.now(), outstanding });
      last = { outstanding: outstanding!, atMs: performance.now() };
      return true;
    },
    onError: () => undefined,
    ...over,
  });
  return {
    reporter,
    watches,
    published,
    setLast: (v: typeof last) => (last = v),
    setConnected: (v: boolean) => (connected = v),
    /** The watch the reporter holds now. */
    current: () => watches[watches.length - 1]!,
  };
}

describe('EarlyReporter', () => {
  beforeEach(() => {
    jest.useFakeTimers({ now: 1_000_000 });
  });
  afterEach(() => {
    jest.useRealTimers();
  });

  it('publishes as soon as the watch reports a rise, from the last published figure', async () => {
    const t0 = performance.now();
    const t = setup();
    t.reporter.start();
    await jest.advanceTimersByTimeAsync(100); // the gap after the last (scheduled) report
    expect(t.watches).toHaveLength(1);
    expect(t.current()).toMatchObject({ from: 2, rise: 2 });
    t.current().answer(5, true);
    await jest.advanceTimersByTimeAsync(0);
    expect(t.published).toEqual([{ atMs: t0 + 100, outstanding: 5 }]);
    await t.reporter.stop();
  });

  it('never publishes two reports closer than minGapMs, however often the rise happens', async () => {
    const t = setup();
    t.reporter.start();
    // For 2 s the backend rises again the moment a watch is set.
    for (let i = 0; i < 2000; i++) {
      const w = t.watches[t.watches.length - 1];
      w?.answer(w.from + 2, true); // a no-op on a watch already answered
      await jest.advanceTimersByTimeAsync(1);
    }
    await t.reporter.stop();
    const times = t.published.map((p) => p.atMs);
    expect(times.length).toBeGreaterThan(10);
    for (let i = 1; i < times.length; i++)
      expect(times[i]! - times[i - 1]!).toBeGreaterThanOrEqual(100);
    // At most one per gap over the span.
    expect(times.length).toBeLessThanOrEqual(2000 / 100);
  });

  it('waits out the gap after a scheduled report, then watches from its figure', async () => {
    const t = setup();
    t.setLast({ outstanding: 6, atMs: performance.now() + 40 });
    t.reporter.start();
    await jest.advanceTimersByTimeAsync(139);
    expect(t.watches).toHaveLength(0);
    await jest.advanceTimersByTimeAsync(1);
    expect(t.watches).toHaveLength(1);
    expect(t.current().from).toBe(6);
    await t.reporter.stop();
  });

  it('measures the gap on the monotonic clock: a wall clock stepped back 60 s holds nothing', async () => {
    const t = setup(); // the last report went out now, stamped with performance.now() as the agent does
    const realNow = Date.now.bind(Date);
    // An NTP step or a VM resume: Date.now() jumps back, performance.now() does not.
    const spy = jest.spyOn(Date, 'now').mockImplementation(() => realNow() - 60_000);
    try {
      t.reporter.start();
      await jest.advanceTimersByTimeAsync(99);
      expect(t.watches).toHaveLength(0);
      await jest.advanceTimersByTimeAsync(1);
      expect(t.watches).toHaveLength(1);
      t.current().answer(5, true);
      await jest.advanceTimersByTimeAsync(0);
      expect(t.published).toHaveLength(1);
      await t.reporter.stop();
    } finally {
      spy.mockRestore();
    }
  });

  it('drops a rise that no longer stands against a scheduled report sent meanwhile', async () => {
    const t = setup();
    t.reporter.start();
    await jest.advanceTimersByTimeAsync(100);
    // A scheduled report goes out with 7 outstanding while the watch (from 2) is held.
    t.setLast({ outstanding: 7, atMs: performance.now() });
    t.current().answer(5, true);
    await jest.advanceTimersByTimeAsync(0);
    expect(t.published).toHaveLength(0);
    // The next watch starts from the scheduled figure, after the gap.
    await jest.advanceTimersByTimeAsync(100);
    expect(t.current().from).toBe(7);
    await t.reporter.stop();
  });

  it('does nothing before the first published report', async () => {
    const t = setup();
    t.setLast(undefined);
    t.reporter.start();
    await jest.advanceTimersByTimeAsync(1000);
    expect(t.watches).toHaveLength(0);
    t.setLast({ outstanding: 0, atMs: performance.now() });
    await jest.advanceTimersByTimeAsync(250 + 100);
    expect(t.watches).toHaveLength(1);
    await t.reporter.stop();
  });

  it('renews a watch that ran out without a rise, and publishes nothing for it', async () => {
    const t = setup();
    t.reporter.start();
    await jest.advanceTimersByTimeAsync(100 + 1000 * 3);
    expect(t.watches.length).toBeGreaterThanOrEqual(3);
    expect(t.published).toHaveLength(0);
    await t.reporter.stop();
  });

  it('backs off after a failed watch instead of spinning', async () => {
    const errors: string[] = [];
    let calls = 0;
    const t = setup({
      source: {
        waitForRise: async () => {
          calls++;
          throw new Error('ECONNREFUSED');
        },
      },
      onError: (e) => errors.push(e.message),
    });
    t.reporter.start();
    await jest.advanceTimersByTimeAsync(100 + 1000);
    // One try at 100 ms, then one per retryMs (250 ms).
    expect(calls).toBe(5);
    expect(errors[0]).toBe('ECONNREFUSED');
    await t.reporter.stop();
  });

  it('pauses retryMs after a report that could not go out, instead of spinning on the same rise', async () => {
    const t = setup();
    t.setConnected(false);
    t.reporter.start();
    // The backend stays risen: every watch is answered at once.
    for (let i = 0; i < 1000; i++) {
      const w = t.watches[t.watches.length - 1];
      w?.answer(w.from + 2, true);
      await jest.advanceTimersByTimeAsync(1);
    }
    // One try at 100 ms, then one per retryMs (250 ms): 4 in the first second.
    expect(t.watches).toHaveLength(4);
    expect(t.published).toHaveLength(0);
    t.setConnected(true);
    await jest.advanceTimersByTimeAsync(250);
    t.current().answer(t.current().from + 2, true);
    await jest.advanceTimersByTimeAsync(0);
    expect(t.published).toHaveLength(1);
    await t.reporter.stop();
  });

  it('stop() aborts the watch it holds', async () => {
    const t = setup();
    t.reporter.start();
    await jest.advanceTimersByTimeAsync(100);
    expect(t.watches).toHaveLength(1);
    await t.reporter.stop();
    await jest.advanceTimersByTimeAsync(5000);
    expect(t.watches).toHaveLength(1);
    expect(t.published).toHaveLength(0);
  });
});

describe('outstandingOf', () => {
  it('sums in flight, queued and accept backlog; undefined without any', () => {
    expect(outstandingOf({ inFlight: 3, queued: 2, acceptBacklog: 1, source: {} })).toBe(6);
    expect(outstandingOf({ openConnections: 4, source: {} })).toBeUndefined();
    expect(outstandingOf(undefined)).toBeUndefined();
  });
});
