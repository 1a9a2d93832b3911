import { MessageLimiter, TokenBucket, registrationBurst } from './message-limiter';

const limits = { perBackendPerSec: 10, perBackendBurst: 5, totalPerSec: 100, totalBurst: 8 };

/** Admits `n` messages for `id` (signed by `keyId`) at `atMs`; returns how many got through. */
function admitted(
  l: MessageLimiter,
  id: string | undefined,
  keyId: string | undefined,
  n: number,
  atMs: number,
): number {
  let ok = 0;
  for (let i = 0; i < n; i++) if (l.admit(id, keyId, atMs) === undefined) ok++;
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
    expect(admitted(l, 'a', undefined, 1000, 0)).toBe(5);
    expect(l.admit('a', undefined, 0)).toBe('backend');
    // The genuine, signed messages of a still have their whole burst, and b has its own.
    expect(admitted(l, 'a', 'k1', 5, 0)).toBe(5);
    expect(admitted(l, 'b', undefined, 5, 0)).toBe(5);
  });

  it('puts unsigned messages of unknown backend ids in one shared bucket', () => {
    const l = new MessageLimiter(limits, 0);
    expect(admitted(l, undefined, undefined, 100, 0)).toBe(5);
    expect(l.admit(undefined, undefined, 0)).toBe('unknown-backend');
    expect(l.admit('a', undefined, 0)).toBeUndefined();
  });

  it("charges signed messages of unknown ids (registrations) to their key's bucket: one key's flood starves no other key", () => {
    const keys = [
      { keyId: 'evil', backends: ['evil'] },
      { keyId: 'good', backends: ['good'] },
    ];
    const l = new MessageLimiter(limits, 0, keys, 60);
    expect(admitted(l, undefined, 'evil', 1000, 0)).toBe(5);
    expect(l.admit(undefined, 'evil', 0)).toBe('key');
    // A flood of 1,000 a second for a second: the rate, 10/s, for that key alone.
    let evil = 0;
    for (let t = 1; t <= 1000; t++) evil += admitted(l, undefined, 'evil', 1, t);
    expect(evil).toBe(10);
    expect(admitted(l, undefined, 'good', 1, 1000)).toBe(1);
    // Unsigned messages of unknown ids have their own bucket.
    expect(admitted(l, undefined, undefined, 100, 1000)).toBe(5);
    // A key id that is not configured (none verifies) shares the fallback bucket.
    expect(admitted(l, undefined, 'other', 100, 1000)).toBe(5);
    expect(l.admit(undefined, 'other', 1000)).toBe('unknown-backend');
  });

  it("sizes a key's burst for the registrations it may sign at once, never the unsigned one's", () => {
    const keys = [
      { keyId: 'fleet' },
      { keyId: 'web', backends: ['web-*'] },
      { keyId: 'pair', backends: ['a', 'b'] },
      { keyId: 'many', backends: Array.from({ length: 8 }, (_, i) => `m${i}`) },
    ];
    const l = new MessageLimiter(limits, 0, keys, 60);
    expect(admitted(l, undefined, 'fleet', 100, 0)).toBe(60);
    expect(admitted(l, undefined, 'web', 100, 0)).toBe(60);
    // Never below the per-backend burst.
    expect(admitted(l, undefined, 'pair', 100, 0)).toBe(5);
    expect(admitted(l, undefined, 'many', 100, 0)).toBe(8);
    expect(admitted(l, undefined, undefined, 100, 0)).toBe(5);
    // The rate is unchanged: 10/s.
    expect(admitted(l, undefined, 'fleet', 100, 100)).toBe(1);
    // Discovery off: no burst beyond the per-backend one.
    expect(admitted(new MessageLimiter(limits, 0, keys), undefined, 'fleet', 100, 0)).toBe(5);
  });

  it('counts the ids a key may sign for, at most maxBackends', () => {
    expect(registrationBurst({}, 100)).toBe(100);
    expect(registrationBurst({ backends: ['*'] }, 100)).toBe(100);
    expect(registrationBurst({ backends: ['a', 'web-*'] }, 100)).toBe(100);
    expect(registrationBurst({ backends: ['a', 'b', 'a'] }, 100)).toBe(2);
    expect(registrationBurst({ backends: ['a', 'b', 'c'] }, 2)).toBe(2);
  });

  it('refills at the configured rate', () => {
    const l = new MessageLimiter(limits, 0);
    expect(admitted(l, 'a', 'k1', 100, 0)).toBe(5);
    // 10/s per backend: one second later, 10 more (capped by the burst of 5).
    expect(admitted(l, 'a', 'k1', 100, 1000)).toBe(5);
    expect(admitted(l, 'a', 'k1', 100, 1100)).toBe(1);
  });
});
