import { MessageLimiter, TokenBucket } from './message-limiter';

const limits = { perBackendPerSec: 10, perBackendBurst: 5, totalPerSec: 100, totalBurst: 8 };

/** Admits `n` messages for `id` at `atMs`; returns how many got through. */
function admitted(l: MessageLimiter, id: string | undefined, n: number, atMs: number): number {
  let ok = 0;
  for (let i = 0; i < n; i++) if (l.admit(id, atMs) === undefined) ok++;
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
  it('limits each backend on its own bucket and never lets one backend drain the shared one', () => {
    const l = new MessageLimiter(limits, 0);
    // A flood on a's topics: a's burst (5) passes, the rest is refused as a's.
    expect(admitted(l, 'a', 1000, 0)).toBe(5);
    expect(l.admit('a', 0)).toBe('backend');
    // b is unaffected: the refused messages of a never touched the total bucket (8 - 5 = 3 left).
    expect(admitted(l, 'b', 3, 0)).toBe(3);
    // Now the total is spent: c's first message is refused by it.
    expect(l.admit('c', 0)).toBe('total');
  });

  it('puts unknown backend ids in one shared bucket', () => {
    const l = new MessageLimiter(limits, 0);
    expect(admitted(l, undefined, 100, 0)).toBe(5);
    expect(l.admit(undefined, 0)).toBe('unknown-backend');
    expect(l.admit('a', 0)).toBeUndefined();
  });

  it('refills at the configured rate', () => {
    const l = new MessageLimiter(limits, 0);
    expect(admitted(l, 'a', 100, 0)).toBe(5);
    // 10/s per backend: one second later, 10 more (capped by the burst of 5).
    expect(admitted(l, 'a', 100, 1000)).toBe(5);
    expect(admitted(l, 'a', 100, 1100)).toBe(1);
  });
});
