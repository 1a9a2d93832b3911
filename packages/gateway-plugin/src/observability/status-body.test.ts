/**
 * The status body: the same JSON as JSON.stringify, made in steps; one body
 * for the requests that come while it is made and for as long again after;
 * bodies held by unfinished answers bounded. Fake timers: no timing thresholds.
 */
import { StatusBodies, statusJsonParts, type StatusBody } from './status-body';

/** Every part, the last (the return value) included. */
function partsOf(doc: unknown, step?: number): string[] {
  const parts: string[] = [];
  const g = statusJsonParts(doc, step);
  for (;;) {
    const r = g.next();
    parts.push(r.value);
    if (r.done === true) return parts;
  }
}

function snapshot(backends: number, service: string | null = null): Record<string, unknown> {
  return {
    takenAt: '2026-01-01T00:00:00.000Z',
    service,
    strategy: 'load-aware',
    gone: undefined,
    backends: Array.from({ length: backends }, (_, i) => ({
      id: `b${i}`,
      url: `http://10.0.${i >> 8}.${i & 255}:3000/`,
      latencyMs: i % 3 === 0 ? null : i / 7,
      stateReason: i % 5 === 0 ? 'quoted "reason"\n' : null,
      lastReport: { cpuUtilization: 0.5, verdict: 'up' },
    })),
    trafficWindowMs: 10_000,
  };
}

describe('statusJsonParts', () => {
  it.each([
    ['no backends', snapshot(0), 2],
    ['fewer backends than a step', snapshot(3), 10],
    ['a step exactly', snapshot(10), 10],
    ['several steps', snapshot(25), 10],
    ['a page of services', { takenAt: 't', services: [snapshot(7, 'a'), snapshot(9, 'b')] }, 4],
    ['not an object', [1, 'two', null], 2],
  ])('writes what JSON.stringify writes, with %s', (_label, doc, step) => {
    const parts = partsOf(doc, step);
    expect(parts.join('')).toBe(JSON.stringify(doc));
  });

  it('ends a part after every `step` backends', () => {
    expect(partsOf(snapshot(25), 10)).toHaveLength(3);
    expect(partsOf(snapshot(20), 10)).toHaveLength(2);
    // The two snapshots' 16 backends: 4 parts of 4.
    expect(partsOf({ services: [snapshot(7), snapshot(9)] }, 4)).toHaveLength(4);
    expect(partsOf(snapshot(3))).toHaveLength(1);
  });
});

describe('StatusBodies', () => {
  beforeEach(() => jest.useFakeTimers({ now: 1_000_000 }));
  afterEach(() => jest.useRealTimers());

  it('reuses a finished body for as long as it took to make, then makes a new one', () => {
    let takes = 0;
    const bodies = new StatusBodies(() => {
      takes++;
      // Making it takes 40 ms of the (fake) clock.
      jest.advanceTimersByTime(40);
      return snapshot(3);
    });
    const first = bodies.acquire()!;
    expect(first.done).toBe(true);
    jest.advanceTimersByTime(39);
    expect(bodies.acquire()).toBe(first);
    jest.advanceTimersByTime(2);
    const second = bodies.acquire()!;
    expect(second).not.toBe(first);
    expect(takes).toBe(2);
  });

  it('shares a body being made in steps with every request that comes meanwhile', async () => {
    let takes = 0;
    const bodies = new StatusBodies(() => {
      takes++;
      return snapshot(1200);
    });
    const first = bodies.acquire()!;
    expect(first.done).toBe(false);
    const others = [bodies.acquire(), bodies.acquire(), bodies.acquire()];
    expect(others.every((b) => b === first)).toBe(true);
    await jest.runAllTimersAsync();
    expect(first.done).toBe(true);
    expect(first.parts).toHaveLength(3);
    expect(Buffer.concat(first.parts).toString()).toBe(JSON.stringify(snapshot(1200)));
    expect(first.bytes).toBe(Buffer.byteLength(JSON.stringify(snapshot(1200))));
    expect(takes).toBe(1);
  });

  it('refuses a new body while unfinished answers hold the bound; a shared one costs nothing more', () => {
    const bound = Buffer.byteLength(JSON.stringify(snapshot(3))) * 2;
    const bodies = new StatusBodies(() => snapshot(3), bound);
    const held: StatusBody[] = [];
    held.push(bodies.acquire()!);
    // Sharing the same (fresh) body: always, however many.
    for (let i = 0; i < 5; i++) held.push(bodies.acquire()!);
    expect(new Set(held).size).toBe(1);
    jest.advanceTimersByTime(1);
    held.push(bodies.acquire()!);
    expect(bodies.heldBytes).toBe(bound);
    jest.advanceTimersByTime(1);
    // A third body would pass the bound while those two are still being answered.
    expect(bodies.acquire()).toBeUndefined();
    for (const b of held.slice(0, 6)) bodies.release(b);
    expect(bodies.acquire()).toBeDefined();
  });

  it('does not reuse a body that failed', () => {
    let fail = true;
    const bodies = new StatusBodies(() => {
      if (fail) throw new Error('boom');
      return snapshot(1);
    });
    const failed = bodies.acquire()!;
    expect(failed.failed).toBe(true);
    fail = false;
    expect(bodies.acquire()!.failed).toBe(false);
  });
});
