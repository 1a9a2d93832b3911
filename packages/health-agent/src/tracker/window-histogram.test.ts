import { BUCKETS, WindowHistogram, bucketIndex, bucketUpperMs } from './window-histogram';

describe('bucketIndex', () => {
  it('puts a value in the bucket whose upper bound is the first at or above it', () => {
    for (const ms of [0.05, 0.1, 0.11, 1, 3.7, 42, 999, 12_345]) {
      const i = bucketIndex(ms);
      expect(bucketUpperMs(i)).toBeGreaterThanOrEqual(ms * (1 - 1e-9));
      if (i > 0) expect(bucketUpperMs(i - 1)).toBeLessThan(ms);
    }
  });
  it('clamps huge values into the last bucket', () => {
    expect(bucketIndex(1e9)).toBe(BUCKETS - 1);
  });
});

describe('WindowHistogram', () => {
  it('estimates percentiles of a known distribution within 10%', () => {
    const h = new WindowHistogram(1000, 10, 0);
    // 1..1000 ms uniformly: p50 = 500, p90 = 900, p99 = 990.
    for (let ms = 1; ms <= 1000; ms++) h.record(5000, ms, false);
    const s = h.stats(5000);
    expect(s.count).toBe(1000);
    expect(s.sumMs / s.count).toBeCloseTo(500.5, 5);
    expect(Math.abs(s.p50Ms - 500) / 500).toBeLessThan(0.1);
    expect(Math.abs(s.p90Ms - 900) / 900).toBeLessThan(0.1);
    expect(Math.abs(s.p99Ms - 990) / 990).toBeLessThan(0.1);
  });

  it('never reports a percentile above the largest value seen', () => {
    const h = new WindowHistogram(1000, 10, 0);
    h.record(0, 7, false);
    const s = h.stats(0);
    expect(s.p50Ms).toBeLessThanOrEqual(7);
    expect(s.p99Ms).toBeLessThanOrEqual(7);
    expect(s.p99Ms).toBeGreaterThan(7 / 1.2);
  });

  it('forgets slots older than the window and counts errors', () => {
    const h = new WindowHistogram(1000, 10, 0);
    h.record(500, 10, true);
    h.record(9_500, 20, false);
    expect(h.stats(9_900)).toMatchObject({ count: 2, errors: 1 });
    // At 10.5 s the slot of t=0.5 s is out of the 10-slot window.
    expect(h.stats(10_500)).toMatchObject({ count: 1, errors: 0 });
    expect(h.stats(30_000)).toMatchObject({ count: 0, p99Ms: 0 });
  });

  it('reuses a slot when the clock comes round again', () => {
    const h = new WindowHistogram(1000, 10, 0);
    h.record(1_200, 10, false);
    h.record(11_200, 30, false); // same ring slot, ten seconds later
    const s = h.stats(11_300);
    expect(s.count).toBe(1);
    expect(s.sumMs).toBe(30);
  });

  it('measures the span from creation until the window is full', () => {
    const h = new WindowHistogram(1000, 10, 2_000);
    expect(h.stats(4_000).spanMs).toBe(2_000);
    expect(h.stats(60_500).spanMs).toBe(9_500);
  });
});
