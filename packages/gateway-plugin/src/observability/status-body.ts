/**
 * The status document, serialised once for the requests that come together
 * and written to each of them in slices of one shared Buffer. Before, every
 * request took its own snapshot and pretty-printed it (`JSON.stringify(x,
 * null, 2)`) in one block, then handed the whole string to `res.end()`: at
 * 10,000 backends 5.7 MB and 50-100 ms a request, and 20 requests at once
 * that never read held 20 copies (+199 MB) and stalled the event loop for 682
 * ms, past `overload.maxEventLoopDelayMs`, so the gateway shed proxied
 * traffic.
 *
 * - One body for the requests that arrive while it is made, and for as long
 *   again after it is done as making it took (STATUS_REUSE_MAX_MS at most):
 *   status work takes at most about half the event loop whatever the
 *   request rate, and a reused body is no older than one made for the
 *   request would be once made. A small fleet's body is made in one call,
 *   so there it is shared only by requests in the same few microseconds.
 * - Compact JSON (no indentation: 30% smaller, and cheaper to make); every
 *   JSON reader, `loadwise status` among them, reads it as before.
 * - `backends` serialised STATUS_STEP_BACKENDS at a time, a turn of the
 *   event loop between two steps, each step encoded to a Buffer once.
 * - Written in slices of WRITE_SLICE_BYTES of those Buffers (views, not
 *   copies), waiting for 'drain' when the socket has enough: a client that
 *   does not read holds at most a slice queued in the gateway, and the body
 *   it shares with the others.
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import { AnswerWaiter, drainedOrCut, type Stall } from './backpressure';

/** Backends serialised per turn of the event loop: about 1-2 ms of JSON.stringify. */
export const STATUS_STEP_BACKENDS = 500;
/** A finished body is reused for as long as it took to make, but never longer than this. */
export const STATUS_REUSE_MAX_MS = 1000;
/**
 * Bytes of bodies that answers in progress (waiting for their body, or being
 * written to a client that has not taken it all) may hold: a request that
 * would need a new body past it gets 503. One that shares a body already held
 * costs no body more, so clients that never read, arriving together, hold one.
 */
export const MAX_HELD_STATUS_BYTES = 32 * 1024 * 1024;
/** Most bytes handed to the socket in one write. */
const WRITE_SLICE_BYTES = 64 * 1024;

/** A plain object JSON.stringify writes key by key (not an array, nothing with a toJSON). */
const isObject = (v: unknown): v is Record<string, unknown> =>
  typeof v === 'object' &&
  v !== null &&
  !Array.isArray(v) &&
  typeof (v as { toJSON?: unknown }).toJSON !== 'function';

/**
 * `doc` as `JSON.stringify(doc)` writes it, character for character, in parts:
 * a part ends after every `step` backends (of a snapshot's `backends`, or of
 * each snapshot of a page's `services`) when more follow. Anything else is
 * written whole. The last part is the generator's return value, so a
 * document of one part is done in one `next()`.
 */
export function* statusJsonParts(
  doc: unknown,
  step = STATUS_STEP_BACKENDS,
): Generator<string, string, undefined> {
  let text = '';
  let rows = 0;
  function* object(o: Record<string, unknown>, depth: number): Generator<string, void, undefined> {
    text += '{';
    let comma = '';
    for (const key of Object.keys(o)) {
      const value = o[key];
      const rowsOf = key === 'backends' || (key === 'services' && depth === 0);
      if (rowsOf && Array.isArray(value)) {
        text += `${comma}${JSON.stringify(key)}:[`;
        comma = ',';
        for (let i = 0; i < value.length; i++) {
          const item: unknown = value[i];
          if (key === 'services' && isObject(item)) {
            if (i > 0) text += ',';
            yield* object(item, depth + 1);
            continue;
          }
          // A part ends before a row, never after the last: the tail goes with the last rows.
          if (rows >= step) {
            yield text;
            text = '';
            rows = 0;
          }
          if (i > 0) text += ',';
          text += JSON.stringify(item) ?? 'null';
          rows++;
        }
        text += ']';
        continue;
      }
      const json = JSON.stringify(value);
      // JSON.stringify leaves out a property whose value it cannot write (undefined, a function).
      if (json === undefined) continue;
      text += `${comma}${JSON.stringify(key)}:${json}`;
      comma = ',';
    }
    text += '}';
  }
  if (isObject(doc)) yield* object(doc, 0);
  else text = JSON.stringify(doc) ?? 'null';
  return text;
}

/** One serialised status document, shared by the answers that read it. */
export interface StatusBody {
  /** Its parts, each encoded once. */
  readonly parts: Buffer[];
  bytes: number;
  /** Answers in progress that read it. */
  readers: number;
  done: boolean;
  failed: boolean;
  error: unknown;
  /** performance.now() when it was started and when it was done. */
  readonly startedAt: number;
  doneAt: number;
  /** Called when it is done (made, or failed). */
  readonly waiting: Set<() => void>;
}

const pause = (): Promise<void> => new Promise((resolve) => setImmediate(resolve));

/**
 * Makes status bodies from `take()` and hands out the one a request arriving
 * now may read (see the file's comment), within MAX_HELD_STATUS_BYTES.
 */
export class StatusBodies {
  private current: StatusBody | undefined;
  /** Bodies that answers in progress read. */
  private readonly held = new Set<StatusBody>();

  constructor(
    private readonly take: () => unknown,
    private readonly maxHeldBytes = MAX_HELD_STATUS_BYTES,
  ) {}

  /** Bytes of the bodies answers in progress hold. */
  get heldBytes(): number {
    let bytes = 0;
    for (const b of this.held) bytes += b.bytes;
    return bytes;
  }

  /**
   * The body an answer starting now reads, counted as held until `release()`:
   * the one being made or a fresh one, else a new one; undefined when a new one
   * is needed and the bodies held already reach the bound.
   */
  acquire(): StatusBody | undefined {
    const c = this.current;
    const now = performance.now();
    const reusable =
      c !== undefined &&
      (!c.done ||
        (!c.failed && now - c.doneAt <= Math.min(c.doneAt - c.startedAt, STATUS_REUSE_MAX_MS)));
    if (!reusable && this.heldBytes >= this.maxHeldBytes) return undefined;
    const body = reusable ? c : (this.current = this.make(now));
    body.readers++;
    this.held.add(body);
    return body;
  }

  /** The answer that acquired `body` is over. */
  release(body: StatusBody): void {
    if (--body.readers <= 0) this.held.delete(body);
  }

  private make(now: number): StatusBody {
    const body: StatusBody = {
      parts: [],
      bytes: 0,
      readers: 0,
      done: false,
      failed: false,
      error: undefined,
      startedAt: now,
      doneAt: now,
      waiting: new Set(),
    };
    const finish = (err?: unknown, failed = false): void => {
      body.done = true;
      body.failed = failed;
      body.error = err;
      body.doneAt = performance.now();
      for (const resolve of body.waiting) resolve();
      body.waiting.clear();
    };
    let parts: Generator<string, string, undefined>;
    /** One step: its part encoded once; false when it was the last. */
    const next = (): boolean => {
      const part = parts.next();
      const buf = Buffer.from(part.value);
      body.parts.push(buf);
      body.bytes += buf.length;
      return part.done !== true;
    };
    // The first step in this call: a small fleet's body is done before it returns, as before.
    try {
      parts = statusJsonParts(this.take());
      if (!next()) {
        finish();
        return body;
      }
    } catch (err) {
      finish(err, true);
      return body;
    }
    void (async () => {
      try {
        for (;;) {
          await pause();
          if (!next()) break;
        }
        finish();
      } catch (err) {
        finish(err, true);
      }
    })();
    return body;
  }
}

/**
 * Answers `res` with `body` once it is done: the headers (with its
 * Content-Length), then, for GET, its parts in slices, waiting for 'drain'
 * whenever the socket has enough buffered. Resolves when it is written, or
 * the client went; `onFailure` answers a body that failed.
 */
export async function writeStatus(
  body: StatusBody,
  req: IncomingMessage,
  res: ServerResponse,
  onFailure: (err: unknown) => void,
  stall: Stall,
): Promise<void> {
  const waiter = new AnswerWaiter(res);
  try {
    if (!body.done) {
      body.waiting.add(waiter.woken);
      await waiter.next();
      body.waiting.delete(waiter.woken);
    }
    // Gone while its body was made, or something else answered meanwhile.
    if (waiter.closed || res.headersSent || res.writableEnded) return;
    if (body.failed) return onFailure(body.error);
    res.statusCode = 200;
    res.setHeader('Content-Type', 'application/json; charset=utf-8');
    res.setHeader('Cache-Control', 'no-store');
    res.setHeader('Content-Length', body.bytes);
    if (req.method === 'HEAD') return void res.end();
    for (const part of body.parts) {
      for (let at = 0; at < part.length; at += WRITE_SLICE_BYTES) {
        if (waiter.closed) return;
        if (res.write(part.subarray(at, at + WRITE_SLICE_BYTES))) continue;
        // A client that takes nothing is cut (its body released): before, a few that never
        // read held MAX_HELD_STATUS_BYTES for good, and every status request got 503.
        if (!(await drainedOrCut(waiter, req, res, stall, 'status request', 'its body'))) return;
      }
    }
    if (!waiter.closed && !res.writableEnded) res.end();
  } finally {
    waiter.dispose();
  }
}
