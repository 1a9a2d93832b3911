import { BodyClock, type BodyMinRate } from './body-clock';

const KESTREL: BodyMinRate = { bytesPerSec: 240, graceMs: 5_000 };

function clock(idleMs: number | undefined, minRate: BodyMinRate | undefined) {
  const expired: Array<[atMs: number, detail: string]> = [];
  const t0 = Date.now();
  const c = new BodyClock(
    idleMs,
    minRate,
    () => Date.now(),
    (detail) => expired.push([Date.now() - t0, detail]),
  );
  return { c, expired };
}

/** Sends `bytes` every `everyMs`, `times` times, advancing the fake clock between them. */
function trickle(c: BodyClock, bytes: number, everyMs: number, times: number): void {
  for (let i = 0; i < times; i++) {
    jest.advanceTimersByTime(everyMs);
    c.reading(bytes);
  }
}

/** A clock whose `now()` runs `busy.ms` ahead of the timers: the loop was busy that long. */
function busyClock(idleMs: number) {
  const expired: number[] = [];
  const busy = { ms: 0 };
  const t0 = Date.now();
  const c = new BodyClock(
    idleMs,
    undefined,
    () => Date.now() + busy.ms,
    () => expired.push(Date.now() + busy.ms - t0),
  );
  return { c, expired, busy };
}

beforeEach(() => jest.useFakeTimers());
afterEach(() => {
  expect(jest.getTimerCount()).toBe(0);
  jest.useRealTimers();
});

describe('BodyClock', () => {
  it('decides nothing on a firing late behind a busy loop: bytes read in the same turn count', () => {
    const { c, expired, busy } = busyClock(400);
    c.reading(0);
    // The loop busy for 600 ms as the silence runs out: the timer fires first, before the
    // socket is read. Before, it cut the body at once (408) though a byte had come.
    busy.ms = 600;
    jest.advanceTimersByTime(400);
    expect(expired).toEqual([]);
    c.reading(1); // the byte the busy loop had left unread
    jest.advanceTimersByTime(399);
    expect(expired).toEqual([]);
    // Silent from then on: cut a whole clientBodyTimeoutMs after that byte.
    jest.advanceTimersByTime(1);
    expect(expired).toEqual([1_400]);
  });

  it('decides on the second of two late firings in a row: a loop kept busy does not save a silent body', () => {
    const { c, expired, busy } = busyClock(400);
    c.reading(0);
    busy.ms = 600;
    jest.advanceTimersByTime(400);
    expect(expired).toEqual([]);
    busy.ms = 1200; // late again
    jest.advanceTimersByTime(1);
    expect(expired).toHaveLength(1);
  });

  it('forgets a deferral across a pause: the next busy spell defers again', () => {
    const { c, expired, busy } = busyClock(400);
    c.reading(0);
    busy.ms = 600;
    jest.advanceTimersByTime(400); // late: deferred, a 1 ms timer armed
    // Backpressure in the same turn clears that timer; the upload resumes later.
    c.paused(10);
    c.reading(0);
    // Another busy spell as the silence runs out. Before, the deferral left over made this
    // late firing decide at once, on bytes still unread.
    busy.ms = 1_600;
    jest.advanceTimersByTime(400);
    expect(expired).toEqual([]);
    c.reading(1);
    c.paused(0);
  });

  it('after a late firing with nothing read, cuts on the next firing', () => {
    const { c, expired, busy } = busyClock(400);
    c.reading(0);
    busy.ms = 600;
    jest.advanceTimersByTime(400);
    expect(expired).toEqual([]);
    jest.advanceTimersByTime(1);
    expect(expired).toHaveLength(1);
  });

  it('cuts one byte every 9.9 s at the end of the grace, though it never trips a 10 s silence', () => {
    const { c, expired } = clock(10_000, KESTREL);
    c.reading(0);
    c.reading(1);
    trickle(c, 1, 9_900, 1);
    expect(expired).toEqual([
      [5_000, '1 body bytes in 5000 ms (0.2 B/s), under clientBodyMinRate 240 B/s'],
    ]);
    // Expired once: what still comes changes nothing, and no timer is left.
    trickle(c, 1, 9_900, 3);
    expect(expired).toHaveLength(1);
  });

  it('cuts a trickle spaced under the check on its first chunk past the grace', () => {
    const { c, expired } = clock(10_000, KESTREL);
    c.reading(0);
    trickle(c, 1, 700, 7); // 4.9 s: still in the grace
    expect(expired).toEqual([]);
    trickle(c, 1, 700, 1);
    expect(expired).toEqual([
      [5_600, '8 body bytes in 5600 ms (1.4 B/s), under clientBodyMinRate 240 B/s'],
    ]);
  });

  it('cuts a body that falls under the rate later, within a check of its falling', () => {
    const { c, expired } = clock(undefined, KESTREL);
    c.reading(0);
    c.reading(2_400); // 240 B/s on average until 10 s
    jest.advanceTimersByTime(9_999);
    expect(expired).toEqual([]);
    jest.advanceTimersByTime(1_001);
    expect(expired).toEqual([[11_000, expect.stringContaining('2400 body bytes in 11000 ms')]]);
  });

  it('never cuts a body at the rate, and still times its silence exactly', () => {
    const { c, expired } = clock(10_000, KESTREL);
    c.reading(0);
    trickle(c, 300, 1_000, 120);
    expect(expired).toEqual([]);
    jest.advanceTimersByTime(9_999); // 36,000 bytes in 130 s: above 240 B/s still
    expect(expired).toEqual([]);
    jest.advanceTimersByTime(1);
    expect(expired).toEqual([[130_000, 'no body bytes for 10000 ms']]);
  });

  it('once the backend answered, only the silence counts', () => {
    const { c, expired } = clock(10_000, KESTREL);
    c.reading(0);
    c.answered(); // a full-duplex stream: its client talks at its own pace
    trickle(c, 20, 1_000, 20); // 20 B/s for 20 s, under 240 B/s
    expect(expired).toEqual([]);
    jest.advanceTimersByTime(10_000);
    expect(expired).toEqual([[30_000, 'no body bytes for 10000 ms']]);
  });

  it('does not count the time the gateway is not reading (backpressure)', () => {
    const { c, expired } = clock(10_000, KESTREL);
    c.reading(0);
    c.reading(1_000);
    c.paused(64); // the backend takes nothing for a minute: no timer runs meanwhile
    expect(jest.getTimerCount()).toBe(0);
    jest.advanceTimersByTime(60_000);
    c.reading(0); // drained: reading again
    trickle(c, 250, 1_000, 30); // 8,564 bytes in 30 s read: 285 B/s
    c.paused(); // the body is in
    expect(expired).toEqual([]);
    // The same bytes with the minute counted (95 B/s): cut as soon as it is checked.
    const counted = clock(10_000, KESTREL);
    counted.c.reading(0);
    counted.c.reading(1_064);
    jest.advanceTimersByTime(60_000);
    expect(counted.expired).toEqual([
      [5_000, expect.stringContaining('1064 body bytes in 5000 ms')],
    ]);
  });

  it('with the rate off, is the plain silence timeout: one timer of clientBodyTimeoutMs', () => {
    const { c, expired } = clock(10_000, undefined);
    c.reading(0);
    trickle(c, 1, 9_900, 20); // one byte every 9.9 s, forever
    expect(expired).toEqual([]);
    expect(jest.getTimerCount()).toBe(1);
    jest.advanceTimersByTime(10_000);
    expect(expired).toEqual([[208_000, 'no body bytes for 10000 ms']]);
  });

  it('with the silence off, cuts a silent body at the end of the grace', () => {
    const { c, expired } = clock(undefined, { bytesPerSec: 1, graceMs: 2_500 });
    c.reading(0);
    jest.advanceTimersByTime(2_999);
    expect(expired).toEqual([]);
    jest.advanceTimersByTime(1);
    expect(expired).toEqual([
      [3_000, '0 body bytes in 3000 ms (0.0 B/s), under clientBodyMinRate 1 B/s'],
    ]);
  });

  it('times a silence shorter than the check exactly', () => {
    const { c, expired } = clock(300, KESTREL);
    c.reading(0);
    trickle(c, 500, 250, 4);
    jest.advanceTimersByTime(300);
    expect(expired).toEqual([[1_300, 'no body bytes for 300 ms']]);
  });

  it('needs no clock with both off', () => {
    expect(BodyClock.needed(undefined, undefined)).toBe(false);
    expect(BodyClock.needed(1, undefined)).toBe(true);
    expect(BodyClock.needed(undefined, KESTREL)).toBe(true);
  });
});
