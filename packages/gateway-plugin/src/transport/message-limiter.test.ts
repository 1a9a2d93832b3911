import { MessageLimiter, TokenBucket } from './message-limiter';

const limits = { perBackendPerSec: 10, perBackendBurst: 5, totalPerSec: 100, totalBurst: 8 };

/** Admits `n` messages for `id` at `atMs`; returns how many got through. */
function admitted(
  l: MessageLimiter,
  id: string | undefined,
  signed: boolean,
  n: number,
  atMs: number,
): number {
  let ok = 0;
  for (let i = 0; i < n; i++) if (l.admit(id, signed, atMs) === undefined) ok++;
  return ok;
}

describe('TokenBucket', () => {
  it('gives the burst at once, then the rate, and ignores a clock going back', () => {
    const b = new TokenBucket(10, 3, 0);
    expect([b.take(0), b.take(0), b.take(0), b.take(0)]).toEqual([true, true, true, false]);
    expect(b.take(50)).toBe(false); // half a token
    expect(b.take(100)).toBe(true);
    expect(b.take(-5000)).toBe(false);
    // Refill is capped at the burst however long the pause.
    let n = 0;
    for (let i = 0; i < 10; i++) if (b.take(1_000_000)) n++;
    expect(n).toBe(3);
  });
});

describe('MessageLimiter', () => {
  it('caps all messages at the total, before anything else', () => {
    const l = new MessageLimiter(limits, 0);
    let n = 0;
    for (let i = 0; i < 100; i++) if (l.admitTotal(0)) n++;
    expect(n).toBe(8);
    expect(l.admitTotal(10)).toBe(true); // 100/s: one more token after 10 ms
  });

  it('limits each backend on its own bucket per class: unsigned floods never use the signed budget', () => {
    const l = new MessageLimiter(limits, 0);
    expect(admitted(l, 'a', false, 1000, 0)).toBe(5);
    expect(l.admit('a', false, 0)).toBe('backend');
    // The genuine, signed messages of a still have their whole burst, and b has its own.
    expect(admitted(l, 'a', true, 5, 0)).toBe(5);
    expect(admitted(l, 'b', false, 5, 0)).toBe(5);
  });

  it('puts unknown backend ids in one shared bucket per class', () => {
    const l = new MessageLimiter(limits, 0);
    expect(admitted(l, undefined, false, 100, 0)).toBe(5);
    expect(l.admit(undefined, false, 0)).toBe('unknown-backend');
    expect(admitted(l, undefined, true, 100, 0)).toBe(5);
    expect(l.admit('a', false, 0)).toBeUndefined();
  });

  it("sizes the unknown ids' signed burst for a fleet's retained registrations, not the unsigned one", () => {
    const l = new MessageLimiter(limits, 0, 60);
    expect(admitted(l, undefined, true, 100, 0)).toBe(60);
    expect(admitted(l, undefined, false, 100, 0)).toBe(5);
    // The rate is unchanged: 10/s.
    expect(admitted(l, undefined, true, 100, 100)).toBe(1);
    // Never below the per-backend burst.
    expect(admitted(new MessageLimiter(limits, 0, 2), undefined, true, 100, 0)).toBe(5);
  });

  it('refills at the configured rate', () => {
    const l = new MessageLimiter(limits, 0);
    expect(admitted(l, 'a', true, 100, 0)).toBe(5);
    // 10/s per backend: one second later, 10 more (capped by the burst of 5).
    expect(admitted(l, 'a', true, 100, 1000)).toBe(5);
    expect(admitted(l, 'a', true, 100, 1100)).toBe(1);
  });
});
