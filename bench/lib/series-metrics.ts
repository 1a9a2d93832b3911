/** Figures derived from a run's time series (shares per window). */
import type { SeriesWindow } from '../procs/loadgen';

function share(w: SeriesWindow, id: string): number {
  const total = Object.values(w.counts).reduce((a, b) => a + b, 0);
  return total ? (w.counts[id] ?? 0) / total : 0;
}

function mean(xs: number[]): number {
  return xs.length ? xs.reduce((a, b) => a + b, 0) / xs.length : NaN;
}

/**
 * Scenario 3: how fast traffic leaves a backend that degrades at `degradeAtMs`
 * and returns after it recovers at `recoverAtMs`. "Away" = its share first
 * falls to half its share before the degradation; "back" = it first regains
 * 80% of that share. Times are to the end of the window where that happens, so
 * they are upper bounds at the window's resolution.
 */
export function shiftTimes(
  series: SeriesWindow[],
  id: string,
  degradeAtMs: number,
  recoverAtMs: number,
  windowMs: number,
): Record<string, number> {
  const before = mean(
    series.filter((w) => w.tMs + windowMs <= degradeAtMs).map((w) => share(w, id)),
  );
  const away = series.find(
    (w) => w.tMs >= degradeAtMs && w.tMs < recoverAtMs && share(w, id) <= before / 2,
  );
  const during = mean(
    series
      .filter((w) => w.tMs >= degradeAtMs && w.tMs + windowMs <= recoverAtMs)
      .map((w) => share(w, id)),
  );
  const back = series.find((w) => w.tMs >= recoverAtMs && share(w, id) >= before * 0.8);
  return {
    shareBefore: before,
    shareDegraded: during,
    shiftAwayMs: away ? away.tMs + windowMs - degradeAtMs : NaN,
    shiftBackMs: back ? back.tMs + windowMs - recoverAtMs : NaN,
  };
}

/** Scenario 5: the largest share any backend took in any window, as a multiple of its fair share. */
export function maxWindowShareVsFair(
  series: SeriesWindow[],
  ids: string[],
): Record<string, number> {
  let max = 0;
  for (const w of series) {
    const total = Object.values(w.counts).reduce((a, b) => a + b, 0);
    if (total < 20) continue; // a nearly empty trailing window says nothing about herding
    for (const id of ids) max = Math.max(max, share(w, id) * ids.length);
  }
  return { maxWindowShareVsFair: max };
}
