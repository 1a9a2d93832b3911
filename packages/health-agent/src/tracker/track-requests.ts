import { AsyncResource } from 'node:async_hooks';
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Socket } from 'node:net';
import { performance } from 'node:perf_hooks';
import * as v from 'valibot';
import { invalidOption } from '../errors';
import { boolean, parseOptions, strictObject, wrongType } from '../option-errors';
import { WindowHistogram } from './window-histogram';

export const DEFAULT_TRACKER_WINDOW_MS = 10_000;
const WINDOW_SLOTS = 10;
/** Default bound on waiting requests: enough to absorb a burst, never unbounded. */
export const DEFAULT_MAX_QUEUE = 1024;
export const DEFAULT_QUEUE_RETRY_AFTER_S = 1;
/** What an EventSource asks for, alone (docs/agent.md, trackRequests()). */
const EVENT_STREAM = 'text/event-stream';

export interface TrackRequestsOptions {
  /** At most this many requests run the downstream handlers at once; the rest wait in FIFO order. */
  concurrencyLimit?: number;
  /** Waiting requests beyond this are answered 503 at once (default 1024; needs concurrencyLimit). */
  maxQueue?: number;
  /** A request that waited this long without a slot is answered 503 (default: waits until served or aborted). */
  queueTimeoutMs?: number;
  /** Sliding window for rps, error rate and latency, ms (default 10000, a multiple of 100 ms). */
  windowMs?: number;
  /** Serve `snapshot()` as JSON at this path, e.g. '/.well-known/loadwise/stats'. */
  exposePath?: string;
  /** Serve exposePath to non-loopback clients too (default false: loopback only). */
  exposeToRemote?: boolean;
  /**
   * Paths that are neither limited nor counted, e.g. ['/healthz']: the agent's
   * own probe must not wait behind real traffic (a saturated backend is
   * overloaded, not down) nor count as traffic. Exact match on the path.
   */
  bypassPaths?: readonly string[];
  /**
   * Count event streams (requests that accept only `text/event-stream`, as
   * every browser's EventSource sends, answered `text/event-stream`) like any
   * request for as long as they run (default false: such a request counts and
   * waits for a slot like any other until its answer's head says it is a
   * stream, then leaves the counts and gives its slot back). Counted, each held
   * a slot for as long as it ran: eight open streams behind a concurrencyLimit
   * of 8 left none for anything else, and the gateway, which keeps streams out
   * of its own in-flight count after a second, read them as load it did not
   * send.
   */
  countEventStreams?: boolean;
  /** Seconds in the Retry-After header of a 503 (default 1). */
  retryAfterS?: number;
  /** Monotonic clock in ms; injectable for tests (default performance.now). */
  now?: () => number;
}

export interface TrackerSnapshot {
  /** Requests running the downstream handlers now. */
  inFlight: number;
  /** Requests waiting for a slot (only with concurrencyLimit). */
  queued: number;
  concurrencyLimit?: number;
  maxQueue?: number;
  /** Requests completed per second over the window. */
  rps: number;
  /** Share of the handlers' answers in the window that were 5xx, 0..1: the tracker's own 503s (`rejected`) are not answers, a client that left (`aborted`) counts as no error. */
  errorRate: number;
  /** Latency from arrival (including queue wait) to the end of the response; 0 when windowCompleted is 0. */
  latencyMeanMs: number;
  latencyP50Ms: number;
  latencyP90Ms: number;
  latencyP99Ms: number;
  /** The window the figures above cover, ms (shorter right after start). */
  windowMs: number;
  /** Requests completed within the window. */
  windowCompleted: number;
  /** Requests completed since the tracker was created (monotonic). */
  completed: number;
  /** Requests answered 503 because the queue was full or the wait timed out (monotonic). */
  rejected: number;
  /** Requests whose client went away before the response ended, queued or running (monotonic). */
  aborted: number;
  /** Only on an answer to waitForRise (or the `rise` query): true when the rise happened, false on timeout. */
  rose?: boolean;
}

/** Bounds of one waitForRise. */
export interface RiseWait {
  /** Outstanding requests (inFlight + queued) the caller last knew of. */
  from: number;
  /** Answer once outstanding reaches the lowest figure since `from` plus this (>= 1). */
  rise: number;
  /** Answer with `rose: false` after this long, ms. */
  timeoutMs: number;
  signal?: AbortSignal;
}

/**
 * Watches held at once, at most: the watch is for one agent. One more is refused (waitForRise
 * rejects, the endpoint answers 429) rather than answered `rose: false` as a quiet one was:
 * a local client holding eight long polls turned the agent's early reports off unseen.
 */
export const MAX_RISE_WATCHERS = 8;
const WATCHERS_FULL = `${MAX_RISE_WATCHERS} early-report watches are held already: another client is holding the tracker's rise watch`;
/** Longest a rise watch may be held, ms. */
export const MAX_RISE_WAIT_MS = 60_000;

/** Express's `next`: the tracker passes the request on, or an error. */
export type Next = (err?: unknown) => void;

/** The middleware (Express, connect or a plain http handler with a `next`), plus its figures. */
export interface RequestTracker {
  (req: IncomingMessage, res: ServerResponse, next: Next): void;
  snapshot(): TrackerSnapshot;
  /**
   * Resolves with a snapshot as soon as outstanding requests (inFlight +
   * queued) rise by `rise` over the lowest figure since `from` (`rose: true`),
   * or after `timeoutMs` (`rose: false`); an aborted signal or close() ends
   * the wait the same way. Rejects when MAX_RISE_WATCHERS are held already. This is what the agent's early reports watch:
   * a jump is known when it happens, at the cost of one answer per jump, not
   * of a poll per few ms. Also served at exposePath with
   * `?rise=N&from=N&waitMs=N`.
   */
  waitForRise(wait: RiseWait): Promise<TrackerSnapshot>;
  /** Answers every waiting request 503 and stops limiting; later requests pass through uncounted. */
  close(): void;
  readonly options: Readonly<{
    concurrencyLimit?: number;
    maxQueue?: number;
    windowMs: number;
    exposePath?: string;
  }>;
}

interface RiseWatcher {
  floor: number;
  rise: number;
  done: (rose: boolean) => void;
}

interface Waiter {
  req: IncomingMessage;
  res: ServerResponse;
  next: Next;
  arrivedMs: number;
  prev: Waiter | undefined;
  next_: Waiter | undefined;
  queued: boolean;
  timer: NodeJS.Timeout | undefined;
}

const LOOPBACK = /^(127\.|::1$|::ffff:127\.)/;

/**
 * A request a proxy forwarded: its socket is the proxy's. A gateway on the same host
 * (loadwise's sets X-Forwarded-For and X-Real-IP on every request) connects from loopback,
 * so without this any client of the gateway read the stats and held rise long polls.
 */
function proxied(req: IncomingMessage): boolean {
  const h = req.headers;
  return (
    h['x-forwarded-for'] !== undefined ||
    h['x-real-ip'] !== undefined ||
    h.forwarded !== undefined ||
    h.via !== undefined
  );
}

/** Per connection, the callbacks of its responses still waiting behind an earlier one: one 'close' listener a socket. */
const waitingOnSocket = new WeakMap<Socket, Set<() => void>>();

/**
 * Runs `fn` once, when `res` closes or, for a response that has no socket yet
 * (pipelined behind an earlier response on its connection), when the connection
 * closes: Node never emits 'close' on such a response, since it was never given
 * the socket (its abortIncoming only destroys the IncomingMessage).
 */
function onResponseGone(req: IncomingMessage, res: ServerResponse, fn: () => void): void {
  const socket = res.socket ? undefined : req.socket;
  let done = false;
  const gone = (): void => {
    if (done) return;
    done = true;
    res.removeListener('close', gone);
    if (socket) waitingOnSocket.get(socket)?.delete(gone);
    fn();
  };
  res.once('close', gone);
  // Closed already: the client left while middleware before this one ran (an async auth
  // step), and Node emits 'close' once. Listened for then, the request held its slot and
  // its in-flight count for good: a few such clients took every slot of the backend.
  if (res.closed) {
    process.nextTick(gone);
    return;
  }
  if (!socket) return;
  if (socket.closed) {
    process.nextTick(gone);
    return;
  }
  let waiting = waitingOnSocket.get(socket);
  if (!waiting) {
    const set = new Set<() => void>();
    waiting = set;
    waitingOnSocket.set(socket, set);
    // A Set visits what is added while it is iterated: a waiter run by a
    // release during this loop is released too.
    socket.once('close', () => {
      waitingOnSocket.delete(socket);
      for (const f of set) f();
    });
  }
  waiting.add(gone);
}

/**
 * Responses whose 'finish' fired: answered. `writableFinished` alone also read true for an
 * answer written after its client had left: a client gone mid-upload makes body-parser
 * call next(err) at once, and the app's error handler's `res.status(500).end()` on the
 * destroyed socket counted as a completed 5xx (a healthy backend reported half its
 * requests as errors). No 'finish' is emitted for that end.
 */
const finishedAnswers = new WeakSet<ServerResponse>();

function markFinished(this: ServerResponse): void {
  finishedAnswers.add(this);
}

/** The head Node built for `res` (`_header`), whatever form writeHead was given. */
function builtHead(res: ServerResponse): string | undefined {
  const head = (res as { _header?: unknown })._header;
  return typeof head === 'string' ? head : undefined;
}

/** The bytes of the head Node built for `res` (at least 1 when it keeps none). */
function headBytes(res: ServerResponse): number {
  const head = builtHead(res);
  return head === undefined ? 1 : Buffer.byteLength(head);
}

/** The head Node wrote says its body is an event stream. */
const EVENT_STREAM_HEAD = /\r\ncontent-type:[ \t]*text\/event-stream[ \t]*(?:;|\r\n)/i;

/**
 * Calls `onStream` when `res`'s head goes out saying `text/event-stream`. Node writes an
 * implicit head (the first write(), flushHeaders()) through the response's own writeHead,
 * so this sees every head; what it reads is the head Node built (`_header`), whatever
 * form writeHead was given (an object, a flat or nested array, a value array).
 */
function watchStreamHead(res: ServerResponse, onStream: () => void): void {
  const writeHead = res.writeHead;
  res.writeHead = function (this: ServerResponse, ...args: unknown[]) {
    const out = (writeHead as (...a: unknown[]) => ServerResponse).apply(this, args);
    const head = builtHead(this);
    if (head !== undefined && EVENT_STREAM_HEAD.test(head)) onStream();
    return out;
  } as ServerResponse['writeHead'];
}

/** setTimeout's largest delay: a longer one fires after 1 ms (TimeoutOverflowWarning). */
const MAX_TIMER_MS = 2_147_483_647;

/**
 * The options' names and the types of those checked nowhere else: a misspelt name
 * (`concurencyLimit`) gave no limit at all, and `exposeToRemote: 'true'` was false, with
 * no word. The numbers and paths are checked below.
 */
const TRACKER_OPTIONS = strictObject({
  concurrencyLimit: v.optional(v.unknown()),
  maxQueue: v.optional(v.unknown()),
  queueTimeoutMs: v.optional(v.unknown()),
  windowMs: v.optional(v.unknown()),
  exposePath: v.optional(v.unknown()),
  exposeToRemote: v.optional(boolean()),
  bypassPaths: v.optional(v.array(v.unknown(), wrongType('array'))),
  countEventStreams: v.optional(boolean()),
  retryAfterS: v.optional(v.unknown()),
  now: v.optional(v.custom<() => number>((x) => typeof x === 'function', wrongType('function'))),
});

function positiveInt(name: string, value: unknown, max = Number.MAX_SAFE_INTEGER): number {
  if (typeof value === 'number' && Number.isSafeInteger(value) && value > max) {
    throw invalidOption(name, `must be at most ${max}, got ${String(value)}`);
  }
  if (typeof value !== 'number' || !Number.isSafeInteger(value) || value < 1) {
    throw invalidOption(name, `must be a positive integer, got ${String(value)}`);
  }
  return value;
}

/**
 * Counts a backend's own in-flight and queued requests and its traffic, and
 * optionally limits concurrency (a FIFO admission queue, like a worker pool in
 * front of the handlers). `app.use(trackRequests({concurrencyLimit: 8}))`.
 *
 * Cost per request: two closures, one 'close' listener and O(1) arithmetic;
 * the window histogram has fixed memory (see window-histogram.ts).
 */
export function trackRequests(opts: TrackRequestsOptions = {}): RequestTracker {
  parseOptions(TRACKER_OPTIONS, opts);
  const limit =
    opts.concurrencyLimit === undefined
      ? undefined
      : positiveInt('concurrencyLimit', opts.concurrencyLimit);
  const maxQueue =
    opts.maxQueue === undefined
      ? DEFAULT_MAX_QUEUE
      : Number.isSafeInteger(opts.maxQueue) && opts.maxQueue >= 0
        ? opts.maxQueue
        : (() => {
            throw invalidOption(
              'maxQueue',
              `must be an integer >= 0, got ${String(opts.maxQueue)}`,
            );
          })();
  if (opts.maxQueue !== undefined && limit === undefined) {
    throw invalidOption('maxQueue', 'only applies with concurrencyLimit');
  }
  const queueTimeoutMs =
    opts.queueTimeoutMs === undefined
      ? undefined
      : positiveInt('queueTimeoutMs', opts.queueTimeoutMs, MAX_TIMER_MS);
  if (opts.queueTimeoutMs !== undefined && limit === undefined) {
    throw invalidOption('queueTimeoutMs', 'only applies with concurrencyLimit');
  }
  const windowMs = opts.windowMs ?? DEFAULT_TRACKER_WINDOW_MS;
  if (!Number.isSafeInteger(windowMs) || windowMs < 100 || windowMs % 100 !== 0) {
    throw invalidOption(
      'windowMs',
      `must be a multiple of 100 ms, >= 100, got ${String(opts.windowMs)}`,
    );
  }
  const exposePath = opts.exposePath;
  if (
    exposePath !== undefined &&
    (typeof exposePath !== 'string' || !exposePath.startsWith('/') || exposePath.includes('?'))
  ) {
    throw invalidOption('exposePath', 'must be a path starting with "/" and without a query');
  }
  const retryAfterS =
    opts.retryAfterS === undefined
      ? DEFAULT_QUEUE_RETRY_AFTER_S
      : positiveInt('retryAfterS', opts.retryAfterS);
  const now = opts.now ?? (() => performance.now());
  const bypass = new Set<string>();
  for (const p of opts.bypassPaths ?? []) {
    if (typeof p !== 'string' || !p.startsWith('/'))
      throw invalidOption('bypassPaths', `${JSON.stringify(p)} is not a path`);
    bypass.add(p);
  }
  const exposeToRemote = opts.exposeToRemote === true;
  const countEventStreams = opts.countEventStreams === true;

  // Ten slots: the window slides in steps of a tenth of its length.
  const histogram = new WindowHistogram(windowMs / WINDOW_SLOTS, WINDOW_SLOTS, now());

  let inFlight = 0;
  let queued = 0;
  let head: Waiter | undefined;
  let tail: Waiter | undefined;
  let completed = 0;
  let rejected = 0;
  let aborted = 0;
  let closed = false;
  const watchers = new Set<RiseWatcher>();

  /** After every change of inFlight + queued: wakes the rise watchers whose rise happened. */
  const changed = (): void => {
    if (watchers.size === 0) return;
    const outstanding = inFlight + queued;
    for (const w of watchers) {
      if (outstanding >= w.floor + w.rise) w.done(true);
      else if (outstanding < w.floor) w.floor = outstanding;
    }
  };

  const unlink = (w: Waiter): void => {
    if (w.prev) w.prev.next_ = w.next_;
    else head = w.next_;
    if (w.next_) w.next_.prev = w.prev;
    else tail = w.prev;
    w.prev = w.next_ = undefined;
    w.queued = false;
    queued--;
    if (w.timer) clearTimeout(w.timer);
    w.timer = undefined;
  };

  /** The tracker's own 503s (queue full, queue timeout): overload, never a handler's error. */
  const ownAnswers = new WeakSet<ServerResponse>();
  /** Requests this tracker has seen: a second pass (the app and a router) is not counted again. */
  const seen = new WeakSet<IncomingMessage>();

  const reject503 = (res: ServerResponse, reason: string): void => {
    rejected++;
    ownAnswers.add(res);
    if (res.headersSent || res.writableEnded || res.destroyed) return;
    res.statusCode = 503;
    res.setHeader('Retry-After', String(retryAfterS));
    res.setHeader('Content-Type', 'text/plain; charset=utf-8');
    res.setHeader('Connection', 'close');
    res.end(`Service Unavailable: ${reason}\n`);
  };

  /** Called once when a running request's response ends or its client goes away. */
  const release = (): void => {
    inFlight--;
    // Hand the freed slot to the oldest waiter (FIFO). Waiters whose clients
    // left were unlinked when they left, so head is always live.
    while (limit !== undefined && inFlight < limit && head) {
      const w = head;
      unlink(w);
      // Pipelined behind the response that just ended, on a connection that has closed:
      // Node tells this response's 'close' to the connection after this release, and the
      // waiter was run for a client that had left (its end is counted as aborted).
      if (w.req.socket?.destroyed === true) continue;
      run(w.req, w.res, w.next);
    }
    changed();
  };

  /** Answers that turned out event streams: out of the counts from their head on. */
  const streams = new WeakSet<ServerResponse>();

  const run = (req: IncomingMessage, res: ServerResponse, next: Next): void => {
    inFlight++;
    if (countEventStreams || req.headers.accept !== EVENT_STREAM) {
      onResponseGone(req, res, release);
      return next();
    }
    // What an EventSource asks for. Counted and limited like any request until its head
    // says it is a stream: decided on the request's Accept alone, any client skipped the
    // limit and the counts on any route (a JSON route behind concurrencyLimit 2 ran 20 at
    // once, none of them counted).
    let released = false;
    const releaseOnce = (): void => {
      if (released) return;
      released = true;
      release();
    };
    onResponseGone(req, res, releaseOnce);
    watchStreamHead(res, () => {
      streams.add(res);
      // Not inside the handler's writeHead: the freed slot runs the next waiter, whose
      // handler would run inside this one's, and a waiter that is a stream too inside that:
      // 1,000 queued EventSources nested 1,000 handlers deep and overflowed the stack
      // (an uncatchable abort: 'async hook stack has become corrupted').
      process.nextTick(releaseOnce);
    });
    next();
  };

  const middleware = ((req: IncomingMessage, res: ServerResponse, next: Next): void => {
    if (exposePath !== undefined && isStatsRequest(req, exposePath)) {
      serveStats(req, res);
      return;
    }
    if (closed || (bypass.size > 0 && bypass.has(pathOf(req))) || seen.has(req)) {
      next();
      return;
    }
    // Counted once: passed again (the tracker on the app and on a router), a request
    // queued behind the slot it held itself, and counted twice as a completion.
    seen.add(req);
    if (res.closed || res.writableEnded) {
      // Over before the tracker ran: answered by middleware before it that still called
      // next() (nothing to count), or its client left while that middleware ran (an async
      // auth step): aborted, and never run. Run, its handlers took no slot, so clients that
      // sent and left ran without the limit while the agent reported nothing in flight.
      if (!res.writableFinished) {
        completed++;
        aborted++;
      }
      return;
    }
    res.once('finish', markFinished);
    const arrivedMs = now();
    // What the connection had sent before this request: an answer that put bytes on it
    // after was written while the client was there (below).
    // A pipelined response gets the connection only when those before it are done: until
    // then nothing it writes goes out, and the bytes that do are an earlier answer's.
    let sentBefore = res.socket ? res.socket.bytesWritten : Infinity;
    if (!res.socket) res.once('socket', (socket: Socket) => (sentBefore = socket.bytesWritten));
    // One 'close' listener accounts for every tracked request, whether it ran,
    // waited, was rejected or was abandoned. ServerResponse emits 'close' after
    // 'finish' and also when the connection drops first (Node >= 12), so
    // its 'finish' (finishedAnswers) tells completed from aborted; a pipelined response
    // still waiting for the connection counts when the connection closes.
    onResponseGone(req, res, () => {
      // An event stream (run): not a request the backend is working on, nor a latency;
      // but one the backend refused (a 503 with `retry:`) and ended is an answer.
      if (streams.has(res) && !(finishedAnswers.has(res) && res.statusCode >= 400)) return;
      completed++;
      // A 5xx answer that went out for a whole request is the handler's even when the
      // response was then destroyed (Express's final handler after headers, a proxy failing
      // mid-body): read as a client that left, a backend failing that way reported an error
      // rate of 0. Went out: bytes reached the connection since the request came; a 500
      // written after its client left (an error handler on body-parser's 'request aborted',
      // a handler on req 'aborted') meets a destroyed socket, which takes nothing. A request
      // cut mid-body is its client's leaving whatever was written (the socket may still
      // take the bytes then, half-closed). At least the head's bytes: a `100 Continue`
      // (or 103) sent meanwhile is not the answer.
      const finished =
        finishedAnswers.has(res) ||
        (res.headersSent &&
          res.statusCode >= 500 &&
          req.complete &&
          (req.socket?.bytesWritten ?? 0) - sentBefore >= headBytes(res));
      // Not a 503 of its own that never went out: pipelined behind an earlier one, whose
      // `Connection: close` ended the connection. The tracker closed it, not the client
      // (3,000 pipelined requests showed 2,374 clients gone that had not left).
      if (!finished && !ownAnswers.has(res)) aborted++;
      // Not the tracker's own 503s: a fast refusal recorded as a request made a saturated
      // backend's latency look lower and, as an error, its error rate higher, which the
      // gateway penalises again beside the overload it already sees. Nor a client that left:
      // gateways charge a backend neither for overload nor for a client's leaving, and a
      // healthy backend behind impatient clients reported half its requests as errors.
      if (ownAnswers.has(res)) return;
      // An aborted request still counts in rps, and not in the error rate's denominator:
      // ninety clients leaving beside ten 500s made a backend failing every answer report 0.1.
      histogram.record(now(), now() - arrivedMs, finished && res.statusCode >= 500, finished);
    });
    if (limit === undefined || inFlight < limit) {
      run(req, res, next);
      changed();
      return;
    }
    if (queued >= maxQueue) {
      reject503(res, 'request queue is full');
      return;
    }
    const w: Waiter = {
      req,
      res,
      // Run later from another request's 'close': bound to this request's async context,
      // or its handlers ran in the context of the request whose end freed the slot (an
      // OpenTelemetry span, a logger's request id, a tenant in AsyncLocalStorage).
      next: AsyncResource.bind(next),
      arrivedMs,
      prev: tail,
      next_: undefined,
      queued: true,
      timer: undefined,
    };
    if (tail) tail.next_ = w;
    else head = w;
    tail = w;
    queued++;
    changed();
    // A client that disconnects while waiting leaves the queue and is never run.
    onResponseGone(req, res, () => {
      if (w.queued) {
        unlink(w);
        changed();
      }
    });
    if (queueTimeoutMs !== undefined) {
      w.timer = setTimeout(() => {
        if (!w.queued) return;
        unlink(w);
        changed();
        reject503(res, 'timed out waiting for a worker slot');
      }, queueTimeoutMs);
      w.timer.unref();
    }
  }) as RequestTracker;

  const snapshot = (): TrackerSnapshot => {
    const t = now();
    const s = histogram.stats(t);
    const spanMs = Math.min(s.spanMs, windowMs);
    const snap: TrackerSnapshot = {
      inFlight,
      queued,
      rps: (s.count * 1000) / spanMs,
      errorRate: s.answered === 0 ? 0 : s.errors / s.answered,
      latencyMeanMs: s.count === 0 ? 0 : s.sumMs / s.count,
      latencyP50Ms: s.p50Ms,
      latencyP90Ms: s.p90Ms,
      latencyP99Ms: s.p99Ms,
      windowMs: Math.round(spanMs),
      windowCompleted: s.count,
      completed,
      rejected,
      aborted,
    };
    if (limit !== undefined) {
      snap.concurrencyLimit = limit;
      snap.maxQueue = maxQueue;
    }
    return snap;
  };

  const waitForRise = (wait: RiseWait): Promise<TrackerSnapshot> =>
    new Promise((resolve, reject) => {
      const answer = (rose: boolean): TrackerSnapshot => ({ ...snapshot(), rose });
      const outstanding = inFlight + queued;
      const from = wait.from >= 0 ? wait.from : outstanding;
      const floor = outstanding < from ? outstanding : from;
      const rise = wait.rise >= 1 ? wait.rise : 1;
      if (outstanding >= floor + rise) return resolve(answer(true));
      if (closed || wait.signal?.aborted) return resolve(answer(false));
      if (watchers.size >= MAX_RISE_WATCHERS) return reject(new Error(WATCHERS_FULL));
      const onAbort = (): void => w.done(false);
      const timer = setTimeout(
        () => w.done(false),
        Math.min(Math.max(0, wait.timeoutMs), MAX_RISE_WAIT_MS),
      );
      timer.unref();
      const w: RiseWatcher = {
        floor,
        rise,
        done: (rose) => {
          if (!watchers.delete(w)) return;
          clearTimeout(timer);
          wait.signal?.removeEventListener('abort', onAbort);
          resolve(answer(rose));
        },
      };
      watchers.add(w);
      wait.signal?.addEventListener('abort', onAbort, { once: true });
    });

  /** `?rise=N&from=N&waitMs=N` on exposePath: a long poll on waitForRise. Undefined: a plain read. */
  const riseQuery = (req: IncomingMessage): RiseWait | 'bad' | undefined => {
    const url = req.url ?? '';
    const q = url.indexOf('?');
    if (q < 0) return undefined;
    const params = new URLSearchParams(url.slice(q + 1));
    if (!params.has('rise')) return undefined;
    const int = (name: string, max: number): number | undefined => {
      const v = params.get(name);
      if (v === null || !/^\d{1,9}$/.test(v)) return undefined;
      const n = Number(v);
      return n <= max ? n : undefined;
    };
    const rise = int('rise', 1_000_000);
    const from = int('from', 1_000_000_000);
    const timeoutMs = int('waitMs', MAX_RISE_WAIT_MS);
    if (rise === undefined || rise < 1 || from === undefined || timeoutMs === undefined)
      return 'bad';
    return { rise, from, timeoutMs };
  };

  const serveStats = (req: IncomingMessage, res: ServerResponse): void => {
    const remote = req.socket.remoteAddress ?? '';
    if (!exposeToRemote && (!LOOPBACK.test(remote) || proxied(req))) {
      res.statusCode = 403;
      res.setHeader('Content-Type', 'text/plain; charset=utf-8');
      res.end('Forbidden: loadwise stats are served to loopback clients only\n');
      return;
    }
    if (req.method !== 'GET' && req.method !== 'HEAD') {
      res.statusCode = 405;
      res.setHeader('Allow', 'GET, HEAD');
      res.end();
      return;
    }
    const send = (snap: TrackerSnapshot): void => {
      if (res.writableEnded || res.destroyed) return;
      const body = JSON.stringify(snap);
      res.statusCode = 200;
      res.setHeader('Content-Type', 'application/json');
      res.setHeader('Cache-Control', 'no-store');
      res.setHeader('Content-Length', Buffer.byteLength(body));
      res.end(req.method === 'HEAD' ? undefined : body);
    };
    const wait = riseQuery(req);
    if (wait === undefined) return send(snapshot());
    if (wait === 'bad') {
      res.statusCode = 400;
      res.setHeader('Content-Type', 'text/plain; charset=utf-8');
      res.end('Bad Request: rise (>= 1), from and waitMs (<= 60000) must be integers\n');
      return;
    }
    // A client that goes away ends its watch (the agent aborts it when it stops).
    const controller = new AbortController();
    onResponseGone(req, res, () => controller.abort());
    void waitForRise({ ...wait, signal: controller.signal }).then(send, (err: Error) => {
      if (res.writableEnded || res.destroyed) return;
      res.statusCode = 429;
      res.setHeader('Content-Type', 'text/plain; charset=utf-8');
      res.setHeader('Cache-Control', 'no-store');
      res.end(`${err.message}\n`);
    });
  };

  middleware.snapshot = snapshot;
  middleware.waitForRise = waitForRise;
  middleware.close = (): void => {
    if (closed) return;
    closed = true;
    for (const w of [...watchers]) w.done(false);
    while (head) {
      const w = head;
      unlink(w);
      reject503(w.res, 'server is shutting down');
    }
  };
  Object.defineProperty(middleware, 'options', {
    value: Object.freeze({
      concurrencyLimit: limit,
      maxQueue: limit === undefined ? undefined : maxQueue,
      windowMs,
      exposePath,
    }),
  });
  return middleware;
}

function pathOf(req: IncomingMessage): string {
  const url = req.url ?? '';
  const q = url.indexOf('?');
  return q < 0 ? url : url.slice(0, q);
}

function isStatsRequest(req: IncomingMessage, path: string): boolean {
  const url = req.url ?? '';
  if (!url.startsWith(path)) return false;
  const rest = url.length === path.length ? '' : url[path.length];
  return rest === '' || rest === '?';
}
