/**
 * The metrics scrape's bound on the renders it holds and its cut of a client
 * that stops reading, with a fake socket and fake timers (the end-to-end
 * tests with real sockets: test/gateway/metrics-scrape-held.test.ts).
 */
import { EventEmitter } from 'node:events';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { Registry } from 'prom-client';
import { MetricsRenders, renderFamily, type Scrape } from './exposition';
import { serveMetrics } from './handlers';
import { StallClock } from './backpressure';

/** A registry whose one family is `parts`, a pause for the event loop between two. */
function registryOf(parts: string[]): { registry: Registry; renders: () => number } {
  const registry = new Registry();
  let renders = 0;
  registry.registerMetric({
    name: 'test_text',
    help: 'text',
    type: 'gauge',
    aggregator: 'sum',
    get: () => Promise.reject(new Error('rendered directly')),
    reset() {},
    async *[renderFamily](scrape: Scrape) {
      renders++;
      for (const part of parts) {
        yield part;
        await scrape.pause();
      }
    },
  } as unknown as Parameters<Registry['registerMetric']>[0]);
  return { registry, renders: () => renders };
}

/**
 * A response whose socket takes what the test says: every write is queued
 * on it (`writableLength`) and "fills" it when `full`; `take(n)` is the
 * client reading n bytes.
 */
class Response extends EventEmitter {
  statusCode = 0;
  headersSent = false;
  writableEnded = false;
  destroyed = false;
  full = true;
  readonly writes: string[] = [];
  socket: { bytesWritten: number; writableLength: number } | null = {
    bytesWritten: 0,
    writableLength: 0,
  };

  get body(): string {
    return this.writes.join('');
  }

  setHeader(): void {}

  write(chunk: string): boolean {
    this.headersSent = true;
    this.writes.push(chunk);
    if (this.socket) {
      this.socket.bytesWritten += chunk.length;
      this.socket.writableLength += chunk.length;
    }
    return !this.full;
  }

  take(bytes: number): void {
    this.socket!.writableLength -= bytes;
  }

  end(chunk?: string): void {
    if (chunk !== undefined) this.write(chunk);
    this.writableEnded = true;
    this.emit('close');
  }

  destroy(): void {
    this.destroyed = true;
    this.emit('close');
  }
}

const get = { method: 'GET', headers: {}, socket: { remoteAddress: '10.0.0.1' } };
const turns = async (n = 20): Promise<void> => {
  for (let i = 0; i < n; i++) await new Promise((resolve) => setImmediate(resolve));
};
const PARTS = Array.from({ length: 4 }, (_, i) => `${String(i).repeat(1000)}\n`);

beforeEach(() => {
  // The render's pauses (setImmediate) run; the stall checks wait for the test.
  jest.useFakeTimers({ doNotFake: ['setImmediate', 'nextTick', 'queueMicrotask'] });
});
afterEach(() => {
  jest.useRealTimers();
});

describe('a metrics scrape whose client stops reading', () => {
  it('is cut once it takes no byte for stallTimeoutMs, logged once, its render released', async () => {
    const { registry, renders } = registryOf(PARTS);
    const onStalled = jest.fn();
    // Any render held refuses a new one: the bound shows whether the cut one is still held.
    const handler = serveMetrics(registry, { stallTimeoutMs: 1000, maxHeldBytes: 1, onStalled });
    const res = new Response();
    handler(get as unknown as IncomingMessage, res as unknown as ServerResponse);
    await turns();
    expect(res.writes).toHaveLength(1);
    const refused = new Response();
    handler(get as unknown as IncomingMessage, refused as unknown as ServerResponse);
    expect(refused.statusCode).toBe(503);
    // The client reads a little in every period: never cut, however long.
    for (let i = 0; i < 10; i++) {
      res.take(10);
      jest.advanceTimersByTime(1000);
      await turns(2);
    }
    expect(res.destroyed).toBe(false);
    expect(onStalled).not.toHaveBeenCalled();
    // Then nothing for a whole period.
    jest.advanceTimersByTime(1000);
    await turns(2);
    expect(res.destroyed).toBe(true);
    expect(res.writableEnded).toBe(false);
    expect(onStalled).toHaveBeenCalledTimes(1);
    expect(onStalled).toHaveBeenCalledWith(
      'metrics scrape from 10.0.0.1 took no bytes for 1000 ms; connection cut, its render released',
    );
    // Released: a scrape now gets a render of its own, and the whole text.
    const next = new Response();
    next.full = false;
    handler(get as unknown as IncomingMessage, next as unknown as ServerResponse);
    await turns();
    expect(next.writableEnded).toBe(true);
    expect(next.body).toBe(PARTS.join(''));
    expect(renders()).toBe(2);
    jest.advanceTimersByTime(10_000);
    expect(onStalled).toHaveBeenCalledTimes(1);
  });

  it('is cut within two periods of its last byte taken; a drain starts the clock again', async () => {
    const { registry } = registryOf(PARTS);
    const onStalled = jest.fn();
    const res = new Response();
    serveMetrics(registry, { stallTimeoutMs: 1000, onStalled })(
      get as unknown as IncomingMessage,
      res as unknown as ServerResponse,
    );
    await turns();
    // Taken just before the first check: not a stall at it, but one at the second.
    jest.advanceTimersByTime(900);
    res.take(10);
    jest.advanceTimersByTime(100);
    await turns(2);
    expect(res.destroyed).toBe(false);
    // A drain: the next write waits afresh, its first check a whole period away.
    jest.advanceTimersByTime(900);
    res.take(res.socket!.writableLength);
    res.emit('drain');
    await turns();
    expect(res.writes).toHaveLength(2);
    jest.advanceTimersByTime(999);
    await turns(2);
    expect(res.destroyed).toBe(false);
    jest.advanceTimersByTime(1);
    await turns(2);
    expect(res.destroyed).toBe(true);
    expect(onStalled).toHaveBeenCalledTimes(1);
  });

  it('is not cut while its response has no socket yet (pipelined behind another answer)', async () => {
    const { registry } = registryOf(PARTS);
    const onStalled = jest.fn();
    const res = new Response();
    res.socket = null;
    serveMetrics(registry, { stallTimeoutMs: 1000, onStalled })(
      get as unknown as IncomingMessage,
      res as unknown as ServerResponse,
    );
    await turns();
    jest.advanceTimersByTime(10_000);
    await turns(2);
    expect(res.destroyed).toBe(false);
    expect(onStalled).not.toHaveBeenCalled();
    res.emit('close'); // the client went
    await turns();
    expect(jest.getTimerCount()).toBe(0);
  });

  it('writes a part in slices of 64 Ki characters, never between the halves of a surrogate pair', async () => {
    const part = `${'a'.repeat(65_535)}\u{1F600}${'b'.repeat(100_000)}\n`;
    const { registry } = registryOf([part]);
    const res = new Response();
    res.full = false;
    serveMetrics(registry)(get as unknown as IncomingMessage, res as unknown as ServerResponse);
    await turns();
    expect(res.writableEnded).toBe(true);
    expect(res.body).toBe(part);
    expect(res.writes.length).toBeGreaterThan(1);
    for (const w of res.writes) {
      expect(w.length).toBeLessThanOrEqual(64 * 1024);
      expect(Buffer.from(w).toString()).toBe(w); // no lone surrogate (it would be U+FFFD)
    }
  });
});

describe('MetricsRenders', () => {
  it('shares the render in progress; refuses a new one while those held reach the bound', async () => {
    const { registry, renders } = registryOf(PARTS);
    const bound = PARTS.join('').length * 2;
    const held = new MetricsRenders(registry, bound);
    const a = held.acquire()!;
    const b = held.acquire()!;
    expect(renders()).toBe(1);
    for (let part = await a.next(); !part.done; part = await a.next());
    // Render done: b still holds it, and the next scrape needs a render of its own.
    expect(held.heldBytes).toBe(bound / 2);
    const c = held.acquire()!;
    for (let part = await c.next(); !part.done; part = await c.next());
    expect(renders()).toBe(2);
    expect(held.heldBytes).toBe(bound / 2); // c read its render to the end: released
    const d = held.acquire()!;
    await turns();
    expect(held.heldBytes).toBe(bound);
    expect(held.acquire()).toBeUndefined();
    b.release();
    b.release(); // once only
    expect(held.heldBytes).toBe(bound / 2);
    const e = held.acquire();
    expect(e).toBeDefined();
    d.release();
    e!.release();
    expect(held.heldBytes).toBe(0);
  });
});

describe('StallClock', () => {
  it('counts a late check as one period: the loop was busy, not the client idle', () => {
    const clock = new StallClock(250, 10, 0);
    expect(clock.idleAt(10, 250)).toBe(250);
    // Busy for 3 s: the check due meanwhile runs before any socket is polled.
    expect(clock.idleAt(10, 3250)).toBe(500);
    // On time, give or take a timer's rounding.
    expect(clock.idleAt(10, 3499.6)).toBe(750);
    expect(clock.idleAt(10, 3750)).toBe(1000);
    // Progress starts it again; so does nothing left to take.
    expect(clock.idleAt(11, 4000)).toBe(0);
    expect(clock.idleAt(11, 4250)).toBe(250);
    expect(clock.idleAt(undefined, 4500)).toBe(0);
    expect(clock.idleAt(undefined, 4750)).toBe(0);
  });
});
