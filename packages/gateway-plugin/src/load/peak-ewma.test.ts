import { createSeededRandom } from '../strategies/seeded-random';
import { PeakEwma } from './peak-ewma';

describe('PeakEwma.relativeError (plain mode)', () => {
  it('is 0 before two samples and for samples that never vary', () => {
    const e = new PeakEwma(1_000, 10_000, false);
    expect(e.relativeError()).toBe(0);
    e.observe(0, 10);
    expect(e.relativeError()).toBe(0);
    for (let t = 1; t < 500; t++) e.observe(t * 5, 10);
    expect(e.relativeError()).toBe(0);
  });

  it('is the spread over the square root of the samples the estimate rests on', () => {
    // Exponential samples (coefficient of variation 1), 200 a second, a 1 s time constant:
    // the estimate rests on about 2 x 200 samples, so its error is about 1 / sqrt(400) = 5%.
    const random = createSeededRandom(7);
    const e = new PeakEwma(1_000, 10_000, false);
    for (let i = 0; i < 4_000; i++) e.observe(i * 5, -Math.log(1 - random()) * 10);
    expect(e.relativeError()).toBeGreaterThan(0.035);
    expect(e.relativeError()).toBeLessThan(0.07);
    // One sample after a long gap replaces most of the estimate: it rests on about one sample.
    e.observe(4_000 * 5 + 5_000, 12);
    expect(e.relativeError()).toBeGreaterThan(0.3);
  });

  it('is forgotten on reset', () => {
    const e = new PeakEwma(1_000, 10_000, false);
    e.observe(0, 10);
    e.observe(5, 30);
    expect(e.relativeError()).toBeGreaterThan(0);
    e.reset();
    e.observe(10, 10);
    expect(e.relativeError()).toBe(0);
  });
});
