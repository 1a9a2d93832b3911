/**
 * The stream's cost rules with fake timers and recording responses (the real
 * HTTP path is covered by test/dashboard/): one timer for all viewers, only
 * while someone watches; the history survives between viewers with a gap
 * marker; a viewer that stops reading is dropped.
 */
import { loadBalance, type LoadBalancerMiddleware } from '../load-balance';
import { STREAM_LIFETIME_MS, type InitMessage } from './stream';
import { dashboardOf } from '../internals';
import { openViewer } from './test-stream';

let lb: LoadBalancerMiddleware;

beforeEach(() => {
  jest.useFakeTimers({ now: 1_000_000 });
  lb = loadBalance({
    backends: [
      { id: 'b1', url: 'http://127.0.0.1:9' },
      { id: 'b2', url: 'http://127.0.0.1:10' },
    ],
    healthCheck: false,
    overload: false,
    // Its timer would count below (warm-up.ts); these tests count the dashboard's.
    warmUp: false,
    logger: { info: () => {}, warn: () => {}, error: () => {} },
    dashboard: { token: 'dash-0123456789abcdef', intervalMs: 1000, historySec: 10, maxViewers: 2 },
  });
});

afterEach(async () => {
  await lb.close();
  jest.useRealTimers();
});

it('runs one timer for all viewers, only while someone watches', () => {
  const stream = dashboardOf(lb)!.stream;
  // The balancer's own: its freshness sweep, and its event-loop lateness read and stall
  // tick (load/loop-delay.ts).
  expect(jest.getTimerCount()).toBe(3);
  const a = openViewer(lb);
  const b = openViewer(lb);
  expect(stream.sampling).toBe(true);
  expect(jest.getTimerCount()).toBe(4);
  jest.advanceTimersByTime(3000);
  expect(a.events('tick')).toHaveLength(3);
  // The same serialised message to every viewer.
  expect(b.events('tick')).toEqual(a.events('tick'));
  a.end();
  expect(stream.sampling).toBe(true);
  b.end();
  expect(stream.sampling).toBe(false);
  expect(jest.getTimerCount()).toBe(3);
});

it('keeps historySec of points between viewers, with a gap marker where nobody watched', () => {
  const a = openViewer(lb);
  jest.advanceTimersByTime(15_000);
  a.end();
  jest.advanceTimersByTime(60_000);
  const b = openViewer(lb);
  const init = JSON.parse(b.events('init')[0]!) as InitMessage;
  // 10 s of 1 s points (the oldest dropped), then the gap marker.
  expect(init.history).toHaveLength(10);
  expect(init.history.at(-1)).toMatchObject({ gap: true });
  expect(init.history.at(-2)!.gap).toBeUndefined();
  expect(init.frame.backends.map((x) => x.id)).toEqual(['b1', 'b2']);
});

it('drops a viewer that stops reading, and refuses viewers over the cap', () => {
  const slow = openViewer(lb);
  const ok = openViewer(lb);
  const third = openViewer(lb);
  expect(third.status).toBe(503);
  slow.writableLength = 2 * 1024 * 1024;
  jest.advanceTimersByTime(1000);
  expect(slow.destroyed).toBe(true);
  expect(ok.destroyed).toBe(false);
  expect(dashboardOf(lb)!.stream.viewerCount).toBe(1);
});

it('serialises the history once per tick, however many viewers open the stream', () => {
  const a = openViewer(lb);
  jest.advanceTimersByTime(10_000);
  const stringify = jest.spyOn(JSON, 'stringify');
  try {
    for (let i = 0; i < 5; i++) openViewer(lb).end();
    const ofHistory = stringify.mock.calls.filter(
      ([v]) => Array.isArray(v) || (typeof v === 'object' && v !== null && 'history' in v),
    );
    expect(ofHistory).toHaveLength(1);
  } finally {
    stringify.mockRestore();
  }
  const b = openViewer(lb);
  const init = JSON.parse(b.events('init')[0]!) as InitMessage;
  expect(init.history).toHaveLength(10);
  expect(Object.keys(init).sort()).toEqual([
    'events',
    'frame',
    'history',
    'historySec',
    'intervalMs',
  ]);
  a.end();
  b.end();
});

it("counts a viewer's unread bytes from its first message, however large", () => {
  const v = openViewer(lb);
  const first = v.chunks.join('').length;
  // Its whole first message still unsent, plus less than the bound: kept.
  v.writableLength = first + 1024 * 1024 - 1;
  jest.advanceTimersByTime(1000);
  expect(v.destroyed).toBe(false);
  v.writableLength = first + 1024 * 1024 + 1;
  jest.advanceTimersByTime(1000);
  expect(v.destroyed).toBe(true);
});

it('ends each stream after STREAM_LIFETIME_MS, and samples on while its browser reconnects', () => {
  // A frozen browser on a small fleet was never cut: the kernel took its 2 KB ticks for
  // tens of minutes. Now its stream ends; a live browser reconnects RECONNECT_MS later.
  const stream = dashboardOf(lb)!.stream;
  const a = openViewer(lb);
  jest.advanceTimersByTime(STREAM_LIFETIME_MS - 1000);
  expect(a.ended).toBe(false);
  jest.advanceTimersByTime(1000);
  expect([a.ended, a.destroyed, stream.viewerCount]).toEqual([true, false, 0]);
  // The sampling goes on for the reconnect: no gap in the history.
  expect(stream.sampling).toBe(true);
  jest.advanceTimersByTime(3000);
  const b = openViewer(lb);
  const init = JSON.parse(b.events('init')[0]!) as InitMessage;
  expect(init.history.some((p) => p.gap === true)).toBe(false);
  // One that has not read what it was sent is cut, not ended behind its unread bytes.
  b.reading = false;
  b.write('x');
  jest.advanceTimersByTime(STREAM_LIFETIME_MS);
  expect([b.destroyed, b.ended]).toEqual([true, false]);
  // Nobody back: the timer stops once the linger is over.
  jest.advanceTimersByTime(7000);
  expect(stream.sampling).toBe(false);
});
