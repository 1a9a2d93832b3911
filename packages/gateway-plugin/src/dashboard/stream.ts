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
 *   beyond what was unsent when its first message ended, or, while that
 *   message waits for it to read, MAX_BUFFERED_BYTES of ticks queue behind
 *   it) is dropped instead of growing the gateway's memory; its browser
 *   reconnects. So is one with bytes unsent whose socket has taken none for
 *   the stall timeout (`requestTimeoutMs`), as a stalled status or metrics
 *   reader is: on a small fleet a tick is 2 KB, and a frozen browser's
 *   viewer reached the byte bound only after ten minutes or more, holding
 *   one of `maxViewers` places (10: every other viewer got 503 meanwhile).
 * - The history, most of a viewer's first message, is serialised once per
 *   tick however many viewers open the stream, and in steps (HISTORY_STEP
 *   numbers each, one per turn of the event loop) when it is large, so a
 *   viewer connecting never stalls the gateway: the whole of it at once took
 *   280 ms at 3,000 backends. Ticks that come meanwhile wait for it. Each
 *   part is encoded once and the same Buffer written to every viewer that
 *   joins with it; a viewer with JOIN_QUEUE_BYTES unsent gets no more parts
 *   until it drains. Before, the whole history was queued for a viewer that
 *   did not read, a copy each: 64 MB, +120 MB of RSS for one such viewer
 *   and +601 MB for ten (an hour at 250 ms, 100 backends).
 * - The history the charts show is a ring of points in typed-array columns
 *   (history.ts), `historySec` long, kept between viewers; where nobody
 *   watched there are no samples, and a gap marker breaks the lines. Above
 *   MAX_DETAILED_BACKENDS backends a frame, and so a point, details only that
 *   many (frame.ts): the history's memory and a tick's size do not grow with
 *   the fleet.
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Balancer } from '../balancer';
import {
  awaitsAnswer,
  peerOf,
  progressMark,
  StallClock,
  type Stall,
} from '../observability/backpressure';
import type { EventRing } from './event-ring';
import {
  BackendPicker,
  buildFrame,
  MAX_DETAILED_BACKENDS,
  pointOf,
  type Frame,
  type Point,
} from './frame';
import { History } from './history';

/**
 * Unread bytes a viewer may have queued beyond its first message before it
 * is dropped: tens of seconds of ticks (a tick is at most about 50 KB,
 * MAX_DETAILED_BACKENDS rows); at most this much memory per viewer.
 */
const MAX_BUFFERED_BYTES = 1024 * 1024;
/** How long a browser waits before reconnecting after the stream ends (the SSE `retry:` field). */
const RECONNECT_MS = 3000;
/**
 * A stream ends after this long; its browser reconnects RECONNECT_MS later and gets a new
 * first message. A frozen one (a suspended laptop, a tab the browser stopped) does not,
 * and its place is free: the kernel's send buffer (about 4 MB on Linux) takes a zero-window
 * viewer's ticks for tens of minutes on a small fleet (2 KB a tick) before any stay unsent
 * in the gateway, so neither the stall cut nor the byte bounds reached one before (about
 * 38 minutes measured, holding one of `maxViewers` places).
 */
export const STREAM_LIFETIME_MS = 600_000;
/**
 * Numbers of the history serialised per turn of the event loop for a new
 * viewer: a few ms of JSON.stringify (20 points of 100 backends). A small
 * history (up to this many numbers: 10 minutes of 3 backends) is written at
 * once, as part of the first message, as it always was.
 */
const HISTORY_STEP = 12_000;
/**
 * Unsent bytes past which no more of the history is written to a joining
 * viewer until its socket drains: a viewer that does not read is sent this
 * much of it (and a part), not the whole (64 MB with an hour at 250 ms).
 */
const JOIN_QUEUE_BYTES = 1024 * 1024;

/**
 * Ticks queued behind a first message still being written, at most: past it the viewer is
 * dropped. 8 MiB is minutes of ticks for a fleet the chart details (100 backends at 1 Hz:
 * about 14 minutes), so only a viewer far slower than its history's size is dropped.
 */
const MAX_QUEUED_TICK_BYTES = 8 * 1024 * 1024;

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

/** The history serialised, in parts, for the points with seq in [from, to). */
interface HistoryJson {
  to: number;
  /** The next seq to serialise. */
  next: number;
  /**
   * Encoded once and written as they are to every viewer that joins with
   * them (a string was encoded again for each); each but the first starts
   * with its comma.
   */
  parts: Buffer[];
  done: boolean;
}

/** A viewer whose first message is still being written. */
interface Joining {
  json: HistoryJson;
  /** Parts of `json` written so far. */
  written: number;
  /** Ticks that came meanwhile: written after the first message. */
  ticks: string[];
  ticksBytes: number;
  /** Waiting for 'drain': its unsent bytes passed JOIN_QUEUE_BYTES. */
  paused: boolean;
  /** Bytes of ticks queued since it last drained: past MAX_BUFFERED_BYTES it is dropped. */
  stalledBytes: number;
}

export class DashboardStream {
  private readonly viewers = new Set<ServerResponse>();
  private readonly history: History;
  private readonly picker: BackendPicker;
  private timer: NodeJS.Timeout | undefined;
  /** Event-ring seq already sent in a tick. */
  private sentSeq = 0;
  /** Shed totals at the previous tick, to turn their growth into events. */
  private lastShed: Record<string, number> | undefined;
  private closed = false;
  /** The newest history serialised (or being serialised), shared by the viewers that open meanwhile. */
  private historyJson: HistoryJson | undefined;
  private readonly joining = new Map<ServerResponse, Joining>();
  /** The pending step of the joining viewers' first messages. */
  private stepping: NodeJS.Immediate | undefined;
  /** Each viewer's first message size: its bound on unread bytes counts from it. */
  private readonly allowance = new WeakMap<ServerResponse, number>();
  /** When each viewer's stream ends (STREAM_LIFETIME_MS after its first message). */
  private readonly endsAt = new WeakMap<ServerResponse, number>();
  /**
   * The sampling goes on until then with nobody watching: a stream ended for its lifetime
   * reconnects within RECONNECT_MS, and the history would otherwise have a gap each time.
   */
  private lingerUntilMs = -Infinity;
  /** Viewers seen with nothing unsent since their first message: the stall cut applies to them. */
  private readonly caughtUp = new WeakSet<ServerResponse>();
  /** A viewer with bytes unsent: how long its socket's progress mark has not moved. */
  private readonly progress = new WeakMap<ServerResponse, StallClock>();

  constructor(
    private readonly balancer: Balancer,
    private readonly ring: EventRing,
    private readonly opts: StreamOptions,
    private readonly stall: Stall,
  ) {
    this.history = new History(
      Math.ceil((opts.historySec * 1000) / opts.intervalMs),
      MAX_DETAILED_BACKENDS,
    );
    this.picker = new BackendPicker((sinceMs) => ring.backendsNamedSince(sinceMs));
  }

  /** Backends the history keeps columns for: at most MAX_DETAILED_BACKENDS, whatever the fleet. */
  get historySeries(): number {
    return this.history.seriesCount;
  }

  /** Points in the history. */
  get historyLength(): number {
    return this.history.length;
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
    // Gone already, or queued on a connection that may go (awaitsAnswer): a viewer whose
    // 'close' never comes would hold its place, and the sampling timer, for good.
    if (!awaitsAnswer(req, res)) return;
    res.writeHead(200, {
      'Content-Type': 'text/event-stream; charset=utf-8',
      // no-transform: compression() (mounted before the balancer) leaves the stream alone;
      // it held every event in zlib, and the page saw nothing, not even the head.
      'Cache-Control': 'no-store, no-transform',
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
    const frame = buildFrame(this.balancer, this.picker);
    if (this.timer === undefined) this.start(frame.t);
    const rest: Omit<InitMessage, 'history'> = {
      intervalMs: this.opts.intervalMs,
      historySec: this.opts.historySec,
      frame,
      events: this.ring.all(),
    };
    // The history is most of the message (1.3 MB with 100 backends and 5 minutes, 64 MB
    // with an hour at 250 ms) and changes once a tick: serialised once a tick, not once a
    // viewer, so opening the stream in a loop cannot stall the gateway; and in steps.
    const json = this.historyJsonNow();
    const head = `retry: ${RECONNECT_MS}\nevent: init\ndata: ${JSON.stringify(rest).slice(0, -1)},"history":[`;
    if (json.done && json.parts.length <= 1) {
      const message = `${head}${json.parts[0]?.toString() ?? ''}]}\n\n`;
      // Its first message may be larger than the bound on what a viewer leaves unread: the
      // bound counts from it, or a viewer far away was dropped at its first tick, for good.
      this.allowance.set(res, Buffer.byteLength(message));
      this.write(res, message);
      this.endsAt.set(res, performance.now() + STREAM_LIFETIME_MS);
      return;
    }
    res.write(head);
    this.joining.set(res, {
      json,
      written: 0,
      ticks: [],
      ticksBytes: 0,
      paused: false,
      stalledBytes: 0,
    });
    // One listener for the stream's life (compression's res.off does not reach the ones it
    // moved to its zlib stream): it resumes the first message once the viewer has read.
    res.on('drain', () => {
      const j = this.joining.get(res);
      if (j === undefined) return;
      j.paused = false;
      j.stalledBytes = 0;
      this.stepping ??= setImmediate(() => this.step());
    });
    this.stepping ??= setImmediate(() => this.step());
  }

  /** Ends every stream and stops the timer; later connections get 503. */
  close(): void {
    this.closed = true;
    this.stop();
    if (this.stepping !== undefined) clearImmediate(this.stepping);
    this.stepping = undefined;
    this.joining.clear();
    // A viewer with bytes still unsent (one that stopped reading) is cut: end() queued
    // behind them, so its response never finished, and its connection kept the server's
    // close() waiting until the viewer left, for good if it never did.
    for (const res of this.viewers) {
      if (res.writableLength > 0) res.destroy();
      else res.end();
    }
    this.viewers.clear();
  }

  private start(nowMs: number): void {
    const last = this.history.last();
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
    this.joining.delete(res);
    if (!this.viewers.delete(res)) return;
    if (this.viewers.size === 0 && performance.now() >= this.lingerUntilMs) this.idle();
  }

  /** Nobody watches: the timer stops, and the history's serialisation is let go. */
  private idle(): void {
    this.stop();
    // Nobody to send it to until the next viewer, who may come in an hour.
    this.historyJson = undefined;
  }

  /**
   * Ends the stream of a viewer whose lifetime is over: gracefully when it has read what it
   * was sent (its browser reconnects), cut when it has not (it may be frozen: end() would
   * wait behind what it has not read).
   */
  private expire(res: ServerResponse, nowMs: number): boolean {
    if (nowMs < (this.endsAt.get(res) ?? Infinity)) return false;
    this.lingerUntilMs = nowMs + 2 * RECONNECT_MS;
    if (res.writableLength > 0) res.destroy();
    else res.end();
    this.leave(res);
    return true;
  }

  private tick(): void {
    const frame = buildFrame(this.balancer, this.picker);
    const point = pointOf(frame);
    this.remember(point);
    this.noteSheds(frame.shed);
    const nowMs = performance.now();
    if (this.viewers.size === 0) {
      // Lingering after streams ended for their lifetime: the point is kept (a new first
      // message carries the events), and once the linger is over with nobody back, the
      // timer stops.
      this.sentSeq = this.ring.seq;
      if (nowMs >= this.lingerUntilMs) this.idle();
      return;
    }
    const events = this.ring.since(this.sentSeq);
    this.sentSeq = this.ring.seq;
    const message = `event: tick\ndata: ${JSON.stringify({ frame, point, events })}\n\n`;
    for (const res of this.viewers) {
      if (this.stalled(res, nowMs) || this.expire(res, nowMs)) continue;
      // Its history ends before this point: the tick follows the first message.
      const j = this.joining.get(res);
      if (j === undefined) {
        this.write(res, message);
        continue;
      }
      const bytes = Buffer.byteLength(message);
      j.ticks.push(message);
      j.ticksBytes += bytes;
      // Stopped reading in the middle of its first message: dropped, as it would be after.
      // So is one that reads, but its first message more slowly than ticks come: the ticks
      // queued behind it grew with no bound (a 64 MB history at 50 KB/s against 40 KB/s of
      // ticks: ~50 MB each, ten viewers ~500 MB). Its browser reconnects.
      const stalled = j.paused && (j.stalledBytes += bytes) > MAX_BUFFERED_BYTES;
      if (stalled || j.ticksBytes > MAX_QUEUED_TICK_BYTES) {
        res.destroy();
        this.leave(res);
      }
    }
  }

  /**
   * Cuts `res`, and says so, when it has bytes unsent and its socket has taken none for
   * the stall timeout (checked at each tick, so within an interval of it), once it has
   * caught up with its first message. A viewer with nothing unsent is not stalled.
   */
  private stalled(res: ServerResponse, nowMs: number): boolean {
    const taken = res.writableLength > 0 ? progressMark(res) : undefined;
    if (taken === undefined) {
      this.progress.delete(res);
      if (!this.joining.has(res)) this.caughtUp.add(res);
      return false;
    }
    // Still taking its first message (its history: up to 64 MB): the kernel's send buffer,
    // megabytes, takes more only once a good part of it has drained, so a viewer reading
    // 200 KB/s through a small receive buffer showed no progress for seconds at a time and
    // was cut, again at each reconnect, and never saw the page. Until it has caught up once,
    // only the byte bounds apply.
    if (!this.caughtUp.has(res)) return false;
    // Time with no progress counts only while the loop was free to see some (StallClock):
    // a tick late behind a busy loop runs before the sockets are polled.
    const clock = this.progress.get(res);
    if (clock === undefined) {
      this.progress.set(res, new StallClock(this.opts.intervalMs, taken, nowMs));
      return false;
    }
    if (clock.idleAt(taken, nowMs) < this.stall.timeoutMs) return false;
    // The peer first: a destroyed socket has no remoteAddress any more.
    const peer = peerOf(res.req);
    res.destroy();
    this.leave(res);
    this.stall.onStalled?.(
      `dashboard viewer from ${peer} took no bytes for ${this.stall.timeoutMs} ms; connection cut, its place released`,
    );
    return true;
  }

  /** The history up to the newest point, serialised or on its way (one part done). */
  private historyJsonNow(): HistoryJson {
    if (this.historyJson === undefined) {
      const { firstSeq, endSeq } = this.history;
      this.historyJson = { to: endSeq, next: firstSeq, parts: [], done: false };
      this.serialiseStep(this.historyJson);
    }
    return this.historyJson;
  }

  /** Serialises the next HISTORY_STEP numbers' worth of points of `json`. */
  private serialiseStep(json: HistoryJson): void {
    // Points a tick overwrote meanwhile are left out (the oldest: the first step took them).
    const from = Math.max(json.next, this.history.firstSeq);
    const perPoint = 6 * (1 + this.history.seriesCount);
    const to = Math.min(json.to, from + Math.max(1, Math.floor(HISTORY_STEP / perPoint)));
    if (from < to) {
      const text = JSON.stringify(this.history.points(from, to)).slice(1, -1);
      json.parts.push(Buffer.from(json.parts.length > 0 ? `,${text}` : text));
    }
    json.next = to;
    json.done = to >= json.to;
  }

  /**
   * One turn's work on the first messages still being written: one more part
   * of each history being serialised, and one part to each joining viewer
   * that has less than JOIN_QUEUE_BYTES unsent; the others wait for 'drain'.
   */
  private step(): void {
    this.stepping = undefined;
    const stepped = new Set<HistoryJson>();
    let more = false;
    for (const [res, j] of this.joining) {
      if (res.destroyed) {
        this.leave(res);
        continue;
      }
      if (j.paused) continue;
      if (res.writableLength > JOIN_QUEUE_BYTES) {
        j.paused = true;
        continue;
      }
      if (!j.json.done && j.written >= j.json.parts.length && !stepped.has(j.json)) {
        stepped.add(j.json);
        this.serialiseStep(j.json);
      }
      if (j.written < j.json.parts.length) res.write(j.json.parts[j.written++]!);
      if (j.json.done && j.written >= j.json.parts.length) {
        res.write(']}\n\n');
        this.joining.delete(res);
        // What it has not read of its first message, and the ticks that follow it: the bound
        // on its unread bytes counts from there.
        this.allowance.set(res, res.writableLength + j.ticksBytes);
        for (const tick of j.ticks) this.write(res, tick);
        // Its lifetime counts from here: from its opening, a history slower to take than
        // the lifetime was cut every time, and never seen whole.
        this.endsAt.set(res, performance.now() + STREAM_LIFETIME_MS);
        continue;
      }
      more = true;
    }
    if (more) this.stepping = setImmediate(() => this.step());
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
    // Viewers still being sent the previous one hold it until they are done.
    this.historyJson = undefined;
    this.history.push(point);
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
