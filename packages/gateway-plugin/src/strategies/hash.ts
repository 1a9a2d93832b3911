/**
 * 32-bit string hash for the consistent-hash ring: FNV-1a over UTF-16 code
 * units, then MurmurHash3's fmix32 finalizer so that keys differing in one
 * character (`user-1`, `user-2`, or vnode labels `b1#0`, `b1#1`) land far apart
 * on the ring (FNV-1a alone avalanches poorly in its high bits).
 */
export function hash32(s: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < s.length; i++) {
    h ^= s.charCodeAt(i);
    h = Math.imul(h, 0x01000193);
  }
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  h ^= h >>> 16;
  return h >>> 0;
}
