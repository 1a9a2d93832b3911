/**
 * One request's way through the balancer: admission → pick → attempt →
 * (retry on another backend) → response or coded error. Every path ends in
 * exactly one of: a proxied response, or a JSON error with a LW_GW_* code.
 *
 * Attempt bookkeeping is exactly-once: `onRequestStart` when an attempt is
 * sent, `onRequestEnd` when it ends (error, or the client response closing),
 * so a backend's in-flight count can neither leak nor go negative.
 *
 * Retries (Envoy `retry_on: connect-failure,reset`, bounded by a Finagle
 * retry budget): only idempotent methods, only requests without a body or
 * with one held in memory (request-body.ts: a body already streamed to the
 * failed backend cannot be replayed), only failures before a response
 * started, and always to a backend not tried yet.
 *
 * Hostile or broken requests (docs/gateway.md, "Slow and hostile clients")
 * are answered by the gateway itself with a coded 4xx, counted
 * (`loadwise_rejected_requests_total`) and logged rate-limited: framing it
 * cannot forward safely, dot-segment paths, a client over its in-flight
 * bound, a body that stalls. None of them counts against a backend.
 */
import type { Waiter } from '../admission/wait-queue';
import type {
  ClientRequest,
  IncomingHttpHeaders,
  IncomingMessage,
  ServerResponse,
} from 'node:http';
import type { Server, Socket } from 'node:net';
import { ClientLimit, clientKey } from '../admission/client-limit';
import { closesForDrain, drainClosesConnections } from '../cluster/listener-drain';
import type { GatewayErrorCode } from '../errors';
import { sendError } from '../error-response';
import { RateLimitedLog } from '../rate-limited-log';
import type { ShedReason, UpstreamErrorKind } from '../observability';
import { formatDecisionHeader } from '../observability';
import { pathForLog } from '../observability/event-log';
import type { Endpoint } from '../strategies/types';
import type { Backend } from '../registry/backend';
import { affinityCookie, cookieIsSecure, hashKeyOf } from './affinity';
import { BodyClock } from './body-clock';
import { pumpBody } from './body-pump';
import { namedByConnection, writeResponseHead } from './response-head';
import { clientAddress, setForwardedHeaders, stripHopByHop } from './forwarded';
import { LoopGuard } from './loop-guard';
import { boundAt, localAddressOf } from './listen-address';
import { checkFraming, checkPath, refusedMethod, type BodyFraming } from './request-checks';
import {
  buffered,
  declaredLength,
  planBody,
  readBody,
  writeBody,
  type BodyPlan,
  type BodyRead,
} from './request-body';
import type { FlowHost } from './flow-host';
import type { BodySource } from './proxy-engine';
import { UpgradeFlow } from './upgrade-flow';
import { cutRoutedUpgrades } from '../upgrade-routing';
import { StreamLane, type LanePlace } from './stream-lane';
import { lingerOnClose } from './linger';
import { cutAnswer } from './reset-socket';
import { closeIdle, retirePool } from '../registry/pool-agent';
import {
  CLIENT_STALLED_CODE,
  CONNECT_TIMEOUT_CODE,
  TIMEOUT_CODE,
  asError,
  errnoOf,
  classify,
  codedError,
  connectedEvent,
  resetOnPooledConnection,
  isBadAnswer,
  isInvalidRequestError,
  isLocalResourceError,
  isTlsRefusal,
  UNASKED_UPGRADE_CODE,
} from './upstream-errors';

/**
 * A read body's plan once the backend's answer is the client's (relayHead): its bytes are
 * sent, and no retry comes after that, so nothing needs them any more.
 */
const ANSWERED_BODY: BodyPlan = { kind: 'buffered', body: Buffer.alloc(0), read: true };
interface Flow {
  req: IncomingMessage;
  res: ServerResponse;
  /**
   * The headers the backend gets: a copy of the request's, changed here (framing spelled
   * once, hop-by-hop and forwarding headers, a body sent again, the loop guard's entry)
   * and handed to http-proxy only while engine.web() runs (startAttempt). `req.headers`
   * stays as the client sent it: Express reads req.ip, req.protocol, req.secure and
   * req.hostname from it whenever they are asked for, and middleware before the balancer
   * asks after it ran (morgan logs at the answer's end, express-session decides a
   * `secure` cookie at writeHead). Changed in place, morgan logged the front proxy as the
   * client and a secure session cookie was never sent.
   */
  headers: IncomingHttpHeaders;
  /** `req.headers` as the app has them, put back after each time `headers` stood in. */
  appHeaders: IncomingHttpHeaders;
  backend: Backend | undefined;
  /** X-Loadwise-Via as the request arrived; each attempt adds this gateway's entry to it. */
  via: string | undefined;
  /** http-proxy's parsed target of the current attempt: identifies its events. */
  target: unknown;
  proxyReq: ClientRequest | undefined;
  attemptOpen: boolean;
  attemptStartMs: number;
  /** The backend's answer started (response headers): it is no longer waited for. */
  responded: boolean;
  /** The current attempt's time to the backend's head, ms. */
  headMs: number;
  /**
   * The current attempt's answer while its head is not yet written to the
   * client (onProxyRes until relayHead, a tick later): an attempt that fails
   * in that time is answered as one that failed before its head.
   */
  answer: IncomingMessage | undefined;
  /** Time the gateway waits for the backend (requestTimeoutMs); paused while the upload waits for the client. */
  firstByteTimer: NodeJS.Timeout | undefined;
  connectTimer: NodeJS.Timeout | undefined;
  /**
   * The client's body idle timeout and minimum rate (clientBodyTimeoutMs, clientBodyMinRate),
   * timed while the upload waits for it; made at its first wait.
   */
  bodyClock: BodyClock | undefined;
  /** How the client's body is framed, read before http-proxy rewrites the headers. */
  framing: BodyFraming;
  /** The per-client bound's key this request holds a slot under. */
  client: string | undefined;
  tried: Set<Endpoint> | undefined;
  retries: number;
  /** It went again after a pooled connection the backend had closed (staleConnection): once. */
  staleRetried: boolean;
  hashKey: string | undefined;
  newCookie: string | undefined;
  reason: string | undefined;
  responseOk: boolean;
  /** The backend answered "overloaded": neither success nor failure (see onProxyRes). */
  overloaded: boolean;
  /** The backend refused it otherwise (a 429): its time is no service time (see onProxyRes). */
  refused: boolean;
  /** A failed attempt may have sent it some bytes (onError): once true, stays true. */
  maybeSent: boolean;
  queued: boolean;
  /** The request's place in the wait queue, while it waits. */
  waiter: Waiter | undefined;
  /** Its response waited behind an earlier one on its connection (handle, finishOnClose). */
  pipelined: boolean;
  done: boolean;
  /** How the body reaches the backend (request-body.ts). */
  body: BodyPlan;
  /**
   * The first bytes of a body longer than requestBuffering.maxBytes (or than the budget
   * let it keep), read before dispatch: the pump writes them before the rest.
   */
  prefix: Buffer | undefined;
  /** Bytes of this request's body charged to requestBuffering.maxTotalBytes. */
  held: number;
  /** Stops the read of its body before dispatch (readBody), while it runs. */
  stopRead: (() => void) | undefined;
  /** Moves a streamed answer to the stream lane (StreamLane.afterMs after its head). */
  streamTimer: NodeJS.Timeout | undefined;
  /** Its place in the stream lane: out of the request bounds (stream-lane.ts). */
  lane: LanePlace | undefined;
}

/** Method, path (pathForLog: no query) and peer of a request for a log line. */
function describe(req: IncomingMessage): string {
  return `${String(req.method).slice(0, 16)} ${pathForLog(req.url)} from ${req.socket?.remoteAddress ?? '?'}`;
}

/**
 * The client response a backend request's answer goes to, as a property of
 * the request: for its informational answers (103 Early Hints: earlyHints
 * below) and to judge a stall (backendStalled). A WeakMap entry per attempt
 * (an ephemeron the young-generation GC must trace) measured 1.04x the
 * keep-alive HPM peer's closed-loop throughput against 1.20x for the code
 * before it in the same rounds; this, 1.24x against 1.18x (docs/bench.md,
 * "103 Early Hints' cost").
 */
const CLIENT_RESPONSE = Symbol('loadwise.clientResponse');
/** Bytes of the answer the client's socket had taken at the backend socket's last timeout. */
const CLIENT_TAKEN = Symbol('loadwise.clientTaken');
/** false: the last timeout found the answer paused; true: its one period after resuming is used. */
const RESUMED_GRACE = Symbol('loadwise.resumedGrace');
/** When the pipe to the client last paused the backend's answer (backpressure), if it still is. */
const PAUSED_AT = Symbol('loadwise.pausedAt');
/** How long the pipe to the client held the backend's answer paused, in all. */
const PAUSED_MS = Symbol('loadwise.pausedMs');
/** The gateway's clock, for the two above. */
const CLOCK = Symbol('loadwise.clock');
/** 103s relayed for this backend request so far. */
const HINTS_SENT = Symbol('loadwise.hintsSent');
/** It was given a connection still being made (not a pooled or handed-over one). */
const FRESH = Symbol('loadwise.fresh');
/** Its new connection was made (TLS: the handshake too): bytes may have reached the backend. */
const CONNECTED = Symbol('loadwise.connected');
type AttemptRequest = ClientRequest & {
  [CLIENT_RESPONSE]?: ServerResponse;
  [HINTS_SENT]?: number;
  [FRESH]?: true;
  [CONNECTED]?: true;
  [CLIENT_TAKEN]?: number;
  [RESUMED_GRACE]?: boolean;
};

type BackendAnswer = IncomingMessage & {
  [PAUSED_AT]?: number;
  [PAUSED_MS]?: number;
  [CLOCK]?: () => number;
};

/**
 * A request head under this (a quarter of Node's 16 KiB limit) cannot be what made its
 * answer's head too large: the backend chose that size (headTooLarge).
 */
const CLIENT_SIZED_HEAD_BYTES = 4096;

/** The bytes of a request's target and header lines, as the client sent them (about). */
function requestHeadBytes(req: IncomingMessage): number {
  let n = (req.url ?? '').length;
  for (const field of req.rawHeaders) n += field.length + 2;
  return n;
}

/** The current attempt's answer: Node keeps it on its request (`req.res`), which the types omit. */
function backendAnswer(flow: Flow): BackendAnswer | undefined {
  return (flow.proxyReq as { res?: BackendAnswer } | undefined)?.res;
}

/**
 * The backend's answer's 'pause' and 'resume' listeners: how long the client's side held it
 * back (a slow reader, a compression stream that takes no more, a pipelined answer waiting
 * its turn), which endAttempt takes out of the backend's latency sample. Counted as time,
 * not judged at the pause: the pause of the pipe's unpipe once the client's response had
 * finished made every answer be timed to its head (a backend that sent its head at once
 * and its body 3 s later read 1.7 ms and drew every client), and a 16 KiB read says
 * "need drain" to the response even when the client takes it at once.
 */
function answerPaused(this: BackendAnswer): void {
  // Not the pipe's unpipe once the client's response has finished: nothing is held then,
  // and the time to the answer's 'close' (an event-loop turn, longer on a busy gateway)
  // is no client's doing.
  const attempt = (this as { req?: AttemptRequest }).req;
  if (attempt?.[CLIENT_RESPONSE]?.writableFinished === true) return;
  if (this[PAUSED_AT] === undefined) this[PAUSED_AT] = this[CLOCK]!();
}

function answerResumed(this: BackendAnswer): void {
  const at = this[PAUSED_AT];
  if (at === undefined) return;
  this[PAUSED_AT] = undefined;
  this[PAUSED_MS] = (this[PAUSED_MS] ?? 0) + this[CLOCK]!() - at;
}

/** How long the client's side has held `answer` back, until `nowMs`. */
function heldMs(answer: BackendAnswer | undefined, nowMs: number): number {
  if (answer === undefined) return 0;
  const at = answer[PAUSED_AT];
  return (answer[PAUSED_MS] ?? 0) + (at === undefined ? 0 : nowMs - at);
}

/** A backend socket's 'timeout', passed on to the request it carries (as Node's own listener). */
function passTimeout(this: Socket): void {
  (this as { _httpMessage?: ClientRequest })._httpMessage?.emit('timeout');
}

/** A backend request's 'timeout' listener (onProxyRes): its socket was silent mid-response. */
function backendStalled(this: ClientRequest): void {
  const answer = (this as { res?: IncomingMessage }).res;
  const self = this as AttemptRequest;
  if (answer?.readableFlowing === false) {
    // The backend's socket is idle because the pipe to the client paused the answer
    // (backpressure). Whose doing is it? The client's, when its socket holds bytes it has
    // not taken: a client that reads slowly on purpose used to get healthy backends charged
    // with timeouts and ejected; it is cut without a charge. Not when the answer has no
    // socket yet (a pipelined request's, buffered until the ones before it end: a long
    // stream ahead of it is no stall), nor when the socket has just drained: the clock
    // starts again. Nor while the client's socket still takes what it was sent: cut only
    // when no write to it completed since the last timeout (a time like nginx's
    // send_timeout, between two writes), where the first one with bytes unsent cut it.
    // What the gateway cannot see is a client reading behind full kernel buffers: its
    // reads free no window for seconds (measured: 16 KiB/s behind ~4 MB, cut after two
    // periods of 5 s), so a slow reader of large answers needs requestTimeoutMs to match.
    const socket = self[CLIENT_RESPONSE]?.socket;
    if (socket?.writableNeedDrain === true) {
      const taken = socket.bytesWritten - socket.writableLength;
      if (self[CLIENT_TAKEN] === taken) {
        this.destroy(codedError('client stopped reading mid-response', CLIENT_STALLED_CODE));
        return;
      }
      self[CLIENT_TAKEN] = taken;
    }
    self[RESUMED_GRACE] = false;
    return restartClock(this);
  }
  // Flowing again, but the clock ran while the client's side held the answer: a timer due
  // as the pipe resumed fires before the backend socket's next read (timers run before
  // I/O in a loop turn), and a loaded machine cut pipelined answers as stalled backends
  // the moment their turn came. One more period, once per pause.
  if (self[RESUMED_GRACE] === false) {
    self[RESUMED_GRACE] = true;
    return restartClock(this);
  }
  this.destroy(codedError('backend stalled mid-response', TIMEOUT_CODE));
}

/**
 * The backend socket's idle clock starts again. Node tells a request of its socket's
 * timeout once per setTimeout() (a `once` listener it does not add again), so re-arming
 * the socket alone was never heard: a stall after the first re-arm was never cut. The
 * listener goes with the request, never left on a socket the pool hands to the next one.
 */
function restartClock(req: ClientRequest): void {
  const own = req.socket;
  if (!own || !own.timeout) return;
  if (!own.listeners('timeout').includes(passTimeout)) {
    own.on('timeout', passTimeout);
    req.once('close', () => own.off('timeout', passTimeout));
  }
  own.setTimeout(own.timeout);
}

/**
 * A backend request's 'upgrade' listener: a 101 to a request that asked for
 * none (a plain request's Upgrade header never reaches a backend; upgrades
 * take upgrade-flow.ts). Without a listener Node destroys the socket and
 * reports nothing, and the request waited requestTimeoutMs for a 504 blamed
 * on a timeout. The socket goes, and the attempt fails at once, as the
 * backend's error (retried where the request may be).
 */
function backendUpgradedUnasked(this: ClientRequest, _res: IncomingMessage, socket: Socket): void {
  socket.destroy();
  this.emit(
    'error',
    codedError('the backend switched protocols (101) unasked', UNASKED_UPGRADE_CODE),
  );
}

/**
 * 103s relayed per request at most. Browsers act on the first (Chrome ignores
 * the rest); without a cap, a backend writing 103s without end to a client that
 * does not read them grew the gateway's memory by 387 MB in 2 s.
 */
const MAX_EARLY_HINTS = 2;

/**
 * A backend's `103 Early Hints` reaches the client (http-proxy relays no 1xx):
 * its `Link` headers only, so the browser can preload while the backend
 * works, as Envoy relays them. Never after the response head, never to an
 * HTTP/1.0 client (RFC 9110 §15.2), never once the client has gone, at most
 * MAX_EARLY_HINTS a request; a 102 or another 1xx is dropped, as before.
 */
function earlyHints(
  this: ClientRequest,
  info: { statusCode: number; headers: IncomingHttpHeaders },
): void {
  if (info.statusCode !== 103) return;
  const hinted = this as AttemptRequest;
  const res = hinted[CLIENT_RESPONSE];
  const link = info.headers.link;
  if (!res || link === undefined || res.headersSent || res.destroyed) return;
  const sent = hinted[HINTS_SENT] ?? 0;
  // Hints are an optimisation: none while the client's socket holds unsent bytes.
  if (sent >= MAX_EARLY_HINTS || res.socket?.writableNeedDrain === true) return;
  hinted[HINTS_SENT] = sent + 1;
  const req = res.req;
  if (req.httpVersionMajor < 1 || (req.httpVersionMajor === 1 && req.httpVersionMinor < 1)) return;
  try {
    // Several Links arrive joined by ", " (Node joins repeated headers): split before each
    // `<`, the space with the comma, since Node refuses a value that does not start with `<`.
    res.writeEarlyHints({ link: String(link).split(/\s*,\s*(?=<)/) });
  } catch {
    // A Link value Node's validator refuses (not `<uri>; param=...`): those hints are
    // dropped. Thrown here, inside the client parser's callback, it killed the process.
  }
}

/** A request's flow record before its first attempt. */
function newFlow(
  req: IncomingMessage,
  res: ServerResponse,
  headers: IncomingHttpHeaders,
  framing: BodyFraming,
  client: string | undefined,
  body: BodyPlan,
  via: string | undefined,
): Flow {
  return {
    req,
    res,
    headers,
    appHeaders: req?.headers ?? {},
    backend: undefined,
    via,
    target: undefined,
    proxyReq: undefined,
    attemptOpen: false,
    attemptStartMs: 0,
    responded: false,
    headMs: 0,
    answer: undefined,
    firstByteTimer: undefined,
    connectTimer: undefined,
    bodyClock: undefined,
    framing,
    client,
    tried: undefined,
    retries: 0,
    staleRetried: false,
    hashKey: undefined,
    newCookie: undefined,
    reason: undefined,
    responseOk: true,
    overloaded: false,
    refused: false,
    maybeSent: false,
    queued: false,
    waiter: undefined,
    pipelined: false,
    done: false,
    body,
    prefix: undefined,
    held: 0,
    stopRead: undefined,
    streamTimer: undefined,
    lane: undefined,
  };
}

/**
 * What `flows` maps a request to once it is over (finish): no attempt open, done, so the late
 * http-proxy events of a finished request are ignored as before. It does not refer to the
 * request. A WeakMap entry is weak only for a full (mark-compact) GC: V8's scavenger
 * treats the values of a WeakMap as strong, and a Flow holds its request, so a finished
 * Flow left in the map would keep its request, response, closures and listeners alive
 * through every scavenge until they were promoted (docs/bench.md, "Where the time goes").
 */
const FINISHED: Flow = Object.freeze<Flow>({
  ...newFlow(
    undefined as unknown as IncomingMessage,
    undefined as unknown as ServerResponse,
    {},
    'none',
    undefined,
    { kind: 'stream' },
    undefined,
  ),
  done: true,
});

/** The server a request came through (undefined for a socket of no server's). */
function serverOf(req: IncomingMessage): Server | undefined {
  return (req.socket as { server?: Server }).server;
}

export class RequestFlow {
  private readonly flows = new WeakMap<IncomingMessage, Flow>();
  readonly upgrades: UpgradeFlow;
  /** Per-client in-flight bound (maxInFlightPerClient), undefined when off. */
  readonly clients: ClientLimit | undefined;
  /** Long streamed answers, out of the request bounds (`streams`), undefined when off. */
  readonly lane: StreamLane | undefined;
  private readonly log: RateLimitedLog;
  /** Connections answered with `Connection: close` by reject(): requests pipelined behind are not served. */
  private readonly closing = new WeakSet<Socket>();
  /**
   * Per connection, its flows whose response waits behind an earlier one
   * (handle): one 'close' listener a connection, however deep the pipeline.
   */
  private readonly waitingOn = new WeakMap<Socket, Set<Flow>>();
  /** Requests admitted and not finished yet (graceful close waits for them). */
  active = 0;
  /** Bytes of request bodies read before dispatch and held now (requestBuffering.maxTotalBytes). */
  bufferedBytes = 0;
  private idleWaiters: Array<{ servers: boolean; done: () => void }> = [];
  /**
   * The servers requests came from, until their 'close' (stopped listening
   * and every connection ended). A graceful close waits for one that has
   * stopped listening to lose its connections: their requests are still
   * served (see handle()).
   */
  private readonly servers = new Map<Server, () => void>();
  private lastServer: Server | undefined;
  /** The flow whose attempt engine.web() is sending (synchronously): see pipeTaken(). */
  private sending: Flow | undefined;
  /** One object for every attempt: which flow it serves is `sending`. */
  private readonly bodySource: BodySource = {
    pipe: (proxyReq: ClientRequest) => this.pipeTaken(proxyReq),
  };

  /**
   * Every response's 'close' listener, one function for all: its flow is
   * found through the response's request (a closure per request cost its
   * allocation and `once`'s wrapper on every request).
   */
  private readonly onResponseClose: (this: ServerResponse) => void;

  constructor(private readonly core: FlowHost) {
    const flows = this.flows;
    const finish = (flow: Flow): void => this.finish(flow);
    this.onResponseClose = function (this: ServerResponse): void {
      const flow = flows.get(this.req);
      if (flow !== undefined) finish(flow);
    };
    this.upgrades = new UpgradeFlow(
      core,
      () => this.wakeIdleWaiters(),
      (req, res) => this.handle(req, res),
    );
    const max = core.options.maxInFlightPerClient;
    this.clients = max === undefined ? undefined : new ClientLimit(max);
    const streams = core.options.streams;
    this.lane =
      streams &&
      new StreamLane(streams.afterMs, streams.maxPerClient, streams.maxOpen, streams.contentTypes);
    this.log = new RateLimitedLog(core.options.logger, core.now);
  }

  /** The middleware body. Never throws. */
  handle(req: IncomingMessage, res: ServerResponse): void {
    const c = this.core;
    // Node hands pipelined requests to the app as it parses them, before the
    // refused one's answer is out. Those behind it stay unanswered: Node
    // writes the answers in order and ends the connection after the refusal's
    // (`Connection: close`). Ending the socket here cut the answers still
    // queued before the refusal, a processed POST's among them.
    if (this.closing.has(req.socket)) return;
    // The client is gone already (it left while a middleware before this one, an async
    // one, ran): nobody to answer, and the response's 'close' has fired, so nothing
    // taken below (a client slot, an in-flight place) would ever be given back.
    if (req.socket.destroyed) return;
    // Answered already by a middleware before this one (a timeout middleware's 503 while
    // an async auth step still ran, which then called next()): its 'close' has fired, so
    // a client slot taken here was held until the connection closed (every request from
    // that address got 429 meanwhile) and lb.close() waited out its grace. Nothing to
    // forward. One whose head is out but not its end cannot take a backend's answer:
    // cut, as Node does an answer its handler threw in.
    if (res.headersSent) {
      if (!res.writableEnded) cutAnswer(res);
      return;
    }
    // A 'timeout' emitted on the request by its socket (the server's or the app's
    // setTimeout) rather than connect-timeout's timer: no `req.timedout`, but its
    // responder has passed its 503 on all the same (timeoutAnswered).
    if (req.listenerCount('timeout') > 0) req.once('timeout', () => timeoutEmitted.add(req));
    const server = this.noteServerOf(req);
    if (c.closed) {
      res.shouldKeepAlive = false;
      return this.shed(res, 'LW_GW_CLOSED', 'draining', 1);
    }
    if (c.draining) {
      // Shutting down: this connection should go to another instance, at
      // once, or over closeListener's drainMs when it closes this server's
      // connections gradually (its decision for this answer: taken now for one that was
      // under way when it was called).
      if (closesForDrain(server, res, true)) res.shouldKeepAlive = false;
      // Unless the server has stopped listening (server.close() first, as the
      // shutdown recipe and a worker replaced by runWorkers' reload() do): the
      // connection was accepted before, so no other instance can take this
      // request; serve it (Connection: close, within the grace) as nginx does
      // on a graceful stop, rather than fail it.
      if (server?.listening !== false) return this.shed(res, 'LW_GW_DRAINING', 'draining', 1);
    }
    if (c.overload?.overloaded) {
      return this.shed(res, 'LW_GW_OVERLOADED', 'overloaded', c.overload.retryAfterSec());
    }
    const aq = c.acceptQueue;
    if (aq) {
      aq.noteRequest(localAddressOf(req.socket));
      if (aq.shed()) return this.shed(res, 'LW_GW_OVERLOADED', 'overloaded', aq.retryAfterSec());
    }
    const o = c.options;
    const framing = checkFraming(req);
    if (!framing.ok) {
      const { detail } = framing;
      return this.reject(req, res, 'LW_GW_BAD_REQUEST', detail, true, undefined, detail);
    }
    // What the backend gets, changed on a copy (Flow.headers): the app keeps req.headers.
    let out: IncomingHttpHeaders;
    try {
      out = { ...req.headers };
    } catch (err) {
      // A middleware's getter on req.headers that throws (http.request() read it here before).
      const e = asError(err);
      const detail = `the request's headers could not be read: ${e.name}: ${e.message}`;
      return this.reject(req, res, 'LW_GW_PROXY_ERROR', detail, framing.framing !== 'none');
    }
    // The framing goes on in the one spelling every parser reads: `Transfer-Encoding:
    // CHUNKED` and `Content-Length: 0003` are valid, and were forwarded as the client
    // spelled them, for a lax backend to read differently than the gateway did.
    if (framing.framing === 'chunked') {
      if (out['transfer-encoding'] !== 'chunked') out['transfer-encoding'] = 'chunked';
    } else if (framing.framing === 'length' && out['content-length']!.startsWith('0')) {
      out['content-length'] = out['content-length']!.replace(/^0+(?=\d)/, '');
    }
    const refused = refusedMethod(req.method);
    if (refused) {
      const close = framing.framing !== 'none';
      return this.reject(req, res, 'LW_GW_METHOD_NOT_ALLOWED', refused, close);
    }
    // Sent by this gateway and come back (loop-guard.ts): on its own connection (a backend is
    // the gateway itself), or too many times (a loop through another proxy). Proxied again,
    // it would come back again, for as long as there were sockets.
    const via = LoopGuard.incoming(req);
    const looped = c.loops.loopedBackend(via);
    if (looped !== undefined && c.loops.isLoop(via!, c.loopedBack(looped, req.socket))) {
      const detail = `came back through backend ${looped}: a loop`;
      return this.reject(req, res, 'LW_GW_LOOP', detail, framing.framing !== 'none');
    }
    if (o.forwardMountPath) {
      const original = (req as { originalUrl?: string }).originalUrl;
      if (original) req.url = original;
    }
    // Before http-proxy joins the backend's base path to it, and after the
    // mount path is (or is not) put back: the path as the backend gets it.
    const badPath = checkPath(req.url, req.headers.host);
    if (badPath) {
      const close = framing.framing !== 'none';
      return this.reject(req, res, 'LW_GW_BAD_PATH', badPath, close, undefined, badPath);
    }
    const body = planBody(req, out);
    if (body.kind === 'lost') {
      // Fails before any backend is picked: a gateway mistake, not a backend's. Counted
      // with the other answers the gateway gives itself, so a dashboard sees it.
      c.metrics.onRequestRejected('LW_GW_BODY_CONSUMED');
      c.logLine('body-consumed', `${req.method} ${pathForLog(req.url)}: ${body.detail}`, {
        event: 'body-consumed',
        code: 'LW_GW_BODY_CONSUMED',
        method: req.method,
        path: pathForLog(req.url),
      });
      // Still on the connection: closed after the answer, as other refusals before a body
      // are (lingerAfter), rather than read through on a keep-alive connection.
      if (body.unread) this.closeAfterAnswer(req, res);
      return sendError(res, 'LW_GW_BODY_CONSUMED', undefined, body.detail);
    }
    // Before the headers change: setForwardedHeaders appends to X-Forwarded-For.
    const address = clientAddress(req, o.trustForwarded);
    // The stream lane's per-client bound keys its streams the same way.
    const client = this.clients || this.lane ? clientKey(address) : undefined;
    if (this.clients && client !== undefined) {
      if (!this.clients.acquire(client)) {
        const detail = `${this.clients.max} requests of ${client} in flight`;
        return this.reject(req, res, 'LW_GW_CLIENT_LIMIT', detail, framing.framing !== 'none', 1);
      }
    }
    const flow = newFlow(req, res, out, framing.framing, client, body, via);
    this.flows.set(req, flow);
    this.active++;
    c.budget?.onRequest();
    stripHopByHop(out);
    setForwardedHeaders(req, o.trustForwarded, o.trustHeaders, address, out);
    if (o.affinity) {
      const k = hashKeyOf(req, o.affinity, address);
      flow.hashKey = k.key;
      flow.newCookie = k.newCookie;
    }
    res.on('close', this.onResponseClose);
    // A pipelined request's response waits, without a socket, behind the one before it.
    // If the connection closes then, Node destroys the request but never emits the
    // response's 'close': the flow would hold its client slot, its queue place or its
    // backend attempt for good. The connection's own 'close' finishes it instead.
    if (!res.socket) this.finishOnClose(req.socket, flow);
    const read = this.bodyRead(flow);
    if (read === undefined) return this.start(flow);
    // The body idle timeout and minimum rate run while the gateway reads a body before
    // dispatch, as they do while the pump streams one.
    this.waitForClient(flow, 0);
    flow.stopRead = readBody(req, read, (result) => {
      flow.stopRead = undefined;
      flow.bodyClock?.paused();
      if (flow.done || result === undefined) return; // the client left; finish() cleans up
      if (result === 'too-long') {
        // Left waiting for a body that would never fit, the request was never answered.
        const detail = 'the body is longer than its Content-Length (changed by a middleware?)';
        return this.reject(flow.req, flow.res, 'LW_GW_PROXY_ERROR', detail, true);
      }
      if (result.kind === 'whole') {
        // Sent with its length, chunked or not (the headers the backend gets say so).
        flow.body = buffered(flow.headers, result.body, true);
      } else {
        flow.prefix = result.prefix;
      }
      this.start(flow);
    });
  }

  /**
   * The app answers this request itself: connect-timeout, in its default mode
   * (`respond: true`), sets `req.timedout` and passes a 503 to next(err) from its
   * 'timeout' listener, and Express's final handler writes it once the request's body
   * has ended. The balancer then neither dispatches nor answers: a dispatch at the body's
   * end sent a POST to a backend for a client answered 503 on the same event, and an
   * answer of the balancer's before the final handler's (a 408 for a stalled body, a
   * backend's early answer) made its write throw ERR_HTTP_HEADERS_SENT outside any
   * handler, which ended the process. The attempt, if any, is cancelled (not the
   * backend's failure); the flow ends with the app's answer ('close'). With `respond:
   * false` (no 'timeout' listener) nobody answers for the balancer: it goes on.
   */
  private appAnswers(flow: Flow): boolean {
    if (flow.res.headersSent || !timeoutAnswered(flow.req)) return false;
    flow.stopRead?.();
    this.cancelAttempt(flow);
    return true;
  }

  private start(flow: Flow): void {
    // Pipelined behind an answer still going out (its response has no socket yet): Node
    // parses and hands over every pipelined request at once, and a small POST read for
    // retries was overtaken by the GET behind it, which then read the state from before
    // the write. Dispatched once the answer before it is done, one at a time, as nginx
    // does (RFC 9112 §9.3.2 allows parallel processing of safe methods only).
    if (!flow.res.socket) {
      flow.res.once('socket', () => {
        if (!flow.done) this.start(flow);
      });
      return;
    }
    if (this.dispatch(flow) === 'saturated') this.enqueue(flow);
  }

  /**
   * How much of the body to read before dispatch, or undefined to stream it from dispatch
   * (a request without a body: no cost). A body of at most retry.maxBodyBytes by its
   * Content-Length is read whole so that a retry can send it again, as before, whatever
   * the budget; with requestBuffering, any other body up to maxBytes (more than that is
   * dispatched with its prefix read, the rest streamed), within maxTotalBytes in all.
   */
  private bodyRead(flow: Flow): BodyRead | undefined {
    if (flow.framing === 'none' || flow.body.kind !== 'stream') return undefined;
    const o = this.core.options;
    const declared = flow.framing === 'length' ? declaredLength(flow.req) : undefined;
    const r = o.retry;
    if (r && r.maxRetries > 0 && declared !== undefined && declared <= r.maxBodyBytes)
      return { declared, upTo: Infinity, chunk: (bytes) => this.hold(flow, bytes, true) };
    const b = o.requestBuffering;
    // A `Trailer` header changes nothing: the gateway forwards no trailer fields, buffered
    // or not (forwarded.ts strips the header), and exempting it let any client skip the
    // buffering with one header (5 addresses of slow bodies filled a backend's pool again).
    if (!b) return undefined;
    if (this.bufferedBytes >= b.maxTotalBytes) {
      this.bufferFull(flow);
      return undefined;
    }
    return { declared, upTo: b.maxBytes, chunk: (bytes) => this.hold(flow, bytes, false) };
  }

  /**
   * `bytes` more of `flow`'s body read before dispatch: charged to the buffer budget, or,
   * when they would pass maxTotalBytes, false (it is dispatched with what it has). A body
   * read for retries is always kept, as before the budget existed.
   */
  private hold(flow: Flow, bytes: number, always: boolean): boolean {
    this.waitForClient(flow, bytes);
    const b = this.core.options.requestBuffering;
    if (!always && b && this.bufferedBytes + bytes > b.maxTotalBytes) {
      this.bufferFull(flow);
      return false;
    }
    flow.held += bytes;
    this.bufferedBytes += bytes;
    return true;
  }

  /** The bytes `flow` holds are gone from memory (sent on, or the request over). */
  private releaseHeld(flow: Flow): void {
    this.bufferedBytes -= flow.held;
    flow.held = 0;
  }

  /** A body streams from dispatch because the buffer budget is spent: counted, logged. */
  private bufferFull(flow: Flow): void {
    const c = this.core;
    c.metrics.onBodyBufferFull();
    c.logLine(
      'request-buffer-full',
      `${describe(flow.req)}: requestBuffering.maxTotalBytes (${c.options.requestBuffering?.maxTotalBytes} bytes) held by bodies read before dispatch and not yet answered; this body streams from dispatch`,
      { event: 'request-buffer-full' },
    );
  }

  /**
   * The graceful close begins: a server requests came from that stops
   * listening closes each connection after its next answer, whoever gives it.
   */
  draining(): void {
    for (const s of this.servers.keys()) closeAfterEachAnswer(s);
  }

  /**
   * Resolves once no admitted request is in flight or waiting and no WebSocket is open,
   * and (`servers`, the default) no server that has stopped listening still has a
   * connection; or after `graceMs`.
   */
  idle(graceMs: number, servers = true): Promise<void> {
    if (this.isIdle(servers)) return Promise.resolve();
    return new Promise((resolve) => {
      // Infinity: no timer (Node would fire one that long after 1 ms).
      const timer = graceMs === Infinity ? undefined : setTimeout(done, graceMs);
      function done(): void {
        clearTimeout(timer);
        resolve();
      }
      this.idleWaiters.push({ servers, done });
    });
  }

  private isIdle(servers: boolean): boolean {
    if (this.active !== 0 || this.upgrades.openCount !== 0) return false;
    if (servers) for (const s of this.servers.keys()) if (!s.listening) return false;
    return true;
  }

  private wakeIdleWaiters(): void {
    if (this.idleWaiters.length === 0 || !this.isIdle(false)) return;
    const waiters = this.idleWaiters;
    this.idleWaiters = [];
    for (const w of waiters) {
      if (this.isIdle(w.servers)) w.done();
      else this.idleWaiters.push(w);
    }
  }

  /**
   * The server a request came through is one of this balancer's: at shutdown its leftover
   * connections are cut (forgetServers). Upgrades the balancer takes (load-balance.ts) note
   * theirs too, so that a gateway that serves only WebSockets cuts upgrades still in the
   * app's middleware. Returns that server.
   */
  noteServerOf(req: IncomingMessage): Server | undefined {
    const server = serverOf(req);
    if (server !== this.lastServer && server) this.noteServer(server);
    return server;
  }

  /**
   * The servers lb.close() was given (`server`): waited for and cut at the grace's end as
   * those a request came through, so requests still in the app's middleware when close()
   * began are proxied, not refused, though none had reached the balancer before.
   */
  noteServers(servers: Server | readonly Server[]): void {
    const list: readonly Server[] = isServerList(servers) ? servers : [servers];
    for (const server of list) {
      this.noteServer(server);
      // Not listening and without a connection: it never listened (its listen() failed, or
      // close() came during the start), or its 'close' has fired already, and no 'close' is
      // coming. Waited for, close() took its whole grace (10.3 s for a SIGTERM while the
      // example waited for its broker, 0.3 s before; a re-review).
      if (!server.listening) {
        server.getConnections((err, n) => {
          if (!err && n === 0 && !server.listening) this.servers.get(server)?.();
        });
      }
    }
  }

  private noteServer(server: Server): void {
    // Closed: nothing waits for the server any more (see forgetServers).
    if (this.core.closed) return;
    this.lastServer = server;
    if (this.servers.has(server)) return;
    if (this.core.draining) closeAfterEachAnswer(server);
    const onClose = (): void => {
      // Forgotten: if it listens again, its next request notes it anew.
      this.servers.delete(server);
      balancersOn.get(server)?.delete(this);
      if (this.lastServer === server) this.lastServer = undefined;
      this.wakeIdleWaiters();
    };
    this.servers.set(server, onClose);
    watchClose(server, onClose);
    let flows = balancersOn.get(server);
    if (!flows) balancersOn.set(server, (flows = new Set()));
    flows.add(this);
    this.core.listenerNoted();
  }

  /**
   * Whether `host`:`port` is where a server this balancer serves on listens (boundAt).
   * Only servers it knows (a request or upgrade reached it, or close() was given them).
   */
  listensAt(host: string, port: number): boolean {
    for (const server of this.servers.keys())
      if (boundAt(server.address(), host, port)) return true;
    return false;
  }

  /**
   * The grace is over: every server that has stopped listening closes its idle keep-alive
   * connections now, before the balancer answers 503 LW_GW_CLOSED. A worker's
   * closeListener leaves idle ones open on purpose (a client may be sending on one), each
   * to end after an answer; a client idle past the grace then sent its next request into
   * the closed balancer: 5 of 60 such clients got 503 in one reload (helper, keepAliveTimeout
   * 65 s), and the reload waited out the grace for them. Closed idle, a client reconnects,
   * to another worker or instance.
   */
  graceOver(): void {
    for (const server of this.servers.keys()) if (!server.listening) closeIdleConnections(server);
  }

  /**
   * The balancer has closed: it stops watching the servers it saw. Each
   * watch held the whole balancer for as long as its server lived: a dev
   * server reloading the balancer behind one http.Server kept every closed one
   * (60-75 KB each, with its registry, metrics and dashboard history).
   */
  forgetServers(): void {
    for (const [server, onClose] of this.servers) {
      unwatchClose(server, onClose);
      const flows = balancersOn.get(server);
      flows?.delete(this);
      // The grace is over and this server has stopped listening (server.close(), the
      // shutdown recipe): what is still connected goes too. server.close() stops Node's
      // header and request timeout sweep, so a connection that never sent a whole head
      // (slowloris, or only a partial request line) was never timed out again and kept
      // the stopped process alive for good. Only once no other balancer serves on that
      // server (several services on one server each close with their own grace), and a
      // moment later: an answer just written (503 LW_GW_CLOSED to an upload, lingering so
      // that its client reads it, linger.ts) goes out first.
      if (!server.listening && !flows?.size) {
        setTimeout(closeAllConnections, CUT_LEFTOVERS_MS, server).unref();
      }
    }
    this.servers.clear();
    this.lastServer = undefined;
  }

  /** Picks a backend and starts an attempt. */
  private dispatch(flow: Flow): 'started' | 'saturated' | 'failed' {
    // The app answered it already (a pipelined request its timeout answered before its
    // turn: Express wrote the 503 into a response without a socket), or will
    // (appAnswers): from the start, out of the saturation queue or on a retry alike.
    if (flow.res.headersSent || this.appAnswers(flow)) return 'failed';
    const c = this.core;
    if (c.closed) {
      this.shed(flow.res, 'LW_GW_CLOSED', 'draining', 1);
      return 'failed';
    }
    const nowMs = c.now();
    // Eligibility, saturation and the pick, O(choices): Balancer.choose.
    const chosen = c.choose(nowMs, flow.tried, flow.hashKey);
    if (chosen === 'saturated') return 'saturated';
    if (typeof chosen === 'string') {
      // 'none', or 'all-tried': only a retry gets there, when every backend refused or reset
      // this request (panic mode with every backend dead, say). That is "unavailable, come
      // back later", not a bad answer.
      this.shed(flow.res, 'LW_GW_NO_BACKEND', 'no-backend', c.noBackendRetryAfterSec(nowMs));
      return 'failed';
    }
    this.startAttempt(flow, chosen, c.chosenReason, nowMs);
    return 'started';
  }

  private enqueue(flow: Flow): void {
    const c = this.core;
    if (flow.retries > 0) return this.shedSaturated(flow);
    const waiter = c.queue.enqueue(
      () => {
        // Answered already (a refused header, say): nothing left to dispatch.
        if (flow.done || flow.res.writableEnded) return true;
        const r = this.dispatch(flow);
        if (r !== 'saturated') flow.queued = false;
        return r !== 'saturated';
      },
      () => {
        flow.queued = false;
        this.shedSaturated(flow);
        c.queueChanged();
      },
    );
    if (!waiter) return this.shedSaturated(flow);
    flow.queued = true;
    // finish() cancels it, however the request ends.
    flow.waiter = waiter;
    c.queueChanged();
  }

  private shedSaturated(flow: Flow): void {
    const c = this.core;
    if (c.closed) return this.shed(flow.res, 'LW_GW_CLOSED', 'draining', 1);
    const fallbackSec = Math.ceil(c.options.saturation.queueTimeoutMs / 1000);
    this.shed(
      flow.res,
      'LW_GW_SATURATED',
      'saturated',
      c.drainRate.retryAfterSec(c.queue.length, fallbackSec),
    );
  }

  private startAttempt(
    flow: Flow,
    backend: Backend,
    reason: string | undefined,
    nowMs: number,
  ): void {
    const c = this.core;
    flow.backend = backend;
    flow.target = undefined;
    flow.proxyReq = undefined;
    flow.attemptOpen = true;
    flow.responded = false;
    flow.answer = undefined;
    flow.overloaded = false;
    flow.refused = false;
    flow.attemptStartMs = nowMs;
    flow.reason = reason;
    c.loops.mark(flow.headers, flow.via, backend.id);
    c.attemptStarted(backend, nowMs);
    // Time to the response headers, whatever the stage (waiting for a pooled
    // socket, connecting, or the backend thinking): the "backend stops
    // answering" case of the failure table. Paused while the upload waits for
    // the client's body (see pump), as Envoy's route timeout starts at the
    // end of the downstream request: a slow client is not a slow backend.
    this.waitForBackend(flow);
    const outer = this.sending;
    this.sending = flow;
    // http-proxy copies req.headers into the backend request inside web(), synchronously
    // (common.js setupOutgoing): the backend's headers for that call, the app's after it
    // (and before an answer written inside it: onPrepareError).
    const { req } = flow;
    req.headers = flow.headers;
    try {
      c.engine.web(backend, req, flow.res, this.bodySource);
    } finally {
      req.headers = flow.appHeaders;
      this.sending = outer;
    }
  }

  /**
   * http-proxy's `(options.buffer || req).pipe(proxyReq)`, called inside
   * engine.web() for the attempt `sending` names: the body goes through the
   * flow's pump instead (body-pump.ts).
   */
  private pipeTaken(proxyReq: ClientRequest): void {
    const flow = this.sending;
    this.sending = undefined;
    if (flow === undefined || flow.done || !flow.attemptOpen) {
      proxyReq.destroy();
      return;
    }
    flow.proxyReq = proxyReq;
    // Node >= 18.10: a body longer or shorter than the Content-Length sent
    // throws ERR_HTTP_CONTENT_LENGTH_MISMATCH (caught by the pump) instead of
    // putting bytes on the wire that the backend would read as a second request.
    (proxyReq as ClientRequest & { strictContentLength: boolean }).strictContentLength = true;
    if (flow.framing === 'none' && flow.body.kind === 'stream') {
      // No body by its framing (no Transfer-Encoding, no Content-Length or 0:
      // RFC 9112 §6.3), most requests: the backend request ends a tick later,
      // as Readable.pipe ends it, without the pump's four closures and
      // listeners (about 5 µs a request: docs/bench.md, "Raw proxy cost, interleaved").
      // Nothing to wait for: the backend's timer started with the attempt.
      process.nextTick(this.endBodiless, flow, proxyReq);
      return;
    }
    if (
      flow.framing === 'chunked' &&
      flow.body.kind === 'stream' &&
      !proxyReq.hasHeader('transfer-encoding')
    ) {
      // http-proxy's deleteLength pass (web-incoming.js) gives a DELETE or
      // OPTIONS without Content-Length a `Content-Length: 0` and drops
      // Transfer-Encoding, then streams the chunked body after that head
      // unframed: the backend parsed the body as a second request. The head
      // is not written before the first write, so the framing can go back.
      proxyReq.removeHeader('content-length');
      proxyReq.setHeader('transfer-encoding', 'chunked');
    }
    process.nextTick(this.pumpOnSocket, flow, proxyReq);
  }

  /**
   * The body, or the end of a bodiless request, goes to the backend request
   * only once it has its socket. http-proxy's 'proxyReq' event (the user's
   * on.proxyReq hook, a buffered body's write) comes with the socket, and so
   * must the head's last changes: that is the next tick when the pool has a
   * socket or opens one, but later when the agent queues the request (a
   * place freed by a cancelled attempt whose socket has not closed yet).
   * Written or ended first, the head was fixed before the hook and the
   * buffered body: a queued PUT got 502, a hook setting a header 500.
   */
  private readonly pumpOnSocket = (flow: Flow, proxyReq: ClientRequest): void => {
    if (proxyReq.socket || proxyReq.destroyed) return this.pump(flow, proxyReq);
    proxyReq.once('socket', () => this.pump(flow, proxyReq));
  };

  private pump(flow: Flow, proxyReq: ClientRequest): void {
    // A streamed body is sent once (never retried): its prefix leaves memory with it.
    const prefix = flow.prefix;
    flow.prefix = undefined;
    if (prefix !== undefined) this.releaseHeld(flow);
    pumpBody(
      flow.req,
      proxyReq,
      {
        waitingForClient: (bytes) => this.waitForClient(flow, bytes),
        waitingForBackend: (bytes) => this.waitForBackend(flow, bytes),
        ended: () => this.waitForBackend(flow),
        threw: (err) => this.onPrepareError(err, flow.req, flow.res),
      },
      prefix,
    );
  }

  /** Ends the backend request of a request without a body (pipeTaken); a throw fails the attempt. */
  private readonly endBodiless = (flow: Flow, proxyReq: ClientRequest): void => {
    if (proxyReq.destroyed) return;
    // Not before its socket: see pumpOnSocket.
    if (!proxyReq.socket) {
      proxyReq.once('socket', () => this.endBodiless(flow, proxyReq));
      return;
    }
    try {
      proxyReq.end();
    } catch (err) {
      this.onPrepareError(asError(err), flow.req, flow.res);
    }
  };

  /**
   * The upload waits for the client (`bytes` just came from it): its body idle timeout and
   * minimum rate run, the backend's timeout does not.
   */
  private waitForClient(flow: Flow, bytes: number): void {
    // No body coming: the end is a tick away, the backend's clock keeps running.
    if (flow.framing === 'none') return;
    if (flow.firstByteTimer) clearTimeout(flow.firstByteTimer);
    flow.firstByteTimer = undefined;
    if (flow.done) return;
    if (!flow.bodyClock) {
      const o = this.core.options;
      if (!BodyClock.needed(o.clientBodyTimeoutMs, o.clientBodyMinRate)) return;
      flow.bodyClock = new BodyClock(
        o.clientBodyTimeoutMs,
        o.clientBodyMinRate,
        () => this.core.now(),
        (detail) => this.bodyTimeout(flow, detail),
      );
    }
    flow.bodyClock.reading(bytes);
  }

  /**
   * The gateway waits for the backend (the body is sent, or it is not taking more; `bytes`
   * just came from the client): requestTimeoutMs runs, the body's clock stops.
   */
  private waitForBackend(flow: Flow, bytes = 0): void {
    flow.bodyClock?.paused(bytes);
    if (!flow.attemptOpen || flow.responded) return;
    if (flow.firstByteTimer) flow.firstByteTimer.refresh();
    else
      flow.firstByteTimer = setTimeout(
        () => this.timeout(flow, TIMEOUT_CODE),
        this.core.options.requestTimeoutMs,
      );
  }

  /**
   * The client's body stalled or trickles under the minimum rate: 408, and the attempt ends
   * without counting against the backend.
   */
  private bodyTimeout(flow: Flow, detail: string): void {
    if (flow.done) return;
    if (this.appAnswers(flow)) {
      // The final handler waits for a body that stalled: the connection closes, and its
      // write goes nowhere (no answer of the balancer's to collide with).
      this.count(
        flow.req,
        'LW_GW_BODY_TIMEOUT',
        `${detail}; the app answers (its timeout ran out)`,
      );
      return void flow.req.socket.destroy();
    }
    // Still reading it before dispatch: no backend has it, and what comes is not kept.
    flow.stopRead?.();
    this.cancelAttempt(flow);
    this.reject(flow.req, flow.res, 'LW_GW_BODY_TIMEOUT', detail, true);
  }

  private timeout(flow: Flow, code: string): void {
    if (code === TIMEOUT_CODE) flow.firstByteTimer = undefined; // fired: never refresh() it again
    const err = codedError(
      code === TIMEOUT_CODE ? 'backend did not answer in time' : 'connect timeout',
      code,
    );
    // With a request on a socket, destroying it makes http-proxy report the
    // error (and stops the upload). Without a socket (waiting in the pool's
    // queue), Node reports the destroy only once a socket frees up: the
    // attempt fails right here.
    const p = flow.proxyReq;
    if (p && p.socket && !p.destroyed) return void p.destroy(err);
    p?.destroy(err);
    this.onError(err, flow.req, flow.res, flow.target);
  }

  /** HPM's router: the target of the current attempt. */
  targetOf(req: IncomingMessage): string | undefined {
    return this.flows.get(req)?.backend?.target.href ?? this.upgrades.targetOf(req);
  }

  onStart(req: IncomingMessage, target: unknown): void {
    const flow = this.flows.get(req);
    if (flow?.attemptOpen && flow.target === undefined) flow.target = target;
  }

  onProxyReq(proxyReq: ClientRequest, req: IncomingMessage, target: unknown): void {
    const flow = this.flows.get(req);
    if (!flow) return this.upgrades.onProxyReq(proxyReq, req); // no attempt bookkeeping
    if (!flow.attemptOpen || flow.target !== target) {
      proxyReq.destroy(); // an abandoned attempt got its socket late
      return;
    }
    flow.proxyReq = proxyReq;
    proxyReq.on('upgrade', backendUpgradedUnasked);
    (proxyReq as AttemptRequest)[CLIENT_RESPONSE] = flow.res;
    proxyReq.on('information', earlyHints);
    const hook = this.core.options.on.proxyReq;
    if (hook && !this.runHook(flow, () => hook(proxyReq, req, flow.res))) return;
    writeBody(proxyReq, flow.body);
    const socket = proxyReq.socket;
    if (socket?.connecting) {
      (proxyReq as AttemptRequest)[FRESH] = true;
      // Connect timeout, separate from the request timeout: a dead host (SYN
      // unanswered) is a connection failure, retryable on another backend. To
      // an https backend the connection is made once its TLS handshake is: a
      // TLS terminator that accepts and never answers the ClientHello used to
      // wait out requestTimeoutMs for a 504 that no retry followed.
      const timer = setTimeout(
        () => this.timeout(flow, CONNECT_TIMEOUT_CODE),
        this.core.options.connectTimeoutMs,
      );
      flow.connectTimer = timer;
      socket.once(connectedEvent(socket), () => {
        clearTimeout(timer);
        (proxyReq as AttemptRequest)[CONNECTED] = true;
      });
    }
  }

  onProxyRes(proxyRes: IncomingMessage, req: IncomingMessage, res: ServerResponse): void {
    const flow = this.flows.get(req);
    if (!flow?.attemptOpen || !flow.backend) return;
    if (this.appAnswers(flow)) return void proxyRes.destroy();
    const c = this.core;
    const backend = flow.backend;
    flow.responded = true;
    c.attemptAnswered(backend);
    flow.bodyClock?.answered();
    this.clearTimers(flow);
    // The head is written once the read that brought it is parsed (relayHead), queued before
    // the hook can start the answer flowing (a 'data' listener of its own).
    flow.answer = proxyRes;
    process.nextTick(this.relayHeadNext, flow, proxyRes);
    const hook = c.options.on.proxyRes;
    if (hook && !this.runHook(flow, () => hook(proxyRes, req, res), proxyRes)) return;
    // The hook writes the answer (selfHandleResponse), or its head (it wrote one of its own),
    // or the whole of it (a head, and it reads the body itself: an http-proxy-middleware
    // handler relaying it). The balancer's head and body as well made two answers in one: a
    // responseInterceptor's headers after the head threw in its own listener and ended the
    // process; a hook's pipe put the body twice, the second copy at the front of the
    // connection's next answer. A hook that wrote only the head gets the body piped after
    // it, as http-proxy-middleware pipes it.
    const hookAnswers =
      c.options.selfHandleResponse || (res.headersSent && proxyRes.readableFlowing === true);
    if (hookAnswers || res.headersSent) flow.answer = undefined;
    const status = proxyRes.statusCode ?? 502;
    if (status < 100 || status > 599 || status === 101) {
      // llhttp reads any three digits. ServerResponse.writeHead throws on a
      // status below 100 while http-proxy pipes the body, outside any handler
      // (it killed the process); one of 600-999 it writes back, though RFC 9110
      // §15 defines none and clients read it as they please. A server error in
      // all but number. So is a 101 without Upgrade (one with it is an 'upgrade':
      // backendUpgradedUnasked), which Node's client takes as the final answer: relayed
      // keep-alive, the client (or a proxy in front that tunnels on any 101) and the
      // gateway disagreed on what the connection carries next. Charged as a 5xx is, only
      // with failOn5xx: set off where an app echoes a status a client names, `/status/101`
      // ejected a healthy backend in a dozen requests (a re-review).
      c.metrics.onResponse(backend.id, status, c.now() - flow.attemptStartMs);
      c.metrics.onError(backend.id, '5xx');
      if (c.options.outlier.failOn5xx) c.outlier.onFailure(backend);
      flow.responseOk = false;
      this.endAttempt(flow);
      proxyRes.destroy();
      // Ends `res`: http-proxy then neither copies this response's head nor pipes its body.
      return this.fail(flow, 'LW_GW_UPSTREAM_FAILED');
    }
    // http-proxy forwards the body, never trailer fields; and a Trailer
    // header on a response that is not chunked makes writeHead throw
    // ERR_HTTP_TRAILER_INVALID, which also killed the process.
    delete proxyRes.headers.trailer;
    // A 204 that frames a body (RFC 9110 §8.6 forbids it Content-Length) is a backend that
    // will likely write that body: the answer ends at its head, so the connection would go
    // back to the pool with the body still to come, and a later request could read it as
    // its answer. That connection is not reused (registry/pool-agent.ts guards idle ones).
    if (
      status === 204 &&
      flow.proxyReq &&
      (proxyRes.headers['transfer-encoding'] !== undefined ||
        Number(proxyRes.headers['content-length'] ?? 0) !== 0)
    )
      flow.proxyReq.shouldKeepAlive = false;
    const nowMs = c.now();
    // Overload is not failure: a 503 with Retry-After (RFC 9110 §15.6.4: "temporary
    // overload"; trackRequests() answers so when its queue is full), or a 503/429 while the
    // backend's fresh report says it is saturated, lowers its share through the load
    // estimate and never counts toward ejection. Ejecting it would move its load onto the
    // others, who are as full: measured, 2× overload ejected a backend within 2 s. A 429
    // with Retry-After too (a concurrency limiter shedding the excess: one with room for 2
    // requests took 97% of a load test's requests, nearly all refused), unless it carries
    // rate-limit headers (`RateLimit*`, `X-RateLimit*`: express-rate-limit, Kong), which
    // say a client's quota ran out (RFC 6585 §4): one client's 429s then penalised the
    // backend with the least of everyone else's traffic, which got less still (95-97% of
    // the other clients' requests on one backend).
    const retryAfter = proxyRes.headers['retry-after'] !== undefined;
    flow.overloaded =
      (status === 503 && retryAfter) ||
      (status === 429 && retryAfter && !hasRateLimitHeaders(proxyRes.headers)) ||
      ((status === 503 || status === 429) && backend.load.reportSaturated(nowMs));
    // Any other 429 is a refusal, answered at once, not a service: timed as a fast success,
    // it made the refusing backend look the quickest (a client's quota on three backends
    // left one of them none of everyone else's requests).
    flow.refused = status === 429 && !flow.overloaded;
    const failed = !flow.overloaded && status >= 500 && c.options.outlier.failOn5xx;
    flow.responseOk = !failed;
    flow.headMs = nowMs - flow.attemptStartMs;
    c.metrics.onResponse(backend.id, status, flow.headMs);
    if (failed) {
      c.metrics.onError(backend.id, '5xx');
      c.outlier.onFailure(backend);
    } else if (!flow.overloaded) c.outlier.onSuccess(backend);
    const aff = c.options.affinity;
    if (flow.newCookie && aff?.cookie) {
      const secure = cookieIsSecure(aff.cookieSecure, flow.req, c.options.trustForwarded > 0);
      const cookie = affinityCookie(aff.cookie, flow.newCookie, aff.cookieMaxAgeSec ?? 0, secure);
      const existing = proxyRes.headers['set-cookie'];
      const connection = proxyRes.headers.connection;
      if (namedByConnection(connection)?.has('set-cookie')) {
        // The backend's `Connection` names Set-Cookie: its own cookies are hop-by-hop and
        // stay here (response-head.ts), and the gateway's went with them, so every answer
        // gave the client a new key and no stickiness. The name goes, and with it theirs.
        proxyRes.headers.connection = connection!
          .split(',')
          .filter((token) => token.trim().toLowerCase() !== 'set-cookie')
          .join(',');
        proxyRes.headers['set-cookie'] = [cookie];
      } else proxyRes.headers['set-cookie'] = existing ? [...existing, cookie] : [cookie];
    }
    // An idle backend mid-response is cut after requestTimeoutMs of silence.
    const proxyReq = flow.proxyReq;
    if (proxyReq) {
      proxyReq.on('timeout', backendStalled);
      proxyReq.setTimeout(c.options.requestTimeoutMs);
    }
    (proxyRes as BackendAnswer)[CLOCK] = c.now;
    proxyRes.on('pause', answerPaused);
    proxyRes.on('resume', answerResumed);
    // 'close' comes once: `on` spares `once`'s wrapper.
    const target = flow.target;
    proxyRes.on('close', () => {
      // The backend's answer is whole: its work and its connection are done, though the
      // client may still be reading the last of it. The attempt ends here, not when the
      // client's response closes (endAttempt's sample, below, says why not its time).
      if (proxyRes.complete) {
        if (flow.target === target) this.endAttempt(flow);
        return;
      }
      // The backend cut the body short: the client must see a cut too, not a
      // response that never ends (http-proxy leaves `res` open in that case).
      // Not when this attempt failed before its head went out (onError): the
      // request has been answered or retried since.
      if (!proxyRes.complete && !res.writableEnded && flow.target === target) {
        if (flow.attemptOpen) {
          // Cut by close() after its grace (its pools destroyed): not the backend's failure.
          if (!c.closed) {
            c.metrics.onError(backend.id, 'reset');
            c.outlier.onFailure(backend);
          }
          flow.responseOk = false;
          flow.overloaded = false;
        }
        cutAnswer(res);
      }
    });
    // An answer of no stated length, and among those an event stream (stream-lane.ts):
    // the lane and the compression flush below both ask.
    const lane = this.lane;
    const unlengthed = proxyRes.headers['content-length'] === undefined;
    const eventStream =
      unlengthed && lane !== undefined && lane.isStream(proxyRes.headers['content-type']);
    // An event stream is checked once it has run for a while. A timer with arguments, not
    // a closure per answer.
    if (eventStream && !failed)
      flow.streamTimer = setTimeout(this.enterLaneNext, lane.afterMs, flow, proxyRes);
    // http-proxy leaves the answer to us (selfHandleResponse, proxy-engine.ts): its body
    // follows the head relayHead writes first. Unless the hook answered the client itself
    // (http-proxy did not pipe then either): the backend's answer is dropped with its
    // connection, never written after that end.
    if (res.writableEnded) return void proxyRes.destroy();
    if (hookAnswers) return;
    proxyRes.pipe(res);
    // A compression middleware before the balancer (compression(), which adds res.flush)
    // holds what is written in zlib until about 16 KB have gathered or the answer ends, and
    // leaves flushing to whoever writes a stream: an event stream's events, a long poll's
    // or an ndjson feed's lines never reached the client.
    const flush = (res as { flush?: unknown }).flush;
    if (typeof flush === 'function' && unlengthed)
      flushStreamed(proxyRes, res, flush as () => void, eventStream);
  }

  /** enterLane for setTimeout, without a closure per answer. */
  private readonly enterLaneNext = (flow: Flow, proxyRes: IncomingMessage): void =>
    this.enterLane(flow, proxyRes);

  /**
   * A streamed answer still running `streams.afterMs` after its head: a stream, not a
   * reply. Its attempt ends as an answered one (the sample is its time to the head) and
   * its client's place is given back; it holds a place in the lane instead, its backend
   * connection beyond the pool's maxSockets (stream-lane.ts). Not while the client's body
   * is still coming (its idle timeout is the attempt's): it enters once the body is in. It
   * used to be checked only at `afterMs`, so a client that finished its body a little
   * later kept the stream a request for as long as it ran, a backend slot and one of its
   * address's places held (two such streams, and its every other request got 429). Not
   * when the lane is full either: then it stays a request, as every stream was before.
   */
  private enterLane(flow: Flow, proxyRes: IncomingMessage): void {
    flow.streamTimer = undefined;
    const backend = flow.backend;
    if (!this.lane || !flow.attemptOpen || !backend || backendAnswer(flow) !== proxyRes) return;
    if (proxyRes.complete || flow.res.writableEnded) return;
    if (!flow.req.complete) {
      // Rare (a body still coming past afterMs): a closure is fine here.
      flow.req.once('end', () => this.enterLane(flow, proxyRes));
      return;
    }
    const place = this.lane.enter(flow.client, backend);
    if (place === undefined) return;
    flow.lane = place;
    this.endAttempt(flow);
    if (flow.client !== undefined) this.clients?.release(flow.client);
  }

  /** relayHead for process.nextTick, without a closure per answer. */
  private readonly relayHeadNext = (flow: Flow, proxyRes: IncomingMessage): void =>
    this.relayHead(flow, proxyRes);

  /**
   * Writes the backend's head to the client a tick after onProxyRes, once the
   * read that brought it has been parsed, and sends it on its own when no body
   * came with it. Written at once, as http-proxy writes it, the head of an
   * answer whose body did not parse in the same read (a bad chunk size) was
   * already the client's: the attempt could neither be retried nor answered
   * 502, and the client got its connection reset and not a byte. And Node
   * sends a written head only with the first body byte, so a backend's head
   * sent ahead of its body (`flushHeaders()`, an event stream, a long poll)
   * reached the client only with that first byte, seconds later; nginx
   * relays it at once.
   */
  private relayHead(flow: Flow, proxyRes: IncomingMessage): void {
    // The attempt failed in the same read (onError) or was given up.
    if (flow.answer !== proxyRes) return;
    flow.answer = undefined;
    // The answer is the client's from here: no retry will send a body read before dispatch
    // again (until now one could, if the head's read failed), so its bytes leave the budget
    // and memory now, not when the answer ends: four 64 KB POSTs answered with event
    // streams held the budget of a 256 KB gateway for as long as they streamed.
    if (flow.body.kind === 'buffered' && flow.body.read === true) {
      this.releaseHeld(flow);
      flow.body = ANSWERED_BODY;
    }
    const { req, res } = flow;
    if (res.writableEnded || res.destroyed || !flow.backend) return;
    const c = this.core;
    // The head in one call where it can be (response-head.ts); the decision
    // header is the gateway's, never a backend's of the same name.
    const decision = c.options.decisionHeader;
    const decisionValue = decision ? formatDecisionHeader(flow.backend.id, flow.reason) : '';
    // Shutting down: the client's next request should open a connection elsewhere. Or the
    // client asked to close (`Connection: close`, HTTP/1.0 without keep-alive; Node read it
    // into shouldKeepAlive before forwarded.ts removed the header): the answer says `close`
    // and the connection closes after it (RFC 9112 §9.6).
    // An answer before the whole request body arrived (a 401 to an upload): the rest of the
    // body is not read, so the connection cannot carry another request; said up front, the
    // client reconnects at once instead of waiting out keepAliveTimeout for a reset.
    // Or the server's maxRequestsPerSocket is reached with this answer: Node says `close`
    // itself only when no `Connection` header is set, and this head sets one, so the
    // client sent one more request and got Node's bare 503.
    const close =
      !res.shouldKeepAlive ||
      !req.complete ||
      (res as { maxRequestsOnConnectionReached?: boolean }).maxRequestsOnConnectionReached ===
        true ||
      closesForDrain(serverOf(req), res, c.draining);
    if (!req.complete) this.lingerAfter(req);
    try {
      writeResponseHead(req, res, proxyRes, decision, decisionValue, close);
    } catch (err) {
      // Not inside http-proxy's guarded listener any more (proxy-engine.ts): a
      // throw here would end the process. Nothing of this answer may follow the error.
      proxyRes.unpipe(res);
      proxyRes.destroy();
      return this.onPrepareError(asError(err), req, res);
    }
    // A body that came with the head goes out with it; none did: the head goes now.
    if (proxyRes.readableLength === 0 && !proxyRes.complete) res.flushHeaders();
  }

  onError(err: Error, req: IncomingMessage, res: ServerResponse | Socket, target: unknown): void {
    const flow = this.flows.get(req);
    if (!flow) return this.upgrades.onError(err, req, res);
    if (flow.done || !flow.backend) return;
    if (target !== undefined && target !== flow.target) return; // a previous attempt's late error
    if (flow.lane) return this.streamBroke(flow, err);
    const answered = backendAnswer(flow);
    const whole = flow.responded && answered?.complete === true;
    // The attempt ended with its whole answer (onProxyRes), which bytes followed; not an
    // error of the client's side (its upload cut after an early answer), which is nobody's.
    if (!flow.attemptOpen) {
      const clientBroke = flow.req.socket.destroyed || flow.req.errored;
      return void (whole && !clientBroke && this.bytesAfterAnswer(flow, err));
    }
    // The client's side broke (it reset the connection, or its body did not
    // parse): http-proxy reports that through the same 'error', as it listens
    // on the client request too (web-incoming.js). Not the backend's doing.
    if (flow.req.socket.destroyed || flow.req.errored) return this.cancelAttempt(flow);
    if ((err as { code?: string }).code === CLIENT_STALLED_CODE) {
      // backendStalled: the client, not the backend, held the answer up for
      // requestTimeoutMs. Cut the client; the backend is not charged.
      this.logClientStalled(flow, 'answer');
      this.cancelAttempt(flow);
      // A reset: what the kernel held for it is dropped, and a close-framed answer reads
      // as cut, not whole (cutAnswer).
      return cutAnswer(flow.res);
    }
    const c = this.core;
    const backend = flow.backend;
    const kind = classify(err as Error & { code?: string });
    if (c.closed) {
      // Cut by close() after its grace: not the backend's failure.
      this.endAttempt(flow);
      // The whole request handed to the backend's connection: the backend has it, or may
      // have. A 503 with Retry-After told the client to send it again, and a POST /charge
      // the backend was still running ran twice: 502, no Retry-After. Not when part of it
      // is still to go (an upload under way, a connection never made): then the backend
      // cannot have acted on it, and the client may well send it again.
      const attempt = flow.proxyReq;
      if (attempt?.writableFinished !== true)
        return this.shed(flow.res, 'LW_GW_CLOSED', 'draining', 1);
      flow.res.shouldKeepAlive = false; // nothing more is served on it (shed() says why)
      c.metrics.onShed('draining'); // counted with the 503s close() gives, not nowhere
      return this.fail(flow, 'LW_GW_CLOSED_IN_FLIGHT');
    }
    if (whole) return this.bytesAfterAnswer(flow, err);
    if (isLocalResourceError(err) && !flow.res.headersSent) return this.outOfResources(flow, err);
    const answer = flow.answer;
    if (answer) {
      // The answer failed in the read that brought its head (a bad chunk), which has not
      // been written yet (relayHead): retried or answered as if no head had come.
      flow.answer = undefined;
      answer.unpipe(flow.res);
    }
    if ((err as { code?: string }).code === 'HPE_HEADER_OVERFLOW')
      return this.headTooLarge(flow, kind);
    flow.responseOk = false;
    this.endAttempt(flow);
    c.metrics.onError(backend.id, kind);
    const stale = this.staleConnection(flow, err);
    // Silence once a streamed answer (no Content-Length: an event stream, a long poll
    // between events) is the client's is an idle stream's as often as a hung backend's:
    // cut, counted, but not held against the backend, as nginx's max_fails does not count
    // it. Charged, eight quiet streams at once ejected two healthy backends. An answer
    // that said its length and stopped short of it is the backend's failure.
    const quietStream =
      kind === 'timeout' &&
      flow.res.headersSent &&
      answered?.headers['content-length'] === undefined;
    if (!quietStream && !stale) c.outlier.onFailure(backend);
    // An answer Node could not parse may be the middle of one that belongs to another
    // request: that backend's connections are retired, as for stray bytes (pool-agent.ts).
    if (isBadAnswer(err)) retirePool(backend.agent);
    const res2 = flow.res;
    const errno = errnoOf(err);
    const attemptNo = flow.retries + 1;
    const path = pathForLog(flow.req.url);
    const attempt = `attempt ${attemptNo} of ${flow.req.method} ${path} to ${backend.id} (${backend.target.href}) failed: ${errno}`;
    // One line per backend and errno per 10 s; the fields say the same for a JSON logger.
    const logFailure = (outcome: string, sentence: string): void =>
      c.logLine(`upstream:${backend.id}:${errno}`, `${attempt}${sentence}`, {
        event: 'upstream-failed',
        backend: backend.id,
        url: backend.target.href,
        error: errno,
        attempt: attemptNo,
        method: flow.req.method,
        path,
        outcome,
      });
    if (res2.headersSent) {
      logFailure('cut', ' mid-response; connection cut');
      return cutAnswer(res2);
    }
    // The app's timeout answers it (appAnswers): neither a retry nor an answer of ours.
    if (timeoutAnswered(flow.req))
      return logFailure('app-answers', '; the app answers it (its timeout ran out)');
    if (stale) {
      flow.staleRetried = true;
      // The pool's other idle connections are older than this one (LIFO): closed, so the
      // retry gets a new connection, not the next one the backend's idle timer closed.
      closeIdle(backend.agent);
    }
    if (kind !== 'timeout' || (err as { code?: string }).code === CONNECT_TIMEOUT_CODE) {
      flow.tried ??= new Set();
      flow.tried.add(backend.endpoint);
      // A stale connection's retry goes to another backend if there is one (a backend that
      // crashed resets the requests on its pooled connections the same way), else to the
      // same one, on a new connection.
      if (stale && c.nothingLeftToTry(flow.tried)) flow.tried.delete(backend.endpoint);
      // A backend that answered, badly (a head Node cannot parse, a 101 unasked), was
      // reached: with no other backend to try that is a bad gateway (502), not "unavailable,
      // come back later" (503), which a retry on the same set would then have answered.
      const badAnswer = isBadAnswer(err);
      const noneLeft = c.nothingLeftToTry(flow.tried);
      // Only on proof that not a byte reached the backend, whatever the error: the attempt
      // was given a connection still being made, which never connected (TLS: never finished
      // its handshake; Node writes the request only after it). nginx and Envoy then try the
      // next backend for any method. A certificate refused used to count as maybe sent: a
      // POST to a backend with an expired one got 502. A pooled connection carried bytes
      // before, and so does one Node's agent hands a queued request as the previous answer
      // ends (it sets no reusedSocket).
      // Nor one whose new TLS connection the backend refused with an alert (a TLS 1.3
      // backend that requires a client certificate says so after the gateway's side of the
      // handshake is over): it never took the request the gateway may have written.
      const attempt = flow.proxyReq as AttemptRequest | undefined;
      const notSent =
        attempt?.[FRESH] === true && (attempt[CONNECTED] !== true || isTlsRefusal(err));
      if (!notSent) flow.maybeSent = true;
      if (!(badAnswer && noneLeft) && this.mayRetry(flow, notSent)) {
        flow.retries++;
        const retry = this.dispatch(flow);
        if (retry === 'started') {
          logFailure('retrying', stale ? ' on a pooled connection; retrying' : '; retrying');
          return c.metrics.onRetry(backend.id);
        }
        // No retry happened: every backend tried or closed meanwhile (dispatch answered
        // 503), or those left are saturated (a retry does not queue). The line, the retry
        // count and the budget all used to say it had.
        c.budget?.refund();
        if (retry === 'saturated') {
          logFailure(
            'LW_GW_SATURATED',
            '; the backends left are saturated, answering LW_GW_SATURATED',
          );
          return this.shedSaturated(flow);
        }
        const code = c.closed ? 'LW_GW_CLOSED' : 'LW_GW_NO_BACKEND';
        return logFailure(code, `; no backend left to try, answered ${code}`);
      }
      // A retryable request that could not reach a backend, when none is left to try or too
      // few are healthy (panic: the retry budget runs out when every attempt fails): 503 +
      // Retry-After as above, so clients back off instead of reading a gateway fault. So is
      // one no backend got a byte of, whatever stopped the retries (the budget spent,
      // maxRetries reached with backends left): a 502 said it might have gone out, and
      // during an outage 145 of 300 requests got one with no hint to back off.
      if (!badAnswer && ((noneLeft && this.retryable(flow, notSent)) || !flow.maybeSent)) {
        const why = noneLeft ? 'no backend left to try' : 'sent to no backend and no retry left';
        logFailure('LW_GW_NO_BACKEND', `; ${why}, answering LW_GW_NO_BACKEND`);
        const retryAfterSec = c.noBackendRetryAfterSec(c.now());
        return this.shed(flow.res, 'LW_GW_NO_BACKEND', 'no-backend', retryAfterSec);
      }
    }
    const code = kind === 'timeout' ? 'LW_GW_UPSTREAM_TIMEOUT' : 'LW_GW_UPSTREAM_FAILED';
    logFailure(code, `; answering ${code}`);
    this.fail(flow, code);
  }

  /**
   * A stream in the lane broke: silent for requestTimeoutMs (an idle event stream), its
   * client stopped reading, or its backend connection failed. Its attempt ended as
   * answered (enterLane): the client is cut, the break counted and never held against the
   * backend, as a quiet stream's timeout is not (onError).
   */
  private streamBroke(flow: Flow, err: Error): void {
    const code = (err as { code?: string }).code;
    if (code === CLIENT_STALLED_CODE) this.logClientStalled(flow, 'stream');
    else if (!flow.req.socket.destroyed)
      this.core.metrics.onError(flow.backend!.id, classify(err as Error & { code?: string }));
    flow.proxyReq?.destroy();
    cutAnswer(flow.res);
  }

  /** The client stopped reading `flow`'s answer (or stream) for requestTimeoutMs: one line. */
  private logClientStalled(flow: Flow, what: 'answer' | 'stream'): void {
    const id = flow.backend!.id;
    this.core.logLine(
      'client-stalled',
      `${describe(flow.req)} stopped reading the ${what} of ${id} for ${this.core.options.requestTimeoutMs} ms; connection cut, the backend not charged`,
      { event: 'client-stalled', backend: id },
    );
  }

  /**
   * The answer was whole (a HEAD, 204 or 304 is at its head) and bytes
   * followed it (a body Node skips for them, or garbage): the parser fails
   * on those, not on the answer, which goes on to the client in full, as
   * nginx relays it. Node discards the backend's socket; the attempt ends
   * with the answer. Logged, not held against the backend. Its other
   * connections may be out of step as well, unseen: retired (pool-agent.ts).
   */
  private bytesAfterAnswer(flow: Flow, err: Error): void {
    const backend = flow.backend!;
    const errno = errnoOf(err);
    const path = pathForLog(flow.req.url);
    retirePool(backend.agent);
    this.core.logLine(
      `upstream:${backend.id}:after-answer`,
      `${backend.id} (${backend.target.href}) sent bytes after a complete answer to ${flow.req.method} ${path}: ${errno}; answer relayed, its connections retired`,
      { event: 'upstream-bytes-after-answer', backend: backend.id, error: errno, path },
    );
  }

  /**
   * The backend answered with a head over Node's limit (16 KiB,
   * `--max-http-header-size`; nginx's proxy_buffer_size is 4-8 KiB), often
   * one that echoes the request (a redirect's `Location` carrying its URL),
   * so the client chose its size. Taken for a garbled answer, it was retried
   * on every other backend, which answered the same, and each was charged a
   * failure: six such requests ejected a healthy backend. Now answered 502 at
   * once, not retried, and the pool kept (the answer was well formed; Node
   * only stopped reading it), as nginx neither retries nor counts a too large
   * header by default; charged only when the request was short (below).
   */
  private headTooLarge(flow: Flow, kind: UpstreamErrorKind): void {
    const backend = flow.backend!;
    const c = this.core;
    flow.responseOk = false;
    // A head that echoes a long request (a redirect's Location) is the client's doing: not
    // charged, a few long URLs ejected healthy backends. One answering a short request is the
    // backend's: uncharged, and never timed, it looked idle and drew 74% of the picks, each
    // a 502.
    const requestBytes = requestHeadBytes(flow.req);
    const charged = requestBytes < CLIENT_SIZED_HEAD_BYTES;
    this.endAttempt(flow, !charged);
    if (charged) {
      c.metrics.onError(backend.id, kind);
      c.outlier.onFailure(backend);
    }
    c.logLine(
      `upstream:${backend.id}:head-too-large`,
      `${backend.id} (${backend.target.href}) answered ${describe(flow.req)} (a head of ${requestBytes} bytes) with a head over Node's limit (--max-http-header-size); answering 502 LW_GW_UPSTREAM_FAILED, not retried, ${charged ? 'charged to the backend (the request was short)' : 'the backend not charged (the request was long)'}`,
      { event: 'upstream-head-too-large', backend: backend.id, requestBytes, charged },
    );
    this.fail(flow, 'LW_GW_UPSTREAM_FAILED');
  }

  /**
   * An idempotent method, or any method whose attempt failed before its connection
   * existed (`notSent`: nothing reached the backend), with no body or one held in memory
   * (request-body.ts). A POST refused by a backend that had just gone down got 502 until
   * five failures ejected it, where nginx sends it to the next one.
   */
  private retryable(flow: Flow, notSent = false): boolean {
    const r = this.core.options.retry;
    if (r === undefined) return false;
    if (!notSent && !r.methods.includes(flow.req.method ?? 'GET')) return false;
    const body = flow.body;
    if (body.kind !== 'buffered') return flow.framing === 'none';
    // One the gateway read before dispatch (requestBuffering) is sent again within the
    // retry buffer's limit, as one read for retries (request-body.ts).
    return body.read !== true || (r.maxBodyBytes > 0 && body.body.length <= r.maxBodyBytes);
  }

  /**
   * A pooled connection the backend closed as it was handed this request (the idle-close
   * race: its keep-alive timeout ran out as the gateway reused it; Go, HAProxy and nginx
   * backends close idle connections without a Keep-Alive hint to say when): reset before
   * any answer, most likely before the backend read a byte. Retried as any reset of a
   * request that may go again (retryable: within maxRetries and the budget), but once, on
   * a new connection and to the same backend when it is the only one, and not held against
   * the backend, as nginx gives a failure on a cached connection an extra try and Node's
   * docs advise retrying on `reusedSocket`. It got 503 with one backend (16 of 120 GETs
   * 300 ms apart to a backend closing connections idle for 300 ms), each one counted
   * towards ejecting a healthy backend. A backend that crashed with requests on its pooled
   * connections looks the same; its refused connections are what charge it then.
   */
  private staleConnection(flow: Flow, err: Error): boolean {
    if (flow.staleRetried || flow.responded || !resetOnPooledConnection(err, flow.proxyReq))
      return false;
    return !flow.res.headersSent && this.retryable(flow);
  }

  private mayRetry(flow: Flow, notSent: boolean): boolean {
    const r = this.core.options.retry;
    if (!r || flow.retries >= r.maxRetries) return false;
    if (!this.retryable(flow, notSent)) return false;
    // Not req.destroyed: a fully read IncomingMessage is auto-destroyed; the client is gone when its socket is.
    if (flow.res.destroyed || flow.req.socket.destroyed) return false;
    return this.core.budget?.tryRetry() ?? false;
  }

  private fail(flow: Flow, code: GatewayErrorCode): void {
    if (this.appAnswers(flow)) return;
    this.closeIfBodyUnread(flow);
    sendError(flow.res, code);
  }

  /**
   * The answer goes out before the whole body came: the connection closes after it
   * (the rest of the body is not read, so it cannot carry another request, and requests
   * pipelined behind it are not served), lingering so that the client reads the answer
   * (linger.ts).
   */
  private lingerAfter(req: IncomingMessage): void {
    this.closing.add(req.socket);
    lingerOnClose(req);
  }

  /** The gateway answers a request whose body may still be coming: see lingerAfter. */
  private closeIfBodyUnread(flow: Flow): void {
    if (flow.framing === 'none' || flow.req.complete) return;
    flow.res.shouldKeepAlive = false;
    this.lingerAfter(flow.req);
  }

  /**
   * Something threw while the request was prepared or sent (proxy-engine.ts):
   * a header Node refuses to send is the client's (400), anything else the
   * gateway's (502). Never the backend's: the attempt is cancelled.
   */
  onPrepareError(err: Error, req: IncomingMessage, res: ServerResponse | Socket): void {
    const code = isInvalidRequestError(err) ? 'LW_GW_BAD_REQUEST' : 'LW_GW_PROXY_ERROR';
    const detail = `${(err as { code?: string }).code ?? err.name}: ${err.message}`;
    const flow = this.flows.get(req);
    if (!flow) {
      // A WebSocket upgrade: no HTTP response left to write.
      this.count(req, code, detail);
      if ('setHeader' in res) sendError(res, code);
      else res.destroy();
      return;
    }
    if (flow.done) return;
    // Thrown inside engine.web(): the answer's writeHead hooks (a session's secure cookie)
    // read the app's headers, not the backend's.
    flow.req.headers = flow.appHeaders;
    this.cancelAttempt(flow);
    this.reject(flow.req, flow.res, code, detail, true);
  }

  /** Ends the attempt without holding it against the backend, and stops its request. */
  private cancelAttempt(flow: Flow): void {
    this.endAttempt(flow, true);
    const p = flow.proxyReq;
    if (p && !p.destroyed) p.destroy();
  }

  /**
   * The gateway answers the request itself because of the request: a coded
   * error, counted and logged (rate-limited per code). `close`: the body is
   * unread or its framing in doubt, so the connection must not carry another
   * request (RFC 9112 §6.3), nor stay busy while Node discards a slow body.
   */
  private reject(
    req: IncomingMessage,
    res: ServerResponse,
    code: GatewayErrorCode,
    detail: string,
    close: boolean,
    retryAfterSec?: number,
    reply?: string,
  ): void {
    this.count(req, code, detail);
    if (close) this.closeAfterAnswer(req, res);
    sendError(res, code, retryAfterSec, reply);
  }

  /** The answer about to be written says `Connection: close`, and lingers (lingerAfter). */
  private closeAfterAnswer(req: IncomingMessage, res: ServerResponse): void {
    if (res.headersSent) return;
    res.setHeader('connection', 'close');
    this.lingerAfter(req);
  }

  private count(req: IncomingMessage, code: GatewayErrorCode, detail: string): void {
    this.core.metrics.onRequestRejected(code);
    const text = detail.slice(0, 200).replace(/[^\x20-\x7e]/g, '?');
    this.log.warn(code, `request refused (${code}): ${text}; ${describe(req)}`, {
      event: 'request-refused',
      code,
    });
  }

  /**
   * Runs a user hook; one that throws ends the attempt without counting it
   * against the backend (the request never fairly reached it) and answers
   * 500 LW_GW_HOOK_FAILED. Returns false then.
   */
  private runHook(flow: Flow, hook: () => unknown, proxyRes?: IncomingMessage): boolean {
    let result: unknown;
    // A hook reads the headers the backend was sent, as in http-proxy-middleware, where
    // the forwarding headers are set on req.headers (`req.headers['x-real-ip']`): given the
    // client's, a hook copying the client address forwarded a forged one.
    const { req } = flow;
    req.headers = flow.headers;
    try {
      result = hook();
    } catch (err) {
      req.headers = flow.appHeaders;
      this.hookFailed(flow, err, proxyRes);
      return false;
    } finally {
      req.headers = flow.appHeaders;
    }
    // An async hook (http-proxy-middleware's responseInterceptor is one): its rejection was
    // unhandled, which ends a Node 20 process.
    if (typeof (result as PromiseLike<unknown> | undefined)?.then === 'function') {
      const target = flow.target;
      (result as PromiseLike<unknown>).then(undefined, (err: unknown) => {
        // Not once the request is over or has moved to another attempt: the head does not
        // wait for a hook's promise (nor in http-proxy-middleware), so a rejection after a
        // small answer went out is too late to answer 500. It is still said (it was not).
        if (!flow.done && flow.target === target) this.hookFailed(flow, err, proxyRes);
        else this.logHookFailed(err, ' once its attempt was over; nothing left to answer');
      });
    }
    return true;
  }

  private logHookFailed(err: unknown, after = ''): void {
    this.core.logLine('hook', `an on.proxyReq/on.proxyRes hook threw: ${String(err)}${after}`, {
      event: 'hook-threw',
      code: 'LW_GW_HOOK_FAILED',
    });
  }

  private hookFailed(flow: Flow, err: unknown, proxyRes: IncomingMessage | undefined): void {
    this.logHookFailed(err);
    this.endAttempt(flow, true);
    // Nothing of this attempt may reach the client after the error answer.
    proxyRes?.destroy();
    flow.proxyReq?.destroy();
    this.closeIfBodyUnread(flow);
    // After the head went out: the answer is cut (sendError destroys it).
    sendError(flow.res, 'LW_GW_HOOK_FAILED');
  }

  /**
   * The attempt failed for want of the gateway's own resources (isLocalResourceError): not
   * the backend's failure, not retried (another backend needs the same descriptor), shed as
   * an overloaded gateway's request is, with a log line that names the gateway.
   */
  private outOfResources(flow: Flow, err: Error): void {
    const c = this.core;
    const backend = flow.backend!;
    const errno = errnoOf(err);
    this.endAttempt(flow, true); // no sample: not an answer, fast or slow
    c.logLine(
      `gateway-resources:${errno}`,
      `the gateway could not open a connection to ${backend.id} (${errno}): its own resources ran out (file descriptors: raise LimitNOFILE / ulimit -n); answering LW_GW_OVERLOADED, the backend not charged`,
      {
        event: 'gateway-resources',
        backend: backend.id,
        error: errno,
        outcome: 'LW_GW_OVERLOADED',
      },
    );
    this.shed(flow.res, 'LW_GW_OVERLOADED', 'overloaded', 1);
  }

  private shed(
    res: ServerResponse,
    code: GatewayErrorCode,
    reason: ShedReason,
    retryAfterSec: number,
  ): void {
    this.core.metrics.onShed(reason);
    // After close(): nothing more is served on this connection, so it closes
    // now rather than idling out the client's keep-alive (which kept a
    // stopped process alive for server.keepAliveTimeout). And a refused
    // upload's body is not read to its end: Node would read and discard all
    // of it on a keep-alive connection (15 MB in 5 s of one slow client, while
    // the gateway sheds to spare its work), as reject() does.
    if (bodyStillComing(res.req)) {
      res.shouldKeepAlive = false;
      this.lingerAfter(res.req);
    } else if (code === 'LW_GW_CLOSED') res.shouldKeepAlive = false;
    sendError(res, code, retryAfterSec);
  }

  private clearTimers(flow: Flow): void {
    if (flow.firstByteTimer) clearTimeout(flow.firstByteTimer);
    if (flow.connectTimer) clearTimeout(flow.connectTimer);
    flow.firstByteTimer = undefined;
    flow.connectTimer = undefined;
  }

  /**
   * Ends the current attempt exactly once; `cancelled`: no latency or error sample.
   * The sample is the attempt's time until now, less the time the client's side held the
   * backend's answer back (backpressure: a slow or paused reader, a pipelined answer
   * waiting its turn), and never less than the time to the head. A client's download
   * time was the backend's latency: one 20 MB download at 1 MB/s was a 17.5 s sample, and
   * the next 300 requests went 298 to the other backend.
   */
  private endAttempt(flow: Flow, cancelled = false): void {
    if (!flow.attemptOpen || !flow.backend) return;
    flow.attemptOpen = false;
    this.clearTimers(flow);
    flow.bodyClock?.paused();
    if (flow.streamTimer) clearTimeout(flow.streamTimer);
    flow.streamTimer = undefined;
    const c = this.core;
    const nowMs = c.now();
    // A stream's time is its reader's and its events', never the backend's service time.
    const elapsedMs = nowMs - flow.attemptStartMs;
    const held = flow.responded && flow.lane === undefined ? heldMs(backendAnswer(flow), nowMs) : 0;
    // Held back for most of its time, the answer says little of the backend: its socket was
    // stopped with the pipe, so whatever the backend took meanwhile is unseen, and the rest
    // read as its latency (a backend sending 8 MB at once and its last bytes a second later
    // read 40 ms to a client that paused 1.5 s). No sample then, but an answer all the same.
    // So is an answer the gateway's own loop, standing still, delayed by more than half
    // its time (a GC pause, the process stopped or descheduled): the stall is this
    // process's, not the backend's. A 2 s stall read as 1.8 s of latency on each backend
    // with a request in flight, and the others took all the traffic for 11 s. A shorter
    // delay is taken out of the sample (load/loop-delay.ts delayedMs).
    const measuredMs = !flow.responded
      ? elapsedMs
      : flow.lane !== undefined
        ? flow.headMs
        : Math.max(flow.headMs, elapsedMs - held);
    // The stall that delayed the event the sample times: a stream's head, else this end.
    const eventMs =
      flow.responded && flow.lane !== undefined ? flow.attemptStartMs + flow.headMs : nowMs;
    const stalled = cancelled ? 0 : c.loopDelayedMs(flow.attemptStartMs, eventMs);
    // A failure keeps its sample, less the stall: its outcome (errors, overload) counts,
    // and a failure's latency never lowers an estimate.
    const unmeasured =
      !cancelled && (held > elapsedMs / 2 || (flow.responseOk && stalled > measuredMs / 2));
    const latencyMs = Math.max(0, measuredMs - stalled);
    c.attemptEnded(
      flow.backend,
      nowMs,
      latencyMs,
      flow.responseOk,
      flow.overloaded,
      cancelled || unmeasured,
      flow.refused,
    );
    if (unmeasured && flow.responseOk) flow.backend.lastAnsweredAtMs = nowMs;
  }

  /** Finishes `flow` when `socket` closes (a pipelined flow: see handle). */
  private finishOnClose(socket: Socket, flow: Flow): void {
    let waiting = this.waitingOn.get(socket);
    if (!waiting) {
      const flows = new Set<Flow>();
      waiting = flows;
      this.waitingOn.set(socket, flows);
      socket.once('close', () => {
        this.waitingOn.delete(socket);
        for (const f of flows) this.finish(f);
      });
    }
    waiting.add(flow);
    flow.pipelined = true;
  }

  /** The client response closed (finished or aborted): the request is over. */
  private finish(flow: Flow): void {
    if (flow.done) return;
    // The client left before the response ended: stop the backend's work too
    // (http-proxy only aborts on the request's 'aborted', not on a closed response).
    // So does an answer that came before the whole body was sent (a 401 or 413 to an
    // upload): left open, that backend request held a pooled socket for good, and
    // `agent.maxSockets` such requests blocked the backend.
    // And so does an answer the app gave itself while the backend's was still to come (a
    // timeout middleware's 503 in front of the balancer, a hook that ended the answer):
    // that socket stayed busy with an unread answer, and with an endless one (an event
    // stream) for good, until the pool was full and every request waited for a 504.
    const proxyReq = flow.proxyReq;
    if (
      proxyReq &&
      !proxyReq.destroyed &&
      (!flow.res.writableFinished ||
        !proxyReq.writableFinished ||
        backendAnswer(flow)?.complete !== true)
    )
      proxyReq.destroy();
    // A client that left before the backend's head arrived proves nothing about the
    // backend: cancelled, as onError treats a client's break, never a timed success.
    this.endAttempt(flow, !flow.responded);
    flow.done = true;
    if (flow.waiter) this.core.queue.cancel(flow.waiter);
    flow.waiter = undefined;
    if (flow.pipelined) this.waitingOn.get(flow.req.socket)?.delete(flow);
    flow.bodyClock?.paused();
    // A client that left while its body was read before dispatch: nothing was sent.
    flow.stopRead?.();
    flow.prefix = undefined;
    this.releaseHeld(flow);
    if (flow.lane) this.lane!.leave(flow.lane);
    else if (flow.client !== undefined) this.clients?.release(flow.client);
    flow.lane = undefined;
    this.active--;
    if (this.active === 0) this.wakeIdleWaiters();
    if (flow.queued) {
      flow.queued = false;
      this.core.queueChanged();
    }
    flow.proxyReq = undefined;
    this.flows.set(flow.req, FINISHED);
    if (this.core.draining) closeWhenIdle(flow.req);
  }
}

/**
 * An answer whose head went out before the graceful close began (an event
 * stream, a download, a long poll) said keep-alive, so once it has ended
 * its connection is idle, and server.close() closes only those idle when it
 * is called. Such a connection kept the graceful close waiting its whole
 * grace, then the process alive until keepAliveTimeout (65 s behind an ALB:
 * past a Kubernetes pod's 30 s), and answered a reuse 503 LW_GW_CLOSED. Once
 * the server has stopped listening, its idle connections are closed as each
 * answer ends, as nginx closes idle keep-alive connections on a graceful stop.
 */
function closeWhenIdle(req: IncomingMessage): void {
  const server = serverOf(req);
  if (server === undefined || server.listening || !drainClosesConnections(server)) return;
  // Once per loop turn however many answers end in it: Node walks every connection
  // of the server to find the idle ones.
  if (idleSweeps.has(server)) return;
  idleSweeps.add(server);
  setImmediate(() => {
    idleSweeps.delete(server);
    closeIdleConnections(server);
  });
}

/** A backend quiet this long has sent what there is for now: compression flushes it. */
const QUIET_FLUSH_MS = 10;

/**
 * Flushes a compression middleware's zlib for an answer of no stated length: an event
 * stream (`streams.contentTypes`) after each read from the backend, as nginx's gzip does
 * unbuffered; any other once the backend has been quiet QUIET_FLUSH_MS (a long poll's
 * answer, an ndjson feed's line). Flushed after each read, a chunked export written row by
 * row became a deflate block per row: 3,000 CSV rows, 135 KB, went out as 171 KB
 * instead of 27 KB, in twice the time.
 */
function flushStreamed(
  proxyRes: IncomingMessage,
  res: ServerResponse,
  flush: () => void,
  eventStream: boolean,
): void {
  if (eventStream) {
    proxyRes.on('data', () => void flush.call(res));
    return;
  }
  const timer = setTimeout(() => {
    if (!res.writableEnded && !res.destroyed) flush.call(res);
  }, QUIET_FLUSH_MS);
  timer.unref();
  proxyRes.on('data', () => void timer.refresh());
  proxyRes.once('close', () => clearTimeout(timer));
}

/**
 * server.closeAllConnections() of the http(s).Server a request came through, and the
 * upgrades still in the app's middleware there, which Node no longer counts as its
 * connections (upgrade-routing.ts).
 */
function closeAllConnections(server: Server): void {
  (server as { closeAllConnections?: () => void }).closeAllConnections?.();
  cutRoutedUpgrades(server);
}

/** server.closeIdleConnections() of the http(s).Server a request came through. */
function closeIdleConnections(server: Server): void {
  (server as { closeIdleConnections?: () => void }).closeIdleConnections?.();
}

/** Servers with a closeWhenIdle sweep queued for this loop turn. */
const idleSweeps = new WeakSet<Server>();

/** A response header that describes a client's rate limit: `RateLimit*` or `X-RateLimit*`. */
function hasRateLimitHeaders(headers: IncomingHttpHeaders): boolean {
  for (const name in headers) {
    if (name.startsWith('ratelimit') || name.startsWith('x-ratelimit')) return true;
  }
  return false;
}

/** Requests that emitted 'timeout' after the balancer saw them (RequestFlow.handle). */
const timeoutEmitted = new WeakSet<IncomingMessage>();

/**
 * connect-timeout's 503 is on its way to next(err): see RequestFlow.appAnswers. Its
 * responder (respond: true) among the request's 'timeout' listeners, not any listener: an
 * app's own (`req.setTimeout(ms, log)` beside `respond: false`) answers nothing, and the
 * request waited for an answer that never came. Read only once the request has timed out:
 * `req.timedout` (connect-timeout's timer), or a 'timeout' its socket emitted on it (a
 * server or request `setTimeout` shorter than the app's: the responder listens to the
 * event, whoever emits it, and the balancer's 408 for the stalled body then went before
 * the final handler's write, which threw ERR_HTTP_HEADERS_SENT and ended the process).
 */
function timeoutAnswered(req: IncomingMessage): boolean {
  if ((req as { timedout?: unknown }).timedout !== true && !timeoutEmitted.has(req)) return false;
  return req.listeners('timeout').some(isConnectTimeoutResponder);
}

/** connect-timeout's onTimeout() listener, by the error it passes on (its code since 1.0). */
// eslint-disable-next-line @typescript-eslint/no-unsafe-function-type -- what EventEmitter.listeners() returns
const isConnectTimeoutResponder = (listener: Function): boolean =>
  Function.prototype.toString.call(listener).includes('Response timeout');

/**
 * An answer of the gateway's own while the request body is still coming (a
 * streamed upload the backend failed, reset or timed out on): the rest of
 * the body will not be read, since the body pump stopped with its source
 * paused and Node discards only a body nobody started reading, so the
 * connection cannot carry another request. The answer says `close` and the
 * connection closes after it (as relayHead does for a backend's early
 * answer). Kept alive, the client's next request on it was never answered
 * and was reset when keepAliveTimeout ran out.
 */
/** The request has a body and not all of it has arrived (framing not yet checked). */
function bodyStillComing(req: IncomingMessage): boolean {
  if (req.complete) return false;
  const length = req.headers['content-length'];
  return req.headers['transfer-encoding'] !== undefined || (length !== undefined && length !== '0');
}

/**
 * One 'close' listener per server, whatever the number of balancers on it: a
 * listener each (one balancer per service behind one server) set off Node's
 * MaxListenersExceededWarning at the eleventh.
 */
const closeWatchers = new WeakMap<Server, Set<() => void>>();

function isServerList(s: Server | readonly Server[]): s is readonly Server[] {
  return Array.isArray(s);
}

function watchClose(server: Server, onClose: () => void): void {
  let watchers = closeWatchers.get(server);
  if (!watchers) {
    const set = new Set<() => void>();
    watchers = set;
    closeWatchers.set(server, set);
    server.once('close', () => {
      closeWatchers.delete(server);
      for (const w of set) w();
    });
  }
  watchers.add(onClose);
}

function unwatchClose(server: Server, onClose: () => void): void {
  closeWatchers.get(server)?.delete(onClose);
}

/** The balancers (their RequestFlows) that have served requests of a server and not closed. */
const balancersOn = new WeakMap<Server, Set<RequestFlow>>();

/**
 * After the last balancer on a stopped server has closed, its leftover connections are
 * cut this much later: past the lingering close's check of its server (linger.ts), so an
 * answer that lingers for its upload has been read.
 */
const CUT_LEFTOVERS_MS = 1_000;

const closingServers = new WeakSet<Server>();

/**
 * Once `server` has stopped listening, every answer on it says `Connection:
 * close` and its connection closes after it: those the app's own middleware
 * gives in front of the balancer (a 401 from its auth, a static file) too.
 * Node answers them keep-alive after server.close(), so such a connection
 * stayed open until keepAliveTimeout, or for the whole grace while a client
 * kept sending on it, and the graceful close waited for it.
 */
function closeAfterEachAnswer(server: Server): void {
  // closeListener (run-workers.ts) closes those of its servers gradually itself.
  if (closingServers.has(server) || !drainClosesConnections(server)) return;
  closingServers.add(server);
  server.prependListener(
    'request',
    function (this: Server, _req: IncomingMessage, res: ServerResponse) {
      if (!this.listening) res.shouldKeepAlive = false;
    },
  );
  // An answer of the app's own already under way when the close began said keep-alive,
  // and once it has ended nothing of the balancer's runs on its connection to close it
  // (closeWhenIdle does for its own answers): the connection, and the close waiting for
  // it, lasted until keepAliveTimeout. A sweep closes such connections while the server
  // is not listening; it ends with the server, and never holds the process.
  const sweep = setInterval(() => {
    if (!server.listening) closeIdleConnections(server);
  }, IDLE_SWEEP_MS);
  sweep.unref();
  watchClose(server, () => clearInterval(sweep));
}

/** How often closeAfterEachAnswer closes a draining server's idle connections. */
const IDLE_SWEEP_MS = 100;
