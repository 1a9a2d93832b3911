import { createLoadCohort, joinCohort, RATIO_REFRESH_MS } from './cohort';
import { PeakEwma } from './peak-ewma';

describe('createLoadCohort', () => {
  it('keeps running means of the members that have a figure, and forgets members that leave', () => {
    const cohort = createLoadCohort();
    const a = joinCohort(cohort)!;
    const b = joinCohort(cohort)!;
    const c = joinCohort(cohort)!;
    expect(cohort.meanServiceTimeMs()).toBeUndefined();
    a.set(10, 4);
    b.set(30, undefined);
    c.set(undefined, 8);
    expect([cohort.meanServiceTimeMs(), cohort.meanCapacity(), cohort.size]).toEqual([20, 6, 2]);
    expect(a.othersMeanCapacity()).toBe(8);
    expect(b.othersMeanCapacity()).toBe(6);
    a.set(20, 4); // an update replaces, it does not add
    expect(cohort.meanServiceTimeMs()).toBe(25);
    a.leave();
    a.set(1000, 1000); // ignored after leaving
    expect([cohort.meanServiceTimeMs(), cohort.meanCapacity()]).toEqual([30, 8]);
    b.leave();
    c.leave();
    expect([cohort.meanServiceTimeMs(), cohort.meanCapacity(), cohort.size]).toEqual([
      undefined,
      undefined,
      0,
    ]);
  });

  it('hidden ratio: a median refreshed from write paths at most every RATIO_REFRESH_MS; reading it changes nothing', () => {
    const cohort = createLoadCohort();
    const [a, b, c] = [joinCohort(cohort)!, joinCohort(cohort)!, joinCohort(cohort)!];
    a.setFlow(2, 1);
    b.setFlow(2, 1);
    c.setFlow(12, 1); // a batch job on one backend does not move the median
    expect(a.hiddenRatio()).toBe(0); // nothing refreshed yet, however often it is read
    a.refreshRatio(0);
    expect([a.hiddenRatio(), b.hiddenRatio()]).toEqual([2, 2]);
    b.setFlow(6, 1);
    c.refreshRatio(RATIO_REFRESH_MS - 1); // too soon
    expect(a.hiddenRatio()).toBe(2);
    c.refreshRatio(RATIO_REFRESH_MS);
    expect(a.hiddenRatio()).toBe(6);
  });

  it('joins only cohorts it made', () => {
    expect(joinCohort(undefined)).toBeUndefined();
    expect(
      joinCohort({ size: 0, meanCapacity: () => 1, meanServiceTimeMs: () => 1 }),
    ).toBeUndefined();
  });
});

describe('PeakEwma', () => {
  it('blends a lower sample by the time since the last one (unevenly spaced series)', () => {
    const e = new PeakEwma(1000, 10_000);
    e.observe(0, 100);
    e.observe(1000, 0);
    // w = exp(-1): 100 × e⁻¹ + 0 × (1 − e⁻¹)
    expect(e.valueMs(1000)).toBeCloseTo(100 / Math.E, 9);
    // Two samples at the same instant: the second one has no weight yet (w = 1).
    e.observe(1000, 0);
    expect(e.valueMs(1000)).toBeCloseTo(100 / Math.E, 9);
  });

  it('windowed minimum: forgets a minimum after one to two windows', () => {
    const e = new PeakEwma(1000, 100);
    e.observe(0, 5);
    e.observe(50, 20);
    expect(e.minMs()).toBe(5);
    e.observe(120, 30); // new window; the previous one (min 5) still counts
    expect(e.minMs()).toBe(5);
    e.observe(230, 40); // two windows on: 5 is gone, 30 from the previous window remains
    expect(e.minMs()).toBe(30);
    e.observe(1000, 50); // long silence: everything older is gone
    expect(e.minMs()).toBe(50);
  });

  it('reports nothing before the first sample', () => {
    const e = new PeakEwma(1000, 100);
    expect([e.valueMs(0), e.minMs(), e.lastSampleMs, e.count]).toEqual([
      undefined,
      undefined,
      undefined,
      0,
    ]);
  });
});
