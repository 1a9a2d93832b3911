import { DrainRate } from './drain-rate';
import { RetryBudget } from './retry-budget';
import { WaitQueue } from './wait-queue';

describe('RetryBudget (Finagle-style)', () => {
  it('allows minRetriesPerSec × window plus ratio × requests, over a sliding window', () => {
    let nowMs = 0;
    const budget = new RetryBudget(
      { budgetRatio: 0.2, minRetriesPerSec: 0, budgetWindowMs: 10_000 },
      () => nowMs,
    );
    for (let i = 0; i < 10; i++) budget.onRequest();
    expect(budget.tryRetry()).toBe(true);
    expect(budget.tryRetry()).toBe(true);
    expect(budget.tryRetry()).toBe(false); // 20% of 10
    for (let i = 0; i < 5; i++) budget.onRequest();
    expect(budget.tryRetry()).toBe(true);
    expect(budget.tryRetry()).toBe(false);
    nowMs = 10_000; // the window slid past everything
    expect(budget.tryRetry()).toBe(false);
    for (let i = 0; i < 5; i++) budget.onRequest();
    expect(budget.tryRetry()).toBe(true);
  });

  it('refund() gives back a retry that never happened', () => {
    const budget = new RetryBudget(
      { budgetRatio: 0, minRetriesPerSec: 1, budgetWindowMs: 2000 },
      () => 0,
    );
    expect(budget.tryRetry()).toBe(true);
    budget.refund();
    expect(budget.tryRetry()).toBe(true);
    expect(budget.tryRetry()).toBe(true);
    expect(budget.tryRetry()).toBe(false);
  });

  it('refund() gives the retry back to the second it was spent in', () => {
    let nowMs = 10_999;
    const budget = new RetryBudget(
      { budgetRatio: 0, minRetriesPerSec: 0.5, budgetWindowMs: 2000 },
      () => nowMs,
    );
    expect(budget.tryRetry()).toBe(true);
    // The pick crossed into the next second before the retry found nothing to go to.
    nowMs = 11_000;
    budget.refund();
    expect(budget.tryRetry()).toBe(true);
    expect(budget.tryRetry()).toBe(false);
  });

  it('always allows the per-second floor', () => {
    const budget = new RetryBudget(
      { budgetRatio: 0, minRetriesPerSec: 1, budgetWindowMs: 2000 },
      () => 0,
    );
    expect(budget.tryRetry()).toBe(true);
    expect(budget.tryRetry()).toBe(true);
    expect(budget.tryRetry()).toBe(false);
  });
});

describe('WaitQueue', () => {
  beforeEach(() => jest.useFakeTimers());
  afterEach(() => jest.useRealTimers());

  it('is bounded in length, FIFO, and expires waiters after the timeout', () => {
    const q = new WaitQueue(2, 1000);
    const log: string[] = [];
    let free = 0;
    const go = (name: string) => () => {
      if (free === 0) return false;
      free--;
      log.push(`go ${name}`);
      return true;
    };
    const expire = (name: string) => () => log.push(`expired ${name}`);
    expect(q.enqueue(go('a'), expire('a'))).toBeDefined();
    jest.advanceTimersByTime(500);
    expect(q.enqueue(go('b'), expire('b'))).toBeDefined();
    expect(q.enqueue(go('c'), expire('c'))).toBeUndefined();
    expect(q.length).toBe(2);
    free = 1;
    q.drain();
    expect(log).toEqual(['go a']);
    expect(q.length).toBe(1);
    q.drain(); // no slot: b keeps waiting
    jest.advanceTimersByTime(999);
    expect(log).toEqual(['go a']);
    jest.advanceTimersByTime(1);
    expect(log).toEqual(['go a', 'expired b']);
    expect(q.length).toBe(0);
  });

  it('cancels a waiter whose client left, and expires all on close', () => {
    const q = new WaitQueue(10, 1000);
    const log: string[] = [];
    const w = q.enqueue(
      () => true,
      () => log.push('x'),
    )!;
    q.enqueue(
      () => false,
      () => log.push('y'),
    );
    q.cancel(w);
    expect(q.length).toBe(1);
    q.close();
    expect(log).toEqual(['y']);
    expect(q.length).toBe(0);
    expect(jest.getTimerCount()).toBe(0);
  });
});

describe('WaitQueue, what a finished waiter holds', () => {
  beforeEach(() => jest.useFakeTimers());
  afterEach(() => jest.useRealTimers());

  it('lets go of waiters that expired or were cancelled, with no drain after them', () => {
    const q = new WaitQueue(100, 1000);
    // A saturated spell: nothing frees a slot, so nothing drains; clients leave or time out.
    const waiters = Array.from({ length: 50 }, () =>
      q.enqueue(
        () => false,
        () => undefined,
      ),
    );
    for (const w of waiters.slice(0, 30)) q.cancel(w!);
    expect(q.length).toBe(20);
    jest.advanceTimersByTime(1000);
    expect(q.length).toBe(0);
    // Before: all 50 stayed in the array, each holding its request's closures, until the
    // next saturated spell drained the queue.
    expect(q.retained).toBe(0);
    // And a finished waiter holds none of its closures or its timer.
    const w = waiters[0]!;
    expect(w.timer).toBeUndefined();
    expect(w.retry()).toBe(false);
  });

  it('keeps the live waiters behind a finished one, in order', () => {
    const q = new WaitQueue(10, 1000);
    const log: string[] = [];
    const a = q.enqueue(
      () => true,
      () => log.push('expired a'),
    )!;
    q.enqueue(
      () => (log.push('go b'), true),
      () => log.push('expired b'),
    );
    q.cancel(a);
    expect(q.retained).toBe(2);
    q.drain();
    expect(log).toEqual(['go b']);
    expect(q.retained).toBe(0);
    expect(jest.getTimerCount()).toBe(0);
  });
});

describe('DrainRate', () => {
  it('derives Retry-After from completions per second', () => {
    let nowMs = 0;
    const rate = new DrainRate(() => nowMs, 5);
    expect(rate.retryAfterSec(10, 3)).toBe(3); // nothing completes: the fallback
    for (let i = 0; i < 50; i++) rate.onCompletion(); // 50 in 5 s = 10/s
    expect(rate.perSecond()).toBe(10);
    expect(rate.retryAfterSec(39, 3)).toBe(4); // 40 ahead at 10/s
    expect(rate.retryAfterSec(0, 3)).toBe(1);
    expect(rate.retryAfterSec(10_000, 3)).toBe(60);
    nowMs = 5000;
    expect(rate.perSecond()).toBe(0);
  });
});
