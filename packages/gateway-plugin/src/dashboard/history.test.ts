/**
 * The chart history's columns (history.ts): a point comes back as it went
 * in, and however many backends the points name, at most `maxSeries` of them
 * have columns.
 */
import type { Point, PointBackend } from './frame';
import { History } from './history';

function point(t: number, ids: string[], extra: Partial<Point> = {}): Point {
  const backends: Record<string, PointBackend> = {};
  for (const [k, id] of ids.entries()) backends[id] = [0.25, 1.5, null, 0.125, null, k];
  return {
    t,
    eventLoopDelayMs: 2.5,
    queue: 1,
    inFlight: 3,
    shed: 4,
    retries: 5,
    backends,
    ...extra,
  };
}

const range = (n: number, prefix = 'b'): string[] =>
  Array.from({ length: n }, (_, i) => `${prefix}${i}`);

it('gives back the points it was given, nulls and gap markers included, the newest capacity of them', () => {
  const h = new History(3, 10);
  const given = [
    point(1000, ['a', 'b']),
    point(2000, ['a'], { eventLoopDelayMs: null }),
    point(3000, ['b'], { gap: true }),
    point(4000, ['a', 'b']),
  ];
  for (const p of given) h.push(p);
  expect(h.length).toBe(3);
  expect([h.firstSeq, h.endSeq]).toEqual([1, 4]);
  expect(h.points(0, 4)).toEqual(given.slice(1));
  expect(h.last()).toEqual(given[3]);
  expect(h.lastT).toBe(4000);
});

it('keeps columns for at most maxSeries backends, however many a point names', () => {
  const h = new History(5, 100);
  for (let t = 0; t < 5; t++) h.push(point(t, range(3000)));
  expect(h.seriesCount).toBe(100);
  expect(Object.keys(h.last()!.backends)).toHaveLength(100);
});

it('gives a new backend the columns of the one written least recently, without its values', () => {
  const h = new History(4, 2);
  h.push(point(0, ['a', 'b']));
  h.push(point(1, ['a']));
  // No room: c takes b's columns (b's newest point is older than a's).
  h.push(point(2, ['a', 'c']));
  expect(h.seriesCount).toBe(2);
  const [p0, p1, p2] = h.points(0, 3);
  expect(Object.keys(p0!.backends)).toEqual(['a']);
  expect(Object.keys(p1!.backends)).toEqual(['a']);
  expect(Object.keys(p2!.backends).sort()).toEqual(['a', 'c']);
});

it('frees the columns of a backend no point held names any more', () => {
  const h = new History(2, 10);
  h.push(point(0, ['gone', 'kept']));
  h.push(point(1, ['kept']));
  expect(h.seriesCount).toBe(2);
  h.push(point(2, ['kept']));
  expect(h.seriesCount).toBe(1);
});
