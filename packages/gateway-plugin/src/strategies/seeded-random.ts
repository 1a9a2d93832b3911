/**
 * A small seeded PRNG (mulberry32, Tommy Ettinger's public-domain generator)
 * for deterministic tests and benchmarks: strategies take `random` as an
 * option (tower's p2c takes its rng the same way), and a test that states an
 * expected ratio must see the same sequence every run.
 */
export function createSeededRandom(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}
