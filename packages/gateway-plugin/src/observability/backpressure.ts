import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Socket } from 'node:net';
import { DEFAULT_REQUEST_TIMEOUT_MS } from '../options';

/**
 * What an answer written in parts waits on (the metrics scrape, the status body): the
 * socket's 'drain', the client's going, or a caller's own wake-up (a body still being
 * made). One 'drain' and one 'close' listener for the whole answer: a compression
 * middleware's res.on sends 'drain' listeners to its zlib stream and its res.off does not
 * follow them there, so one added and taken back per wait stayed there, each (a
 * MaxListenersExceededWarning on a 5 MB scrape).
 */
export class AnswerWaiter {
  /** The client went (the response closed), before or since. */
  closed: boolean;
  private wake: (() => void) | undefined;

  constructor(private readonly res: ServerResponse) {
    this.closed = res.destroyed;
    res.once('close', this.onClose);
    res.on('drain', this.woken);
  }

  /** Ends the current wait, if any. */
  readonly woken = (): void => {
    const resolve = this.wake;
    this.wake = undefined;
    resolve?.();
  };

  /** Resolves at the next 'drain', the close or woken(); at once once closed. */
  next(): Promise<void> {
    return new Promise((resolve) => {
      if (this.closed) return resolve();
      this.wake = resolve;
    });
  }

  /** Takes both listeners back. */
  dispose(): void {
    this.res.off('drain', this.woken);
    this.res.off('close', this.onClose);
  }

  private readonly onClose = (): void => {
    this.closed = true;
    this.woken();
  };
}

/** Responses queued behind another on their connection, by connection (closeWithConnection). */
const queuedOn = new WeakMap<Socket, Set<ServerResponse>>();

/**
 * For an answer of the gateway's own that holds something until its response closes (a
 * status body, a metrics render, a dashboard viewer's place): false when its client is
 * gone already, else true, its 'close' then sure to come.
 *
 * Gone already: it left while a middleware before this handler ran (an auth step, a
 * poller's timeout), its 'close' has fired, and what it took would be held for good (a
 * dozen such aborts at 10,000 backends held the status bodies' bound, and every status
 * request got 503 until a restart).
 *
 * Sure to come: a response queued behind an earlier one on a pipelined connection (no
 * socket yet) gets no 'close' from Node when that connection goes (its request gets
 * 'close', the response nothing): forty connections each pipelining a slow request and a
 * status request, then closing, held the same bound. Such a response gets its 'close'
 * here; one that gets its socket later closes as any other. The proxied requests have
 * their own (proxy/request-flow.ts finishOnClose).
 */
export function awaitsAnswer(req: IncomingMessage, res: ServerResponse): boolean {
  if (res.destroyed || req.socket?.destroyed === true) return false;
  closeWithConnection(req, res);
  return true;
}

/** awaitsAnswer's second half: the 'close' a queued response would not get. */
function closeWithConnection(req: IncomingMessage, res: ServerResponse): void {
  const socket = req.socket as Socket | undefined;
  // (A handler called with a request of its own making may have no socket at all.)
  if (res.socket || typeof socket?.once !== 'function') return;
  let queued = queuedOn.get(socket);
  if (queued === undefined) {
    const responses = new Set<ServerResponse>();
    queued = responses;
    queuedOn.set(socket, responses);
    socket.once('close', () => {
      queuedOn.delete(socket);
      for (const r of responses) {
        if (r.socket) continue;
        r.destroy();
        r.emit('close');
      }
    });
  }
  queued.add(res);
  res.once('socket', () => queuedOn.get(socket)?.delete(res));
}

/**
 * A mark that moves whenever the kernel takes bytes of `res`'s socket; undefined without
 * one. bytesTaken moves only when a whole write completes, and a write is as large as what
 * queued behind the one before (a dashboard viewer's first message: up to 1 MiB): a viewer
 * reading 200 KB/s through a small receive buffer showed no progress for seconds at a
 * time and was cut as stalled. libuv's queue of the write in progress
 * (`writeQueueSize`, what Node's own socket timeout watches) shrinks as the kernel takes
 * its bytes.
 */
export function progressMark(res: ServerResponse): number | undefined {
  const taken = bytesTaken(res);
  if (taken === undefined) return undefined;
  const queued = (res.socket as { _handle?: { writeQueueSize?: number } | null } | null)?._handle
    ?.writeQueueSize;
  // A write completing moves `taken` up by its size as `queued` falls to 0: the mark moves.
  return taken - (typeof queued === 'number' ? queued : 0);
}

/** Bytes the socket of `res` has handed on (written, not waiting in it); undefined without one. */
function bytesTaken(res: ServerResponse): number | undefined {
  const socket = res.socket;
  if (!socket) return undefined;
  const written = socket.bytesWritten as number | undefined;
  return written === undefined ? undefined : written - socket.writableLength;
}

/**
 * How long a client has taken no byte, counting only time the event loop was free to see
 * it take one. A check is a timer, and after the loop was busy (a large render, a long
 * GC, a machine short of CPU) timers run before the loop polls its sockets: a check due
 * meanwhile saw no progress since the last one however fast the client read, and the
 * metrics scrape of a reading client was cut as stalled on a loaded CI machine. So each
 * check adds the time since the one before, but at most `stepMs` (its period): a late
 * check counts as one on time, and the sockets are polled before the next.
 */
export class StallClock {
  private seen: number | undefined;
  private idleMs = 0;
  private lastMs: number;

  constructor(
    private readonly stepMs: number,
    mark: number | undefined,
    nowMs: number,
  ) {
    this.seen = mark;
    this.lastMs = nowMs;
  }

  /**
   * A check at `nowMs` that found the socket's progress at `mark` (undefined: nothing to
   * take, never stalled): the time with no progress so far, 0 when it moved.
   */
  idleAt(mark: number | undefined, nowMs: number): number {
    // Timers keep whole milliseconds: one on time can read a little less than its period.
    const sinceMs = nowMs - this.lastMs;
    const elapsed = sinceMs >= this.stepMs * 0.9 ? this.stepMs : Math.max(sinceMs, 0);
    this.lastMs = nowMs;
    if (mark === undefined || mark !== this.seen) {
      this.seen = mark;
      this.idleMs = 0;
      return 0;
    }
    return (this.idleMs += elapsed);
  }
}

/** Checks of drainedWithin in each `timeoutMs`: cut at most a quarter of it late. */
const STALL_CHECKS = 4;

/**
 * Waits for 'drain' (or the close); false when the client stalled: its socket handed on
 * no byte for `timeoutMs` of the wait, counted by StallClock (checked every quarter of
 * it). So a client that stops reading is cut between one and 1.25 `timeoutMs` after its
 * last byte taken, while the gateway's loop is free, as a proxied answer is
 * (`client-stalled`). A response without a socket yet (a pipelined one, queued behind the
 * answers before it) is not stalled.
 */
export async function drainedWithin(
  waiter: AnswerWaiter,
  res: ServerResponse,
  timeoutMs: number,
): Promise<boolean> {
  let stalled = false;
  const stepMs = timeoutMs / STALL_CHECKS;
  const clock = new StallClock(stepMs, bytesTaken(res), performance.now());
  const check = setInterval(() => {
    if (clock.idleAt(bytesTaken(res), performance.now()) >= timeoutMs) {
      stalled = true;
      waiter.woken();
    }
  }, stepMs);
  check.unref();
  try {
    await waiter.next();
  } finally {
    clearInterval(check);
  }
  return !stalled;
}

/** The peer of a scrape for a log line: printable ASCII only, bounded. */
export function peerOf(req: IncomingMessage): string {
  return String(req.socket?.remoteAddress ?? '?')
    .slice(0, 64)
    .replace(/[^\x20-\x7e]/g, '?');
}

/** How an answer written in parts treats a client that takes nothing (drainedWithin). */
export interface Stall {
  timeoutMs: number;
  /** Told of each answer cut so, with a line to log. */
  onStalled: ((message: string) => void) | undefined;
}

/** A handler's stall options (status and metrics alike). */
export interface StallOptions {
  /**
   * An answer whose client takes no byte for this long while it waits for its socket is
   * cut (drainedWithin): `loadBalance()` gives its `requestTimeoutMs`; alone,
   * DEFAULT_REQUEST_TIMEOUT_MS (30 s).
   */
  stallTimeoutMs?: number;
  /** Told of each answer cut so, with a line to log (`loadBalance()` logs it, rate-limited). */
  onStalled?: (message: string) => void;
}

export function stallOf(opts: StallOptions): Stall {
  return {
    timeoutMs: opts.stallTimeoutMs ?? DEFAULT_REQUEST_TIMEOUT_MS,
    onStalled: opts.onStalled,
  };
}

/**
 * Waits for the socket of an answer written in parts to take more; false when the client
 * went, or stalled (drainedWithin): then after destroying the response and telling `stall.onStalled`
 * with `what` (`metrics scrape`, `status request`) and what it held (`its render`) in the line.
 */
export async function drainedOrCut(
  waiter: AnswerWaiter,
  req: IncomingMessage,
  res: ServerResponse,
  stall: Stall,
  what: string,
  held: string,
): Promise<boolean> {
  const drained = await drainedWithin(waiter, res, stall.timeoutMs);
  if (waiter.closed) return false;
  if (drained) return true;
  // The peer first: a destroyed socket has no remoteAddress any more.
  const peer = peerOf(req);
  res.destroy();
  stall.onStalled?.(
    `${what} from ${peer} took no bytes for ${stall.timeoutMs} ms; connection cut, ${held} released`,
  );
  return false;
}
