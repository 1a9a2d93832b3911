/**
 * The dashboard's live feed: server-sent events (WHATWG HTML §9.2), one
 * stream per open page. Cheap by construction:
 *
 * - ONE timer for all viewers, started by the first viewer and cleared when
 *   the last one leaves (and on close), unref()ed so it never keeps a process
 *   alive. Each tick takes one snapshot, serialises it once and writes the
 *   same string to every viewer: the cost does not grow with viewers beyond
 *   a socket write each.
 * - At most `maxViewers` streams; more get 503 with Retry-After.
 * - A viewer that does not read (its unsent data passes MAX_BUFFERED_BYTES
 *   beyond its first message) is dropped instead of growing the gateway's
 *   memory; its browser reconnects.
 * - The history, most of a viewer's first message, is serialised once per
 *   tick however many viewers open the stream.
 * - The history the charts show is a ring of small points (a few numbers per
 *   backend), `historySec` long, kept between viewers; where nobody watched
 *   there are no samples, and a gap marker breaks the lines.
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Balancer } from '../balancer';
import type { EventRing } from './event-ring';
import { buildFrame, pointOf, type Frame, type Point } from './frame';

/**
 * Unread bytes a viewer may have queued before it is dropped: room for the
 * first message (the history: about 0.5 MB with 50 backends and 5 minutes)
 * plus tens of seconds of ticks; at most this much memory per viewer.
 */
const MAX_BUFFERED_BYTES = 1024 * 1024;
/** How long a browser waits before reconnecting after the stream ends (the SSE `retry:` field). */
const RECONNECT_MS = 3000;

export interface StreamOptions {
  maxViewers: number;
  intervalMs: number;
  historySec: number;
}

/** What a page gets on connecting: enough to draw everything at once. */
export interface InitMessage {
  intervalMs: number;
  historySec: number;
  frame: Frame;
  history: Point[];
  events: ReturnType<EventRing['all']>;
}

export class DashboardStream {
  private readonly viewers = new Set<ServerResponse>();
  private readonly history: Point[] = [];
  private readonly maxPoints: number;
  private timer: NodeJS.Timeout | undefined;
  /** Event-ring seq already sent in a tick. */
  private sentSeq = 0;
  /** Shed totals at the previous tick, to turn their growth into events. */
  private lastShed: Record<string, number> | undefined;
  private closed = false;
  /** The history serialised, until the next point (open). */
  private historyJson: string | undefined;
  /** Each viewer's first message size: its bound on unread bytes counts from it. */
  private readonly allowance = new WeakMap<ServerResponse, number>();

  constructor(
    private readonly balancer: Balancer,
    private readonly ring: EventRing,
    private readonly opts: StreamOptions,
  ) {
    this.maxPoints = Math.ceil((opts.historySec * 1000) / opts.intervalMs);
  }

  get viewerCount(): number {
    return this.viewers.size;
  }

  /** Whether the sampling timer runs (only while someone watches). */
  get sampling(): boolean {
    return this.timer !== undefined;
  }

  /** Takes over `res` as an event stream; answers 503 when the viewer cap is reached. */
  open(req: IncomingMessage, res: ServerResponse): void {
    if (this.closed || this.viewers.size >= this.opts.maxViewers) {
      const body = JSON.stringify({ error: 'too many dashboard viewers' });
      res.writeHead(503, {
        'Content-Type': 'application/json; charset=utf-8',
        'Cache-Control': 'no-store',
        'Retry-After': '10',
        'Content-Length': Buffer.byteLength(body),
      });
      res.end(body);
      return;
    }
    // Gone already (it left while a middleware before the balancer ran): its 'close' has
    // fired, so a viewer added now would hold its place, and the sampling timer, for good.
    if (res.destroyed || req.socket.destroyed) return;
    res.writeHead(200, {
      'Content-Type': 'text/event-stream; charset=utf-8',
      'Cache-Control': 'no-store',
      // nginx buffers proxied responses unless told not to; an event stream must not be.
      'X-Accel-Buffering': 'no',
    });
    req.socket.setNoDelay(true);
    this.viewers.add(res);
    const leave = (): void => this.leave(res);
    res.on('close', leave);
    res.on('error', leave);
    if (req.method === 'HEAD') {
      res.end();
      return;
    }
    const frame = buildFrame(this.balancer);
    if (this.timer === undefined) this.start(frame.t);
    const rest: Omit<InitMessage, 'history'> = {
      intervalMs: this.opts.intervalMs,
      historySec: this.opts.historySec,
      frame,
      events: this.ring.all(),
    };
    // The history is most of the message (1 MB with 50 backends and 5 minutes, 12 ms to
    // serialise; 12 MB with an hour) and changes once a tick: serialised once a tick, not
    // once a viewer, so opening the stream in a loop cannot stall the gateway.
    this.historyJson ??= JSON.stringify(this.history);
    const head = JSON.stringify(rest);
    const message = `retry: ${RECONNECT_MS}\nevent: init\ndata: ${head.slice(0, -1)},"history":${this.historyJson}}\n\n`;
    // Its first message may be larger than the bound on what a viewer leaves unread: the
    // bound counts from it, or a viewer far away was dropped at its first tick, for good.
    this.allowance.set(res, Buffer.byteLength(message));
    this.write(res, message);
  }

  /** Ends every stream and stops the timer; later connections get 503. */
  close(): void {
    this.closed = true;
    this.stop();
    for (const res of this.viewers) res.end();
    this.viewers.clear();
  }

  private start(nowMs: number): void {
    const last = this.history[this.history.length - 1];
    if (last !== undefined && nowMs - last.t > 2 * this.opts.intervalMs) {
      this.remember({ ...last, t: last.t + this.opts.intervalMs, gap: true });
    }
    this.sentSeq = this.ring.seq;
    this.lastShed = undefined;
    this.timer = setInterval(() => this.tick(), this.opts.intervalMs);
    this.timer.unref();
  }

  private stop(): void {
    if (this.timer !== undefined) clearInterval(this.timer);
    this.timer = undefined;
  }

  private leave(res: ServerResponse): void {
    if (!this.viewers.delete(res)) return;
    if (this.viewers.size === 0) this.stop();
  }

  private tick(): void {
    const frame = buildFrame(this.balancer);
    const point = pointOf(frame);
    this.remember(point);
    this.noteSheds(frame.shed);
    const events = this.ring.since(this.sentSeq);
    this.sentSeq = this.ring.seq;
    const message = `event: tick\ndata: ${JSON.stringify({ frame, point, events })}\n\n`;
    for (const res of this.viewers) this.write(res, message);
  }

  /** Requests shed since the last tick become one (coalesced) entry per reason. */
  private noteSheds(shed: Record<string, number>): void {
    const before = this.lastShed;
    this.lastShed = shed;
    if (before === undefined) return;
    for (const [reason, total] of Object.entries(shed)) {
      const n = total - (before[reason] ?? 0);
      if (n <= 0) continue;
      this.ring.coalesce(`shed:${reason}`, n, (count) => ({
        level: 'warn',
        event: 'shed',
        backend: null,
        code: reason,
        msg: `shed ${count} request${count === 1 ? '' : 's'} with 503 (${reason})`,
      }));
    }
  }

  private remember(point: Point): void {
    this.historyJson = undefined;
    this.history.push(point);
    if (this.history.length > this.maxPoints)
      this.history.splice(0, this.history.length - this.maxPoints);
  }

  private write(res: ServerResponse, message: string): void {
    // A destroyed response buffers nothing, so the bound below never caught one.
    const bound = MAX_BUFFERED_BYTES + (this.allowance.get(res) ?? 0);
    if (res.destroyed || res.writableLength > bound) {
      res.destroy();
      this.leave(res);
      return;
    }
    res.write(message);
  }
}
