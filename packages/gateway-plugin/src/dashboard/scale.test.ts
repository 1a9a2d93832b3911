/**
 * The dashboard at fleet scale. Above MAX_DETAILED_BACKENDS a frame details
 * only the backends that matter and counts the rest, so a tick's size and the
 * history's memory do not grow with the fleet; a new viewer's first message
 * is serialised in steps, with the ticks that come meanwhile after it. Sizes
 * and counts, with fake timers: no timing thresholds.
 */
import { loadBalance, type LoadBalancerMiddleware } from '../load-balance';
import type { BackendSnapshot } from '../observability';
import { dashboardOf } from '../internals';
import { openViewer, type RecordingResponse } from './test-stream';
import { BackendPicker, MAX_DETAILED_BACKENDS, type Frame, type Point } from './frame';
import type { InitMessage } from './stream';
import type { History } from './history';

describe('a stream over 3,000 backends', () => {
  const FLEET = 3000;
  let lb: LoadBalancerMiddleware;

  beforeEach(() => {
    // setImmediate stays real: the first message's steps run when the test yields, so a
    // tick can be made to come while one is being written.
    jest.useFakeTimers({ now: 1_000_000, doNotFake: ['setImmediate', 'clearImmediate'] });
    lb = loadBalance({
      backends: Array.from({ length: FLEET }, (_, i) => ({
        id: `backend-${String(i).padStart(5, '0')}`,
        url: `http://127.0.1.${1 + (i % 250)}:${10000 + i}`,
      })),
      healthCheck: false,
      overload: false,
      warmUp: false,
      logger: { info: () => {}, warn: () => {}, error: () => {} },
      dashboard: { token: 'dash-0123456789abcdef', intervalMs: 1000, historySec: 60 },
    });
  });

  afterEach(async () => {
    await lb.close();
    jest.useRealTimers();
  });

  it('keeps history for at most MAX_DETAILED_BACKENDS backends, and ticks of bounded size', () => {
    const stream = dashboardOf(lb)!.stream;
    const v = openViewer(lb);
    jest.advanceTimersByTime(70_000);
    expect(stream.historyLength).toBe(60);
    expect(stream.historySeries).toBe(MAX_DETAILED_BACKENDS);
    const ticks = v.messages().filter(([name]) => name === 'tick');
    expect(ticks).toHaveLength(70);
    const last = ticks.at(-1)![1];
    const tick = JSON.parse(last) as { frame: Frame; point: Point };
    expect(tick.frame.backends).toHaveLength(MAX_DETAILED_BACKENDS);
    expect(Object.keys(tick.point.backends)).toHaveLength(MAX_DETAILED_BACKENDS);
    expect(tick.frame.fleet).toEqual({
      total: FLEET,
      omitted: FLEET - MAX_DETAILED_BACKENDS,
      states: { healthy: FLEET, ejected: 0, draining: 0, down: 0 },
      stale: 0,
    });
    // Every row of 3,000 was 1.2 MB; 100 rows and their point are about 50 KB.
    expect(Buffer.byteLength(last)).toBeLessThan(64 * 1024);
    v.end();
    // Nobody watches: the history stays, as bounded as it was.
    expect(stream.sampling).toBe(false);
    expect(stream.historySeries).toBe(MAX_DETAILED_BACKENDS);
  });

  it("writes a new viewer's history in steps, then the ticks that came meanwhile", async () => {
    const first = openViewer(lb);
    jest.advanceTimersByTime(60_000);
    const stringify = jest.spyOn(JSON, 'stringify');
    let v: RecordingResponse;
    try {
      v = openViewer(lb);
      // Not all at once: 60 points of 100 backends are more than one step.
      expect(v.messages()).toEqual([]);
      const ofPoints = stringify.mock.calls.filter(([x]) => Array.isArray(x));
      expect(ofPoints).toHaveLength(1);
      expect((ofPoints[0]![0] as Point[]).length).toBeLessThan(60);
    } finally {
      stringify.mockRestore();
    }
    // A tick while the first message is being written waits for it.
    jest.advanceTimersByTime(1000);
    expect(first.messages().filter(([name]) => name === 'tick')).toHaveLength(61);
    expect(v.messages()).toEqual([]);
    for (let turns = 0; v.messages().length < 2 && turns < 100; turns++) {
      await new Promise((r) => setImmediate(r));
    }
    const messages = v.messages();
    expect(messages.map(([name]) => name)).toEqual(['init', 'tick']);
    const init = JSON.parse(messages[0]![1]) as InitMessage;
    const tick = JSON.parse(messages[1]![1]) as { point: Point };
    // The history as it was when the viewer came; the point of the tick that came meanwhile follows it.
    expect(init.history).toHaveLength(60);
    expect(
      init.history.every((p) => Object.keys(p.backends).length === MAX_DETAILED_BACKENDS),
    ).toBe(true);
    expect(tick.point.t).toBeGreaterThan(init.history.at(-1)!.t);
    expect(init.frame.fleet.omitted).toBe(FLEET - MAX_DETAILED_BACKENDS);
    // Written in parts: the head, each part of the history, the end.
    expect(v.chunks.length).toBeGreaterThan(3);
    first.end();
    v.end();
  });
});

describe('viewers joining a long history', () => {
  const BACKENDS = 100;
  let lb: LoadBalancerMiddleware;
  /** Bytes of the history as the first message carries it. */
  let historyBytes = 0;
  const turn = (): Promise<void> => new Promise((resolve) => setImmediate(resolve));

  beforeEach(() => {
    jest.useFakeTimers({ now: 1_000_000, doNotFake: ['setImmediate', 'clearImmediate'] });
    lb = loadBalance({
      backends: Array.from({ length: BACKENDS }, (_, i) => ({
        id: `backend-${i}`,
        url: `http://127.0.1.${1 + i}:10000`,
      })),
      healthCheck: false,
      overload: false,
      warmUp: false,
      logger: { info: () => {}, warn: () => {}, error: () => {} },
      dashboard: { token: 'dash-0123456789abcdef', intervalMs: 250, historySec: 600 },
    });
    // Ten minutes at 250 ms of 100 backends, as if watched all along: about 9 MB of JSON.
    const history = (dashboardOf(lb)!.stream as unknown as { history: History }).history;
    const backends = Object.fromEntries(
      Array.from({ length: BACKENDS }, (_, i) => [
        `backend-${i}`,
        [0.01, 12.3, 45.6, 0.5, 3, 1] as Point['backends'][string],
      ]),
    );
    const t0 = Date.now() - history.capacity * 250;
    for (let i = 0; i < history.capacity; i++) {
      history.push({
        t: t0 + i * 250,
        eventLoopDelayMs: 1.2,
        queue: 0,
        inFlight: 3,
        shed: 0,
        retries: 0,
        backends,
      });
    }
    historyBytes = Buffer.byteLength(
      JSON.stringify(history.points(history.firstSeq, history.endSeq)),
    );
  });

  afterEach(async () => {
    await lb.close();
    jest.useRealTimers();
  });

  it('stops writing the history to a viewer that does not read, resumes on drain, and drops it when it stays silent', async () => {
    const v = openViewer(lb);
    v.reading = false;
    for (let i = 0; i < 200; i++) await turn();
    const sent = v.writableLength;
    // About JOIN_QUEUE_BYTES (1 MiB) and a part of the history, not the whole of it.
    expect(historyBytes).toBeGreaterThan(8 * 1024 * 1024);
    expect(sent).toBeGreaterThan(1024 * 1024);
    expect(sent).toBeLessThan(2 * 1024 * 1024);
    // It read what it had: the rest follows.
    v.writableLength = 0;
    v.emit('drain');
    for (let i = 0; i < 200; i++) await turn();
    expect(v.writableLength).toBeGreaterThan(1024 * 1024);
    expect(v.chunks.join('').length).toBeGreaterThan(sent + 1024 * 1024);
    expect(v.destroyed).toBe(false);
    // Then silent while ticks pile up behind its first message: dropped past 1 MiB of them.
    jest.advanceTimersByTime(250 * 200);
    expect(v.destroyed).toBe(true);
    expect(dashboardOf(lb)!.stream.viewerCount).toBe(0);
  });

  it('drops a viewer that reads its history more slowly than ticks come', async () => {
    // It reads (every part drains), but many ticks come per part: they queued behind its
    // first message with no bound (a 64 MB history at 50 KB/s against 40 KB/s of ticks:
    // ~50 MB a viewer). Dropped once 8 MiB of them wait; its browser reconnects.
    const v = openViewer(lb);
    const joined = (): boolean => v.chunks.at(-1) === ']}\n\n';
    for (let i = 0; i < 2_000 && !v.destroyed && !joined(); i++) {
      v.writableLength = 0;
      v.emit('drain');
      await turn();
      jest.advanceTimersByTime(250 * 40);
    }
    expect(joined()).toBe(false);
    expect(v.destroyed).toBe(true);
    expect(dashboardOf(lb)!.stream.viewerCount).toBe(0);
  });

  it('writes the same encoded history parts to the viewers that join together', async () => {
    const a = openViewer(lb);
    const b = openViewer(lb);
    const joined = (v: RecordingResponse): boolean => v.chunks.at(-1) === ']}\n\n';
    for (let i = 0; i < 10_000 && !(joined(a) && joined(b)); i++) await turn();
    const partsOf = (v: RecordingResponse): Buffer[] => v.raw.filter((c) => Buffer.isBuffer(c));
    expect(partsOf(a).length).toBeGreaterThan(10);
    expect(partsOf(b)).toHaveLength(partsOf(a).length);
    // The very objects: encoded once, not once per viewer.
    expect(partsOf(a).every((part, i) => partsOf(b)[i] === part)).toBe(true);
    const init = JSON.parse(a.messages()[0]![1]) as InitMessage;
    expect(init.history).toHaveLength(600 * 4);
    expect(b.messages()[0]).toEqual(a.messages()[0]);
    a.end();
    b.end();
  });
});

describe('which backends a large fleet details', () => {
  function fleet(
    n: number,
    over: Record<string, Partial<BackendSnapshot>> = {},
  ): BackendSnapshot[] {
    return Array.from({ length: n }, (_, i) => {
      const id = `b${i}`;
      return {
        id,
        state: 'healthy',
        reportFresh: true,
        reportAgeMs: 100,
        slowStartFactor: 1,
        windowRequests: 0,
        inFlight: 0,
        ...over[id],
      } as BackendSnapshot;
    });
  }
  const ids = (list: BackendSnapshot[]): string[] => list.map((b) => b.id);

  it('lists every backend up to MAX_DETAILED_BACKENDS', () => {
    const all = fleet(MAX_DETAILED_BACKENDS);
    expect(new BackendPicker().pick(all, 0, true)).toBe(all);
  });

  it('lists the unhealthy, then the recently changed, ramping or stale, then the busiest, in snapshot order', () => {
    const busy = Object.fromEntries(
      Array.from({ length: 150 }, (_, i) => [`b${i}`, { windowRequests: i }]),
    );
    const all = fleet(150, {
      ...busy,
      b3: { state: 'down' },
      b4: { state: 'ejected' },
      b5: { slowStartFactor: 0.5 },
      b6: { reportFresh: false },
    });
    const picker = new BackendPicker((since) =>
      since === 1_000 - 60_000 ? new Set(['b7']) : new Set(),
    );
    const shown = ids(picker.pick(all, 1_000, true));
    expect(shown).toHaveLength(MAX_DETAILED_BACKENDS);
    expect(shown.slice(0, 5)).toEqual(['b3', 'b4', 'b5', 'b6', 'b7']);
    // Then the 95 busiest: b55 .. b149.
    expect(shown.slice(5)).toEqual(Array.from({ length: 95 }, (_, i) => `b${55 + i}`));
  });

  it('keeps a listed backend until another is clearly busier', () => {
    const picker = new BackendPicker();
    const first = ids(picker.pick(fleet(101), 0, false));
    expect(first).toEqual(ids(fleet(100)));
    const busy = (b100: number): Record<string, Partial<BackendSnapshot>> => ({
      ...Object.fromEntries(first.map((id) => [id, { windowRequests: 100 }])),
      b100: { windowRequests: b100 },
    });
    // A little busier than the listed ones (within INCUMBENT_BONUS): they stay.
    expect(ids(picker.pick(fleet(101, busy(110)), 0, false))).toEqual(first);
    // Clearly busier: it takes a place.
    const later = ids(picker.pick(fleet(101, busy(200)), 0, false));
    expect(later).toHaveLength(MAX_DETAILED_BACKENDS);
    expect(later).toContain('b100');
  });
});
