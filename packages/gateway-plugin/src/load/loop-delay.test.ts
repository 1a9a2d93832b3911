import { acquireLoopDelay, LoopDelay, releaseLoopDelay } from './loop-delay';

describe('LoopDelay', () => {
  let d: LoopDelay;
  beforeEach(() => {
    d = new LoopDelay();
  });
  afterEach(() => d.close());

  it('is the largest of the last four reads, so a stall counts for about 2 s', () => {
    expect(d.valueMs).toBe(0);
    d.record(6);
    expect(d.valueMs).toBe(6);
    for (const ms of [1, 2, 0.5]) d.record(ms);
    expect(d.valueMs).toBe(6);
    d.record(1); // the stall's read is the fifth from now: forgotten
    expect(d.valueMs).toBe(2);
  });
});

describe('acquireLoopDelay: one sampler per process', () => {
  it('is shared by its users and stops with the last release', () => {
    const a = acquireLoopDelay();
    const b = acquireLoopDelay();
    expect(b).toBe(a);
    releaseLoopDelay(a);
    const c = acquireLoopDelay();
    expect(c).toBe(a);
    releaseLoopDelay(b);
    releaseLoopDelay(c);
    const d = acquireLoopDelay();
    expect(d).not.toBe(a);
    releaseLoopDelay(d);
  });
});
