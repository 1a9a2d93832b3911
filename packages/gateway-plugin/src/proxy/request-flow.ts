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
 * retry budget): only idempotent methods, only requests without a body (a
 * body already streamed to the failed backend cannot be replayed), only
 * failures before a response started, and always to a backend not tried yet.
 */
import type { ClientRequest, IncomingMessage, ServerResponse } from 'node:http';
import type { Socket } from 'node:net';
import type { GatewayErrorCode } from '../errors';
import { sendError } from '../error-response';
import type { ShedReason } from '../observability';
import { formatDecisionHeader } from '../observability';
import type { Endpoint } from '../strategies/types';
import type { Backend } from '../registry/backend';
import type { Balancer as BalancerCore } from '../balancer';
import { affinityCookie, hashKeyOf } from './affinity';
import { setForwardedHeaders, stripHopByHop } from './forwarded';
import { UpgradeFlow } from './upgrade-flow';
import { CONNECT_TIMEOUT_CODE, TIMEOUT_CODE, classify, codedError } from './upstream-errors';

interface Flow {
  req: IncomingMessage;
  res: ServerResponse;
  backend: Backend | undefined;
  /** http-proxy's parsed target of the current attempt: identifies its events. */
  target: unknown;
  proxyReq: ClientRequest | undefined;
  attemptOpen: boolean;
  attemptStartMs: number;
  firstByteTimer: NodeJS.Timeout | undefined;
  connectTimer: NodeJS.Timeout | undefined;
  tried: Set<Endpoint> | undefined;
  retries: number;
  hashKey: string | undefined;
  newCookie: string | undefined;
  reason: string | undefined;
  responseOk: boolean;
  /** The backend answered "overloaded": neither success nor failure (see onProxyRes). */
  overloaded: boolean;
  queued: boolean;
  done: boolean;
}

function hasBody(req: IncomingMessage): boolean {
  const len = req.headers['content-length'];
  return req.headers['transfer-encoding'] !== undefined || (len !== undefined && len !== '0');
}

export class RequestFlow {
  private readonly flows = new WeakMap<IncomingMessage, Flow>();
  readonly upgrades: UpgradeFlow;

  constructor(private readonly core: BalancerCore) {
    this.upgrades = new UpgradeFlow(core);
  }

  /** The middleware body. Never throws. */
  handle(req: IncomingMessage, res: ServerResponse): void {
    const c = this.core;
    if (c.closed) return this.shed(res, 'LW_GW_CLOSED', 'no-backend', 1);
    if (c.overload?.overloaded) {
      return this.shed(res, 'LW_GW_OVERLOADED', 'overloaded', c.overload.retryAfterSec());
    }
    const o = c.options;
    const flow: Flow = {
      req,
      res,
      backend: undefined,
      target: undefined,
      proxyReq: undefined,
      attemptOpen: false,
      attemptStartMs: 0,
      firstByteTimer: undefined,
      connectTimer: undefined,
      tried: undefined,
      retries: 0,
      hashKey: undefined,
      newCookie: undefined,
      reason: undefined,
      responseOk: true,
      overloaded: false,
      queued: false,
      done: false,
    };
    this.flows.set(req, flow);
    c.budget?.onRequest();
    stripHopByHop(req);
    setForwardedHeaders(req, o.trustForwarded);
    if (o.forwardMountPath) {
      const original = (req as { originalUrl?: string }).originalUrl;
      if (original) req.url = original;
    }
    if (o.affinity) {
      const k = hashKeyOf(req, o.affinity, o.trustForwarded);
      flow.hashKey = k.key;
      flow.newCookie = k.newCookie;
    }
    res.once('close', () => this.finish(flow));
    if (this.dispatch(flow) === 'saturated') this.enqueue(flow);
  }

  /** Picks a backend and starts an attempt. */
  private dispatch(flow: Flow): 'started' | 'saturated' | 'failed' {
    const c = this.core;
    if (c.closed) {
      this.shed(flow.res, 'LW_GW_CLOSED', 'no-backend', 1);
      return 'failed';
    }
    const nowMs = c.now();
    const eligible = c.registry.eligible;
    if (eligible.length === 0) {
      this.shed(flow.res, 'LW_GW_NO_BACKEND', 'no-backend', c.noBackendRetryAfterSec(nowMs));
      return 'failed';
    }
    // "Saturated" (see docs/gateway.md): this gateway already has
    // maxInFlightPerBackend requests outstanding on the backend, or the load
    // estimate's expected wait is above maxExpectedWaitMs. Saturated backends
    // are excluded from this pick; when all are, the request waits.
    let exclude = flow.tried;
    let untried = 0;
    for (const b of eligible) {
      if (flow.tried?.has(b.endpoint)) continue;
      untried++;
      if (c.isSaturated(b, nowMs)) {
        exclude ??= new Set();
        if (exclude === flow.tried) exclude = new Set(flow.tried);
        exclude.add(b.endpoint);
      }
    }
    if (untried === 0) {
      // Only a retry gets here: every backend refused or reset this request (panic mode with
      // every backend dead, say). That is "unavailable, come back later", not a bad answer.
      this.shed(flow.res, 'LW_GW_NO_BACKEND', 'no-backend', c.noBackendRetryAfterSec(nowMs));
      return 'failed';
    }
    const pick = c.strategy.pick({
      nowMs,
      hashKey: flow.hashKey,
      exclude,
      explain: c.options.decisionHeader !== undefined,
    });
    const backend = pick && c.registry.get(pick.endpoint.id);
    if (!pick || !backend) return 'saturated';
    this.startAttempt(flow, backend, pick.reason, nowMs);
    return 'started';
  }

  private enqueue(flow: Flow): void {
    const c = this.core;
    if (flow.retries > 0) return this.shedSaturated(flow);
    const waiter = c.queue.enqueue(
      () => {
        if (flow.done) return true;
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
    flow.res.once('close', () => c.queue.cancel(waiter));
    c.queueChanged();
  }

  private shedSaturated(flow: Flow): void {
    const c = this.core;
    if (c.closed) return this.shed(flow.res, 'LW_GW_CLOSED', 'no-backend', 1);
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
    flow.overloaded = false;
    flow.attemptStartMs = nowMs;
    flow.reason = reason;
    backend.requests++;
    backend.load.onRequestStart(nowMs);
    c.metrics.onPick(backend.id, c.strategy.name);
    c.traffic.record(backend.id, nowMs);
    // Time to the response headers, whatever the stage (waiting for a pooled
    // socket, connecting, or the backend thinking): the "backend stops
    // answering" case of the failure table.
    flow.firstByteTimer = setTimeout(
      () => this.timeout(flow, TIMEOUT_CODE),
      c.options.requestTimeoutMs,
    );
    c.engine.web(backend, flow.req, flow.res);
  }

  private timeout(flow: Flow, code: string): void {
    const err = codedError(
      code === TIMEOUT_CODE ? 'backend did not answer in time' : 'connect timeout',
      code,
    );
    // With a request on the wire, destroying it makes http-proxy report the
    // error (and stops the upload); without one (still waiting for a socket
    // from the pool), the attempt fails right here.
    if (flow.proxyReq && !flow.proxyReq.destroyed) flow.proxyReq.destroy(err);
    else this.onError(err, flow.req, flow.res, flow.target);
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
    if (!flow) return; // a WebSocket upgrade: no attempt bookkeeping
    if (!flow.attemptOpen || flow.target !== target) {
      proxyReq.destroy(); // an abandoned attempt got its socket late
      return;
    }
    flow.proxyReq = proxyReq;
    const socket = proxyReq.socket;
    if (socket?.connecting) {
      // Connect timeout, separate from the request timeout: a dead host (SYN
      // unanswered) is a connection failure, retryable on another backend.
      const timer = setTimeout(
        () => this.timeout(flow, CONNECT_TIMEOUT_CODE),
        this.core.options.connectTimeoutMs,
      );
      flow.connectTimer = timer;
      socket.once('connect', () => clearTimeout(timer));
    }
  }

  onProxyRes(proxyRes: IncomingMessage, req: IncomingMessage, res: ServerResponse): void {
    const flow = this.flows.get(req);
    if (!flow?.attemptOpen || !flow.backend) return;
    const c = this.core;
    const backend = flow.backend;
    this.clearTimers(flow);
    const status = proxyRes.statusCode ?? 502;
    const nowMs = c.now();
    // Overload is not failure: a 503 with Retry-After (RFC 9110 §15.6.4: "temporary
    // overload"; trackRequests() answers so when its queue is full), or a 503/429 while the
    // backend's fresh report says it is saturated, lowers its share through the load
    // estimate and never counts toward ejection. Ejecting it would move its load onto the
    // others, who are as full: measured, 2× overload ejected a backend within 2 s.
    flow.overloaded =
      (status === 503 && proxyRes.headers['retry-after'] !== undefined) ||
      ((status === 503 || status === 429) && backend.load.reportSaturated(nowMs));
    const failed = !flow.overloaded && status >= 500 && c.options.outlier.failOn5xx;
    flow.responseOk = !failed;
    c.metrics.onResponse(backend.id, status, nowMs - flow.attemptStartMs);
    if (failed) {
      c.metrics.onError(backend.id, '5xx');
      c.outlier.onFailure(backend);
    } else if (!flow.overloaded) c.outlier.onSuccess(backend);
    if (c.options.decisionHeader) {
      res.setHeader(c.options.decisionHeader, formatDecisionHeader(backend.id, flow.reason));
    }
    const aff = c.options.affinity;
    if (flow.newCookie && aff?.cookie) {
      const cookie = affinityCookie(aff.cookie, flow.newCookie, aff.cookieMaxAgeSec ?? 0, false);
      const existing = proxyRes.headers['set-cookie'];
      proxyRes.headers['set-cookie'] = existing ? [...existing, cookie] : [cookie];
    }
    // An idle backend mid-response is cut after requestTimeoutMs of silence.
    flow.proxyReq?.setTimeout(c.options.requestTimeoutMs, () =>
      flow.proxyReq?.destroy(codedError('backend stalled mid-response', TIMEOUT_CODE)),
    );
    proxyRes.once('close', () => {
      // The backend cut the body short: the client must see a cut too, not a
      // response that never ends (http-proxy leaves `res` open in that case).
      if (!proxyRes.complete && !res.writableEnded) {
        if (flow.attemptOpen) {
          c.metrics.onError(backend.id, 'reset');
          c.outlier.onFailure(backend);
          flow.responseOk = false;
          flow.overloaded = false;
        }
        res.destroy();
      }
    });
  }

  onError(err: Error, req: IncomingMessage, res: ServerResponse | Socket, target: unknown): void {
    const flow = this.flows.get(req);
    if (!flow) return this.upgrades.onError(err, req, res);
    if (flow.done || !flow.attemptOpen || !flow.backend) return;
    if (target !== undefined && target !== flow.target) return; // a previous attempt's late error
    const c = this.core;
    const backend = flow.backend;
    const kind = classify(err as Error & { code?: string });
    flow.responseOk = false;
    this.endAttempt(flow);
    c.metrics.onError(backend.id, kind);
    c.outlier.onFailure(backend);
    const res2 = flow.res;
    if (res2.headersSent) return void res2.destroy();
    if (kind !== 'timeout' || (err as { code?: string }).code === CONNECT_TIMEOUT_CODE) {
      flow.tried ??= new Set();
      flow.tried.add(backend.endpoint);
      if (this.mayRetry(flow)) {
        c.metrics.onRetry(backend.id);
        flow.retries++;
        if (this.dispatch(flow) === 'saturated') this.shedSaturated(flow);
        return;
      }
      // A retryable request that could not reach a backend, when none is left to try or too
      // few are healthy (panic: the retry budget runs out when every attempt fails): 503 +
      // Retry-After as above, so clients back off instead of reading a gateway fault.
      if (this.retryable(flow.req) && (c.registry.panic || this.noneUntried(flow))) {
        const retryAfterSec = c.noBackendRetryAfterSec(c.now());
        return this.shed(flow.res, 'LW_GW_NO_BACKEND', 'no-backend', retryAfterSec);
      }
    }
    this.fail(flow, kind === 'timeout' ? 'LW_GW_UPSTREAM_TIMEOUT' : 'LW_GW_UPSTREAM_FAILED');
  }

  private retryable(req: IncomingMessage): boolean {
    const r = this.core.options.retry;
    return r !== undefined && r.methods.includes(req.method ?? 'GET') && !hasBody(req);
  }

  private noneUntried(flow: Flow): boolean {
    for (const b of this.core.registry.eligible) if (!flow.tried?.has(b.endpoint)) return false;
    return true;
  }

  private mayRetry(flow: Flow): boolean {
    const r = this.core.options.retry;
    if (!r || flow.retries >= r.maxRetries) return false;
    if (!this.retryable(flow.req)) return false;
    // Not req.destroyed: a fully read IncomingMessage is auto-destroyed; the client is gone when its socket is.
    if (flow.res.destroyed || flow.req.socket.destroyed) return false;
    return this.core.budget?.tryRetry() ?? false;
  }

  private fail(flow: Flow, code: GatewayErrorCode): void {
    sendError(flow.res, code);
  }

  private shed(
    res: ServerResponse,
    code: GatewayErrorCode,
    reason: ShedReason,
    retryAfterSec: number,
  ): void {
    this.core.metrics.onShed(reason);
    sendError(res, code, retryAfterSec);
  }

  private clearTimers(flow: Flow): void {
    if (flow.firstByteTimer) clearTimeout(flow.firstByteTimer);
    if (flow.connectTimer) clearTimeout(flow.connectTimer);
    flow.firstByteTimer = undefined;
    flow.connectTimer = undefined;
  }

  /** Ends the current attempt exactly once. */
  private endAttempt(flow: Flow): void {
    if (!flow.attemptOpen || !flow.backend) return;
    flow.attemptOpen = false;
    this.clearTimers(flow);
    const c = this.core;
    const nowMs = c.now();
    const latencyMs = nowMs - flow.attemptStartMs;
    flow.backend.load.onRequestEnd(nowMs, latencyMs, flow.responseOk, flow.overloaded);
    c.drainRate.onCompletion();
    // A slot freed: let the oldest waiter go.
    if (c.queue.length > 0) c.drainQueue();
  }

  /** The client response closed (finished or aborted): the request is over. */
  private finish(flow: Flow): void {
    if (flow.done) return;
    // The client left before the response ended: stop the backend's work too
    // (http-proxy only aborts on the request's 'aborted', not on a closed response).
    if (!flow.res.writableFinished && flow.proxyReq && !flow.proxyReq.destroyed)
      flow.proxyReq.destroy();
    this.endAttempt(flow);
    flow.done = true;
    if (flow.queued) {
      flow.queued = false;
      this.core.queueChanged();
    }
    flow.proxyReq = undefined;
  }
}
