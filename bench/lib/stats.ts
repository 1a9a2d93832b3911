/** Percentiles and medians over plain arrays: exact, since a run's samples are bounded. */

/** Nearest-rank percentile of an ascending array (q in 0..1); 0 for an empty array. */
export function percentile(sorted: ArrayLike<number>, q: number): number {
  if (sorted.length === 0) return 0;
  const rank = Math.min(sorted.length, Math.max(1, Math.ceil(q * sorted.length)));
  return sorted[rank - 1]!;
}

export function median(values: number[]): number {
  const finite = values.filter((v) => Number.isFinite(v)).sort((a, b) => a - b);
  if (finite.length === 0) return NaN;
  const mid = finite.length >> 1;
  return finite.length % 2 ? finite[mid]! : (finite[mid - 1]! + finite[mid]!) / 2;
}

export function round(value: number, digits = 1): number {
  const f = 10 ** digits;
  return Math.round(value * f) / f;
}

export interface LatencySummary {
  count: number;
  p50Ms: number;
  p90Ms: number;
  p99Ms: number;
  p999Ms: number;
  maxMs: number;
  meanMs: number;
}

export function summarize(latenciesMs: Float64Array | number[]): LatencySummary {
  const sorted = Float64Array.from(latenciesMs).sort();
  let sum = 0;
  for (const v of sorted) sum += v;
  return {
    count: sorted.length,
    p50Ms: round(percentile(sorted, 0.5), 2),
    p90Ms: round(percentile(sorted, 0.9), 2),
    p99Ms: round(percentile(sorted, 0.99), 2),
    p999Ms: round(percentile(sorted, 0.999), 2),
    maxMs: round(sorted.length ? sorted[sorted.length - 1]! : 0, 2),
    meanMs: round(sorted.length ? sum / sorted.length : 0, 2),
  };
}
