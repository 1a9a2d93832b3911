/**
 * WebSocket upgrades: picked like a request (same eligible set, strategy and
 * affinity key), proxied through the same http-proxy-middleware instance, and
 * without in-flight accounting (a long-lived connection is not a request in
 * flight; counting it would skew every load estimate). Retried on another
 * backend only when the backend could not be reached at all (a refused or
 * failed connect: it has not seen a byte), within `retry`'s maxRetries and
 * budget, as a GET; once the handshake is sent, never (a backend may have
 * acted on it).
 *
 * Every answer the gateway writes itself is a coded one, as a request's
 * (`X-Loadwise-Error`, and `Retry-After` on a 503), including a `502` when the
 * backend could not be reached before it said `101`. An open WebSocket
 * counts as the gateway's work at shutdown: `lb.close()` waits for the open
 * ones within its grace, then cuts them with their backend connections
 * (http-proxy pipes the two sockets, and a destroyed pipe source does not end
 * what it writes to).
 *
 * Before its `101` an upgrade is a request like any other, bounded as one: no
 * body (http-proxy would send the head only), no more than MAX_EARLY_BYTES
 * sent before the answer (400 LW_GW_BAD_REQUEST), the client's hop-by-hop
 * headers removed, the backend's answer due within requestTimeoutMs, and its
 * backend connection closed after an answer that is not a `101`, never
 * pooled. Such an answer, or the gateway's own, closes the client's socket
 * once it is out: ended only, a socket the client never closed stayed
 * half-open for good, with its webSockets places.
 *
 * Open, it is bounded too (`webSockets`): closed, both sides, after
 * idleTimeoutMs without a byte either way, and HALF_CLOSED_GRACE_MS after
 * either side's EOF; at most maxPerClient per client address (429
 * LW_GW_CLIENT_LIMIT) and maxOpen in all (503 LW_GW_OVERLOADED), each counted
 * from the moment the upgrade is taken.
 */
import { STATUS_CODES, ServerResponse, type ClientRequest, type IncomingMessage } from 'node:http';
import type { Socket } from 'node:net';
import { ClientLimit, clientKey } from '../admission/client-limit';
import { closeIdle } from '../registry/pool-agent';
import { resetSocket } from './reset-socket';
import type { Backend } from '../registry/backend';
import { ERROR_CODE_HEADER } from '../error-response';
import { pathForLog } from '../observability/event-log';
import { GATEWAY_ERRORS, type GatewayErrorCode } from '../errors';
import { hashKeyOf } from './affinity';
import type { FlowHost } from './flow-host';
import { clientAddress, setForwardedHeaders, stripHopByHopForUpgrade } from './forwarded';
import { LoopGuard } from './loop-guard';
import { checkFraming, checkPath, refusedMethod } from './request-checks';
import { namedByConnection } from './response-head';
import type { Endpoint } from '../strategies/types';
import {
  CONNECT_TIMEOUT_CODE,
  TIMEOUT_CODE,
  classify,
  codedError,
  connectedEvent,
  errnoOf,
  resetOnPooledConnection,
  isBadAnswer,
  isInvalidRequestError,
  isLocalResourceError,
} from './upstream-errors';
import { afterPendingAnswers, MAX_EARLY_BYTES, responseOnSocket } from '../upgrade-routing';

export class UpgradeFlow {
  private readonly upgrades = new WeakMap<IncomingMessage, Backend>();
  /** Client sockets handed to the proxy, until they close: their request. */
  private readonly open = new Map<Socket, IncomingMessage>();
  private readonly sockets = new WeakMap<IncomingMessage, Socket>();
  /** Upgrades the backend accepted (101): a WebSocket, no place for an HTTP answer any more. */
  private readonly upgraded = new WeakSet<IncomingMessage>();
  /** Upgrades whose client left before the backend answered: their backend request was cut. */
  private readonly cancelled = new WeakSet<IncomingMessage>();
  /** WebSockets per client address (webSockets.maxPerClient), undefined when unbounded. */
  private readonly perClient: ClientLimit | undefined;
  /** What a retry of an upgrade needs: its pick's inputs, the backends tried, its reader. */
  private readonly attempts = new WeakMap<IncomingMessage, UpgradeAttempt>();

  constructor(
    private readonly core: FlowHost,
    /** An open WebSocket closed (the shutdown's wait for idle looks again). */
    private readonly onClosed: () => void = () => {},
    /** Serves an upgrade request that is not a WebSocket's as an ordinary request. */
    private readonly serve?: (req: IncomingMessage, res: ServerResponse) => void,
  ) {
    const max = core.options.webSockets.maxPerClient;
    this.perClient = max === undefined ? undefined : new ClientLimit(max);
  }

  /** WebSockets open through this balancer. */
  get openCount(): number {
    return this.open.size;
  }

  /**
   * An upgrade to anything but a WebSocket (`Upgrade: h2c`, which Java's
   * HttpClient and `curl --http2` send on plain-http URLs, or an Upgrade on a
   * POST): http-proxy would close the socket without a word. A server may
   * ignore Upgrade (RFC 9110 §7.8), so it is served as the ordinary request it
   * also is, on a response bound to its socket, which closes after it (what
   * followed the head on the socket is not read). One with a body cannot be:
   * Node handed its bytes over raw; 400 `LW_GW_BAD_REQUEST`, counted, logged.
   */
  private ignoreUpgrade(req: IncomingMessage, socket: Socket): void {
    if (!this.serve || !this.servedAsRequest(req)) {
      const code = 'LW_GW_BAD_REQUEST';
      // Refused by its framing checks (a bad Host, not HTTP/1.x) rather than for a body:
      // said as such, where the body sentence named a body the request did not have.
      const framing = checkFraming(req);
      const detail = !framing.ok
        ? `an upgrade to ${JSON.stringify(String(req.headers.upgrade).slice(0, 64))}: ${framing.detail}`
        : `an upgrade to ${JSON.stringify(String(req.headers.upgrade).slice(0, 64))} on a ${String(req.method).slice(0, 16)} with a body: only WebSocket upgrades (GET) are proxied`;
      this.core.metrics.onRequestRejected(code);
      this.core.logLine(`upgrade-refused:${code}`, `upgrade refused (${code}): ${detail}`, {
        event: 'request-refused',
        code,
      });
      return refuse(socket, 400, code);
    }
    const res = responseOnSocket(req, socket);
    if (res !== undefined) this.serve(req, res);
  }

  /** An upgrade request that is not a WebSocket's and has no body: served as a request. */
  servedAsRequest(req: IncomingMessage): boolean {
    if (isWebSocketUpgrade(req)) return false;
    const framing = checkFraming(req);
    return framing.ok && framing.framing === 'none';
  }

  targetOf(req: IncomingMessage): string | undefined {
    return this.upgrades.get(req)?.target.href;
  }

  upgrade(req: IncomingMessage, socket: Socket, head: Buffer): void {
    // `lb.upgrade` as the server's own listener: an upgrade pipelined behind a request
    // whose answer is not out yet waits for it (upgrade-routing.ts). Through
    // routeUpgrades it has waited already, and the socket is this upgrade's.
    afterPendingAnswers(socket, () => this.upgradeNow(req, socket, head));
  }

  private upgradeNow(req: IncomingMessage, socket: Socket, head: Buffer): void {
    // Closed before this ran (routeUpgrades runs the app's middleware first, an async one
    // included): its 'close' has fired, so nothing would give back what is taken below.
    // Or the client's FIN was read already: its 'end' will not come again to tell
    // readUntilAnswer, and the upgrade would be proxied for a client that left.
    if (socket.destroyed) return;
    if (socket.readableEnded) return void socket.destroy();
    if (!isWebSocketUpgrade(req)) return this.ignoreUpgrade(req, socket);
    const c = this.core;
    if (c.closed) return refuse(socket, 503, 'LW_GW_CLOSED');
    if (c.draining) return refuse(socket, 503, 'LW_GW_DRAINING');
    if (c.overload?.overloaded || c.acceptQueue?.shed())
      return refuse(socket, 503, 'LW_GW_OVERLOADED');
    if (c.options.forwardMountPath) {
      const original = (req as { originalUrl?: string }).originalUrl;
      if (original) req.url = original;
    }
    // The same checks as a request's (request-flow.ts handle): an upgrade's
    // path is joined to the backend's base path the same way, and a target
    // that is not a path (`GET *`) would otherwise get no answer at all
    // (http-proxy-middleware leaves a socket it does not proxy alone).
    const refusal = upgradeRefusal(req);
    if (refusal) {
      const { code, detail } = refusal;
      c.metrics.onRequestRejected(code);
      c.logLine(`upgrade-refused:${code}`, `upgrade refused (${code}): ${detail}`, {
        event: 'request-refused',
        code,
      });
      return refuse(socket, GATEWAY_ERRORS[code].status, code);
    }
    // Come back to this gateway: refused as a request is (loop-guard.ts).
    const via = LoopGuard.incoming(req);
    const looped = c.loops.loopedBackend(via);
    if (looped !== undefined && c.loops.isLoop(via!, c.loopedBack(looped, socket))) {
      c.metrics.onRequestRejected('LW_GW_LOOP');
      c.logLine(
        'upgrade-refused:LW_GW_LOOP',
        `upgrade refused (LW_GW_LOOP): came back through backend ${looped}`,
        {
          event: 'request-refused',
          code: 'LW_GW_LOOP',
        },
      );
      return refuse(socket, 508, 'LW_GW_LOOP');
    }
    const { maxOpen } = c.options.webSockets;
    if (maxOpen !== undefined && this.open.size >= maxOpen) {
      c.metrics.onShed('overloaded');
      c.logLine('websockets-max-open', `upgrade refused: ${maxOpen} WebSockets open`, {
        event: 'request-refused',
        code: 'LW_GW_OVERLOADED',
        limit: 'webSockets.maxOpen',
      });
      return refuse(socket, 503, 'LW_GW_OVERLOADED');
    }
    // Before the headers change: the address X-Forwarded-For trust gives, as a request's.
    const address = clientAddress(req, c.options.trustForwarded);
    const client = this.perClient && clientKey(address);
    if (client !== undefined && !this.perClient!.acquire(client)) {
      c.metrics.onRequestRejected('LW_GW_CLIENT_LIMIT');
      c.logLine(
        'websockets-per-client',
        `upgrade refused: ${this.perClient!.max} WebSockets of ${client} open`,
        { event: 'request-refused', code: 'LW_GW_CLIENT_LIMIT', limit: 'webSockets.maxPerClient' },
      );
      return refuse(socket, 429, 'LW_GW_CLIENT_LIMIT');
    }
    setForwardedHeaders(req, c.options.trustForwarded, c.options.trustHeaders, address);
    stripHopByHopForUpgrade(req);
    const aff = c.options.affinity;
    const hashKey = aff ? hashKeyOf(req, aff, address).key : undefined;
    const nowMs = c.now();
    const backend = c.pickUpgrade(nowMs, hashKey);
    if (!backend) {
      if (client !== undefined) this.perClient!.release(client);
      return refuse(socket, 503, 'LW_GW_NO_BACKEND');
    }
    c.loops.mark(req.headers, via, backend.id);
    this.upgrades.set(req, backend);
    this.sockets.set(req, socket);
    this.attempts.set(req, {
      via,
      hashKey,
      tried: undefined,
      retries: 0,
      stopReading: undefined,
      proxyReq: undefined,
      answer: undefined,
      staleRetried: false,
      connected: false,
    });
    this.open.set(socket, req);
    // Counted on the backend too: discovery does not forget a backend with one open.
    backend.openUpgrades++;
    socket.on('error', () => socket.destroy());
    socket.once('close', () => {
      this.open.delete(socket);
      // The backend of the last attempt: a retry moved the count to it.
      this.upgrades.get(req)!.openUpgrades--;
      if (client !== undefined) this.perClient!.release(client);
      this.onClosed();
    });
    c.engine.upgrade(backend, req, socket, head);
  }

  /**
   * The backend request of an upgrade: its socket, once upgraded, closes with
   * the client's. Until then it is bounded: it never goes back to the
   * backend's keep-alive pool (a backend that answered without switching may
   * have left the connection in any state), and a client that leaves before
   * the answer cancels it, without charging the backend.
   */
  onProxyReq(proxyReq: ClientRequest, req: IncomingMessage): void {
    const socket = this.sockets.get(req);
    if (!socket) return;
    const cancel = (): void => {
      if (this.upgraded.has(req) || proxyReq.destroyed) return;
      this.cancelled.add(req);
      proxyReq.destroy();
    };
    if (socket.destroyed) return cancel();
    socket.once('close', cancel);
    const stopReading = readUntilAnswer(
      socket,
      () => {
        cancel();
        socket.destroy();
      },
      () => {
        cancel();
        const code = 'LW_GW_BAD_REQUEST';
        this.core.metrics.onRequestRejected(code);
        this.core.logLine(
          `upgrade-refused:${code}`,
          `upgrade refused (${code}): more than ${MAX_EARLY_BYTES} bytes sent before the answer to the upgrade`,
          { event: 'request-refused', code },
        );
        refuse(socket, 400, code);
      },
    );
    const attempt = this.attempts.get(req);
    if (attempt) {
      attempt.stopReading = stopReading;
      attempt.proxyReq = proxyReq;
      attempt.answer = undefined;
      attempt.connected = false;
    }
    // The backend answers (101 or not) within requestTimeoutMs, as a request's first byte
    // must; else 504, the backend's failure.
    const timer = setTimeout(() => {
      if (this.upgraded.has(req) || proxyReq.destroyed) return;
      proxyReq.destroy(codedError('no answer to the upgrade in time', TIMEOUT_CODE));
    }, this.core.options.requestTimeoutMs);
    // And its connection (TLS: with its handshake) within connectTimeoutMs, as a request's
    // (request-flow.ts onProxyReq): a connect failure, so another backend is tried. An
    // upgrade to a TLS backend that never answered the ClientHello waited out
    // requestTimeoutMs (30 s by default) for a 504 that no retry followed. http-proxy hands
    // an upgrade's request over before its socket (ws-incoming.js).
    let connectTimer: NodeJS.Timeout | undefined;
    const connecting = (s: Socket): void => {
      if (!s.connecting) {
        if (attempt) attempt.connected = true;
        return;
      }
      connectTimer = setTimeout(() => {
        if (!proxyReq.destroyed)
          proxyReq.destroy(codedError('no connection in time', CONNECT_TIMEOUT_CODE));
      }, this.core.options.connectTimeoutMs);
      s.once(connectedEvent(s), () => {
        clearTimeout(connectTimer);
        if (attempt) attempt.connected = true;
      });
    };
    if (proxyReq.socket) connecting(proxyReq.socket);
    else proxyReq.once('socket', connecting);
    const settled = (): void => {
      clearTimeout(timer);
      clearTimeout(connectTimer);
    };
    proxyReq.once('response', (res: IncomingMessage) => {
      settled();
      if (attempt) attempt.answer = res;
      stopReading(false);
      // Node's agent then closes the socket when this non-101 answer ends, instead of
      // freeing it to the pool. (Set here: writing the head, `Connection: Upgrade`, set it.)
      proxyReq.shouldKeepAlive = false;
      closeDelimited(res);
      // http-proxy ends the client's socket with the answer, and the server's sockets
      // allow half-open: a client that never closes its side held the socket, and its
      // webSockets places, for good. So it closes once the answer is out, and an answer
      // that stops moving (a stalled body, a client that does not read) is cut.
      socket.once('finish', () => socket.destroy());
      // Cut before the whole answer went out (else 'finish' closed it): with a reset, as
      // below, since a FIN ends a body framed by the close, and the client read a stalled
      // page as a whole one.
      socket.setTimeout(this.core.options.requestTimeoutMs, () => resetSocket(socket));
      // An answer the backend stopped sending (its FIN or reset mid-body): http-proxy's pipe
      // neither ends nor closes the client's socket then, which waited out requestTimeoutMs
      // with the client's webSockets place held, and then ended with a FIN, which a body
      // framed by the close (a chunked one) reads as complete. Reset at once.
      res.once('close', () => {
        if (!res.complete) resetSocket(socket);
      });
    });
    proxyReq.once('close', () => {
      settled();
      // No answer (an error, a timeout): the gateway's own 502 or 504 is on its way.
      stopReading(false);
    });
    proxyReq.once('upgrade', (_res: IncomingMessage, backendSocket: Socket) => {
      settled();
      this.upgraded.add(req);
      // The backend answered as asked: a success, which ends a run of failures (a backend
      // carrying only WebSockets never reset its consecutive count, and a few refused paths
      // among many good WebSockets ejected it).
      const backend = this.upgrades.get(req);
      if (backend) this.core.outlier.onSuccess(backend);
      if (socket.destroyed) return backendSocket.destroy();
      // Before http-proxy pipes the two sockets (its listener comes after this one).
      stopReading(true);
      socket.once('close', () => backendSocket.destroy());
      // Either side's EOF ends the tunnel, as nginx's does. http-proxy's pipe passes the FIN
      // on, and the other side has HALF_CLOSED_GRACE_MS for its last words (the echo of
      // the last bytes, its close frame); then both are closed. Only the client socket's
      // close ended it: a client's FIN to a backend that did not close after it held the
      // client's socket (in CLOSE-WAIT) and its webSockets places until idleTimeoutMs,
      // for good without one.
      let grace: NodeJS.Timeout | undefined;
      const ended = (): void => {
        grace ??= setTimeout(() => socket.destroy(), HALF_CLOSED_GRACE_MS);
      };
      socket.once('end', ended);
      backendSocket.once('end', ended);
      socket.once('close', () => clearTimeout(grace));
      // And the other way: the backend's side closed (after its close frame, say), so the
      // tunnel is over. http-proxy ends the client's side, but a client socket its pipe had
      // paused (a client sending faster than the backend read) was never read again: its
      // FIN unseen, it held its socket and webSockets places until idleTimeoutMs, for
      // good without one. Closed once what the backend sent has been written.
      backendSocket.once('close', () => socket.destroySoon());
      // The client socket carries both directions (a read is the client's byte, a
      // write the backend's), so its inactivity timer is the tunnel's. http-proxy
      // has set it to 0 before this request; nothing sets it after.
      const idle = this.core.options.webSockets.idleTimeoutMs;
      if (idle !== undefined) {
        socket.setTimeout(idle, () => {
          this.core.metrics.onWebSocketIdleClosed();
          socket.destroy();
        });
      }
    });
  }

  /**
   * The upgrade failed: count it. Before the backend said 101 nothing was
   * written to the client yet, so it gets a coded 502; after, it is a broken
   * WebSocket, and its socket is closed.
   */
  onError(err: Error, req: IncomingMessage, res: ServerResponse | Socket): void {
    // The client left before the answer: its backend request was cancelled, nobody's failure.
    if (this.cancelled.has(req)) return;
    if (isInvalidRequestError(err)) {
      // A header Node refuses to send is the client's (or a middleware's), as on the request
      // path: 400, never the backend's failure (five in a row ejected a healthy backend).
      this.core.metrics.onRequestRejected('LW_GW_BAD_REQUEST');
      return refuseIfSocket(res, 400, 'LW_GW_BAD_REQUEST');
    }
    const backend = this.upgrades.get(req);
    if (backend && isLocalResourceError(err) && !this.upgraded.has(req)) {
      // The gateway's own descriptors ran out, as on the request path (request-flow.ts
      // outOfResources): not the backend's failure, and not retried.
      this.core.metrics.onShed('overloaded');
      return refuseIfSocket(res, 503, 'LW_GW_OVERLOADED');
    }
    const answer = this.attempts.get(req)?.answer;
    if (backend && answer?.complete && !('setHeader' in res)) {
      // The whole answer came, and bytes after it (garbage, a body after a 204): the parser
      // fails on those, not on the answer. As on the request path (request-flow.ts
      // bytesAfterAnswer): relayed, logged, not held against the backend. A 502 written
      // here went out in the middle of the answer's body. http-proxy ends the client's
      // socket once this returns (ws-incoming.js onOutgoingError), before its pipe has
      // written what the parser read with the error: written now, then the socket closes
      // ('finish').
      answer.unpipe(res);
      for (let chunk = answer.read() as Buffer | null; chunk !== null; chunk = answer.read())
        res.write(chunk);
      const errno = errnoOf(err);
      const path = pathForLog(req.url);
      this.core.logLine(
        `upstream:${backend.id}:after-answer`,
        `${backend.id} (${backend.target.href}) sent bytes after a complete answer to the upgrade ${path}: ${errno}; answer relayed`,
        { event: 'upstream-bytes-after-answer', backend: backend.id, error: errno, path },
      );
      return;
    }
    // Cut by close() after its grace: the client sockets destroyed first, then the pools,
    // whose handshakes still waiting end here. Not the backend's failure, as on the request
    // path (request-flow.ts, onError).
    if (this.core.closed) return void res.destroy();
    const stale = !('setHeader' in res) && this.staleConnection(err, req);
    if (backend) {
      const kind = classify(err as Error & { code?: string });
      this.core.metrics.onError(backend.id, kind);
      // Not after the 101: an error on an open tunnel is a close race (the backend ended
      // its side while the client still sent: EPIPE), which any client can provoke with a
      // frame the backend refuses; five in a row ejected a healthy backend. Nor a reset of
      // a connection the handshake went out on: that is how a WebSocket server refuses an
      // upgrade (ws's noServer pattern destroys the socket of an unknown path, a bad token,
      // an Origin it refuses), and any client can send one: 40 upgrades to such a path
      // ejected two of four healthy backends, for HTTP traffic too (an adversarial review,
      // 2026-12-07). Two narrower rules were tried and broken by their re-reviews: charged
      // unless the backend had upgraded lately (re-ejected at a start, after a quiet spell,
      // after each ejection), and unless the path was served lately (one good upgrade, then
      // 40 with a bad token on the same path, ejected two of four). So a backend whose
      // WebSocket service is broken behind passing GETs is not ejected by its resets: they
      // are counted (loadwise_backend_errors_total{kind="reset"}) for an alert, and a
      // timeout or a refused connection still counts.
      const refused = kind === 'reset' && this.attempts.get(req)?.connected === true;
      if (!this.upgraded.has(req) && !stale && !refused) this.core.outlier.onFailure(backend);
    }
    if ('setHeader' in res) return;
    if (backend && this.retried(err, req, res, backend, stale)) return;
    const timedOut = classify(err as Error & { code?: string }) === 'timeout';
    // Part of an answer was relayed (its head at least): the client's socket is reset, so the
    // client sees the answer cut; a 502 written after it read as the rest of its body.
    if (answer) resetSocket(res);
    else if (!this.upgraded.has(req) && res.writable) {
      if (timedOut) refuse(res, 504, 'LW_GW_UPSTREAM_TIMEOUT');
      else refuse(res, 502, 'LW_GW_UPSTREAM_FAILED');
    } else res.destroy();
  }

  /**
   * The upgrade could not reach `failed` (its connect failed: nothing was sent) and goes
   * to another backend on the same client socket, when `retry` allows one: a GET, within
   * maxRetries and the retry budget, a backend not tried yet. A backend that went down
   * (a deploy, a crash) used to cost every WebSocket picked for it a 502, while a
   * request to it was retried. Once the handshake is sent it is never retried, but for a
   * `stale` connection (staleConnection).
   */
  private retried(
    err: Error,
    req: IncomingMessage,
    socket: Socket,
    failed: Backend,
    stale: boolean,
  ): boolean {
    const c = this.core;
    const attempt = this.attempts.get(req);
    const e = err as Error & { code?: string };
    const connectFailed = classify(e) === 'connect' || e.code === CONNECT_TIMEOUT_CODE;
    if (!attempt || this.upgraded.has(req) || !(connectFailed || stale) || isBadAnswer(e))
      return false;
    const r = c.options.retry;
    if (!r || !r.methods.includes('GET') || attempt.retries >= r.maxRetries) return false;
    if (socket.destroyed || !socket.writable || c.closed || c.draining) return false;
    attempt.tried ??= new Set();
    attempt.tried.add(failed.endpoint);
    if (stale) {
      // As a request's (request-flow.ts onError): once, on a new connection (the pool's
      // older idle ones closed), to the same backend when it is the only one.
      attempt.staleRetried = true;
      closeIdle(failed.agent);
      if (c.nothingLeftToTry(attempt.tried)) attempt.tried.delete(failed.endpoint);
    }
    if (c.nothingLeftToTry(attempt.tried) || !(c.budget?.tryRetry() ?? false)) return false;
    const next = c.pickUpgrade(c.now(), attempt.hashKey, attempt.tried);
    if (!next) {
      // No retry happened: the token goes back, as for a request (request-flow.ts onError).
      c.budget?.refund();
      return false;
    }
    const errno = errnoOf(e);
    c.logLine(
      `upstream:${failed.id}:${errno}`,
      `attempt ${attempt.retries + 1} of the WebSocket upgrade ${pathForLog(req.url)} to ${failed.id} (${failed.target.href}) failed: ${errno}${stale ? ' on a pooled connection' : ''}; retrying`,
      {
        event: 'upstream-failed',
        backend: failed.id,
        url: failed.target.href,
        error: errno,
        attempt: attempt.retries + 1,
        method: req.method,
        path: pathForLog(req.url),
        outcome: 'retrying',
      },
    );
    c.metrics.onRetry(failed.id);
    attempt.retries++;
    // What the client sent so far, the head included, goes back in front of the socket
    // for the next attempt, which is therefore handed an empty head.
    attempt.stopReading?.(true);
    attempt.stopReading = undefined;
    failed.openUpgrades--;
    next.openUpgrades++;
    this.upgrades.set(req, next);
    c.loops.mark(req.headers, attempt.via, next.id);
    // http-proxy ends the client's socket right after this error reaches its listeners
    // (ws-incoming.js, onOutgoingError), synchronously: that one end() is skipped, the
    // socket carrying on. Restored in a microtask in any case, so a later end() is never
    // swallowed.
    const skipEnd = ((): Socket => {
      delete (socket as { end?: unknown }).end;
      return socket;
    }) as Socket['end'];
    socket.end = skipEnd;
    queueMicrotask(() => {
      if (socket.end === skipEnd) delete (socket as { end?: unknown }).end;
    });
    c.engine.upgrade(next, req, socket, Buffer.alloc(0));
    return true;
  }

  /**
   * A pooled connection the backend closed as it was handed this upgrade (the idle-close
   * race; request-flow.ts staleConnection): reset before any answer. Retried like a failed
   * connect, within `retry`, and not held against the backend. Charged and not retried, a
   * healthy lone backend answered 502.
   */
  private staleConnection(err: Error, req: IncomingMessage): boolean {
    const attempt = this.attempts.get(req);
    if (!attempt || this.upgraded.has(req) || attempt.answer !== undefined || attempt.staleRetried)
      return false;
    return resetOnPooledConnection(err, attempt.proxyReq);
  }

  /**
   * close()'s grace is over: open WebSockets are cut, with their backend side, and an
   * upgrade still waiting for its backend's answer (no byte of one relayed) gets 503
   * LW_GW_CLOSED with Retry-After, as a waiting request does. It was closed without a word,
   * and its client could not tell a gateway going away, to retry elsewhere, from a failure.
   */
  closeAll(): void {
    for (const [socket, req] of this.open) {
      const waiting =
        !this.upgraded.has(req) && this.attempts.get(req)?.answer === undefined && socket.writable;
      if (!waiting) {
        socket.destroy();
        continue;
      }
      this.core.metrics.onShed('draining');
      refuse(socket, 503, 'LW_GW_CLOSED');
    }
  }
}

interface UpgradeAttempt {
  /** The X-Loadwise-Via the client's request came with (loop-guard.ts). */
  via: string | undefined;
  hashKey: string | undefined;
  /** Backends whose connect failed, not to be picked again. */
  tried: Set<Endpoint> | undefined;
  retries: number;
  /** Ends the current attempt's reading of the client socket (readUntilAnswer). */
  stopReading: ((keep: boolean) => void) | undefined;
  /** The current attempt's backend request. */
  proxyReq: ClientRequest | undefined;
  /** Its answer, not a 101 (its body piped to the client by http-proxy), once its head came. */
  answer: IncomingMessage | undefined;
  /** It went again after a pooled connection the backend had closed (retriedStale): once. */
  staleRetried: boolean;
  /** The current attempt's connection is made (TLS: its handshake done): the upgrade went out. */
  connected: boolean;
}

/**
 * How long an open WebSocket outlives the EOF of one side: time for the
 * other's last bytes, already on their way (a close frame, the echo of what
 * came last), a round trip or two. A peer that keeps its side open past it
 * holds two sockets and a webSockets place for nothing.
 */
const HALF_CLOSED_GRACE_MS = 5_000;

/**
 * Reads the client's socket while the backend has not answered the upgrade,
 * so that a client that leaves (FIN or RST) is seen at once: unread, its
 * socket said nothing until requestTimeoutMs, and each one held a backend
 * connection and a webSockets place that long. A WebSocket client sends
 * nothing before the answer (RFC 6455 §4.1); what one sends anyway is kept,
 * up to MAX_EARLY_BYTES, and put back for the tunnel. A chunk that would take
 * it past them calls `onTooMuch` instead, and the reading stops, nothing kept:
 * pausing the socket there (as before) held up to ~180 KiB per connection,
 * the chunk that went over and what the socket had read in the meantime, for
 * requestTimeoutMs. The returned stop() ends the reading at the answer (or
 * when there is none), and with `keep` puts those bytes back in front of
 * whatever comes next.
 */
function readUntilAnswer(
  socket: Socket,
  onLeft: () => void,
  onTooMuch: () => void,
): (keep: boolean) => void {
  const early: Buffer[] = [];
  let bytes = 0;
  let stopped = false;
  const onData = (chunk: Buffer): void => {
    bytes += chunk.length;
    if (bytes <= MAX_EARLY_BYTES) return void early.push(chunk);
    // Still flowing, with no listener: what more comes is dropped while the refusal goes
    // out, so the socket closes with a FIN rather than a reset over unread bytes.
    stopped = true;
    early.length = 0;
    socket.off('data', onData);
    socket.off('end', onLeft);
    onTooMuch();
  };
  socket.on('data', onData);
  socket.once('end', onLeft);
  // A retry's socket was paused by the attempt before (its bytes put back): read again.
  socket.resume();
  return (keep) => {
    // Once only: after the tunnel is piped, a pause here would stall it.
    if (stopped) return;
    stopped = true;
    socket.off('data', onData);
    socket.off('end', onLeft);
    socket.pause();
    if (keep && early.length > 0 && !socket.readableEnded) socket.unshift(Buffer.concat(early));
  };
}

/**
 * Why an upgrade is answered by the gateway instead of proxied, or undefined:
 * the checks of a request (request-flow.ts handle), and no body. http-proxy
 * sends an upgrade's head and never its body (the client's bytes flow only
 * after a 101), so a backend that serves it as a plain request would wait for
 * Content-Length bytes on a pooled connection and read the next request's
 * head as them (request smuggling). A WebSocket handshake has no body (RFC
 * 6455 §4.1).
 */
function upgradeRefusal(req: IncomingMessage):
  | {
      code: 'LW_GW_BAD_REQUEST' | 'LW_GW_METHOD_NOT_ALLOWED' | 'LW_GW_BAD_PATH';
      detail: string;
    }
  | undefined {
  const framing = checkFraming(req);
  if (!framing.ok) return { code: 'LW_GW_BAD_REQUEST', detail: framing.detail };
  const method = refusedMethod(req.method);
  if (method) return { code: 'LW_GW_METHOD_NOT_ALLOWED', detail: method };
  if (framing.framing !== 'none')
    return { code: 'LW_GW_BAD_REQUEST', detail: 'a request body on an upgrade' };
  const path = checkPath(req.url, req.headers.host);
  return path === undefined ? undefined : { code: 'LW_GW_BAD_PATH', detail: path };
}

/**
 * A backend's answer to an upgrade that is not a `101`, made true to how
 * http-proxy relays it (its ws pass, on 'response' after this listener): it
 * writes the head as the backend sent it, then pipes the body Node has already
 * decoded, and ends the client's socket with it. A chunked answer reached the
 * client as `Transfer-Encoding: chunked` over bare bytes, which a client
 * parses as chunk sizes. So the head loses its framing and the backend's
 * connection headers and says `Connection: close`: the body ends with the
 * connection (or at its Content-Length). The reason phrase is the standard
 * one: http-proxy writes the backend's unchecked, a control byte included
 * (the request path drops such a phrase, response-head.ts).
 */
function closeDelimited(res: IncomingMessage): void {
  const h = res.headers;
  // What the backend's Connection names is about its connection too (RFC 9110 §7.6.1).
  for (const name of namedByConnection(h.connection) ?? []) delete h[name];
  for (const name of CONNECTION_HEADERS) delete h[name];
  h.connection = 'close';
  res.statusMessage = STATUS_CODES[res.statusCode ?? 0] ?? 'Unknown';
}

/** The backend's framing and connection headers, none of which hold on the client's connection. */
const CONNECTION_HEADERS = [
  'transfer-encoding',
  'connection',
  'keep-alive',
  'proxy-connection',
  'trailer',
];

/**
 * A WebSocket opening handshake (RFC 6455 §4.1: a GET whose Upgrade names
 * `websocket`). http-proxy proxies only an Upgrade of exactly `websocket`, so
 * a list naming it (`websocket, foo`) becomes that.
 */
function isWebSocketUpgrade(req: IncomingMessage): boolean {
  if (req.method !== 'GET') return false;
  const upgrade = req.headers.upgrade;
  if (upgrade === undefined) return false;
  if (upgrade.toLowerCase() === 'websocket') return true;
  if (!upgrade.split(',').some((t) => t.trim().toLowerCase() === 'websocket')) return false;
  req.headers.upgrade = 'websocket';
  return true;
}

/** A coded answer on the raw socket of an upgrade, which then closes. */
/**
 * refuse() on the upgrade's client socket while it can still be written, else its end;
 * nothing for a response (an upgrade served as a plain request answers on its own path).
 */
function refuseIfSocket(
  res: ServerResponse | Socket,
  status: Parameters<typeof refuse>[1],
  code: GatewayErrorCode,
): void {
  if ('setHeader' in res) return;
  if (res.writable) refuse(res, status, code);
  else res.destroy();
}

function refuse(
  socket: Socket,
  status: 400 | 405 | 429 | 502 | 503 | 504 | 508,
  code: GatewayErrorCode,
): void {
  const retry = status === 503 || status === 429 ? 'Retry-After: 1\r\n' : '';
  socket.end(
    `HTTP/1.1 ${status} ${STATUS_CODES[status]}\r\n${ERROR_CODE_HEADER}: ${code}\r\n${retry}` +
      'Connection: close\r\nContent-Length: 0\r\n\r\n',
  );
  // Closed once written, as Node's server closes after a `Connection: close` answer:
  // ended only, the socket stayed half-open for as long as the client kept its side.
  socket.destroySoon();
}
