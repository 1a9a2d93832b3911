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
import {
  declaredLength,
  hasBody,
  planBody,
  readBody,
  writeBody,
  type BodyPlan,
} from './request-body';
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
  queued: boolean;
  done: boolean;
  /** How the body reaches the backend (request-body.ts). */
  body: BodyPlan;
}

export class RequestFlow {
  private readonly flows = new WeakMap<IncomingMessage, Flow>();
  readonly upgrades: UpgradeFlow;
  /** Requests admitted and not finished yet (graceful close waits for them). */
  active = 0;
  private idleWaiters: (() => void)[] = [];

  constructor(private readonly core: BalancerCore) {
    this.upgrades = new UpgradeFlow(core);
  }

  /** The middleware body. Never throws. */
  handle(req: IncomingMessage, res: ServerResponse): void {
    const c = this.core;
    if (c.closed) return this.shed(res, 'LW_GW_CLOSED', 'no-backend', 1);
    if (c.draining) {
      // Shutting down: this connection should go to another instance.
      res.shouldKeepAlive = false;
      return this.shed(res, 'LW_GW_DRAINING', 'no-backend', 1);
    }
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
      queued: false,
      done: false,
      body: planBody(req),
    };
    if (flow.body.kind === 'lost') {
      // Fails before any backend is picked: a gateway mistake, not a backend's.
      c.logLine('body-consumed', `${req.method} ${req.url}: ${flow.body.detail}`);
      return sendError(res, 'LW_GW_BODY_CONSUMED', undefined, flow.body.detail);
    }
    this.flows.set(req, flow);
    this.active++;
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
    const toBuffer = this.bufferForRetry(flow);
    if (toBuffer === undefined) return this.start(flow);
    void readBody(req, toBuffer).then((body) => {
      if (flow.done || body === undefined) return; // the client left; finish() cleans up
      flow.body = { kind: 'buffered', body };
      this.start(flow);
    });
  }

  private start(flow: Flow): void {
    if (this.dispatch(flow) === 'saturated') this.enqueue(flow);
  }

  /**
   * The Content-Length of a body worth reading into memory first, so that a
   * retry can send it again (retry.maxBodyBytes); undefined to stream it.
   */
  private bufferForRetry(flow: Flow): number | undefined {
    const r = this.core.options.retry;
    if (!r || r.maxRetries === 0 || flow.body.kind !== 'stream' || !hasBody(flow.req))
      return undefined;
    if (!r.methods.includes(flow.req.method ?? 'GET')) return undefined;
    const length = declaredLength(flow.req);
    return length !== undefined && length <= r.maxBodyBytes ? length : undefined;
  }

  /** Resolves once no admitted request is in flight or waiting, or after `graceMs`. */
  idle(graceMs: number): Promise<void> {
    if (this.active === 0) return Promise.resolve();
    return new Promise((resolve) => {
      const timer = setTimeout(done, graceMs);
      function done(): void {
        clearTimeout(timer);
        resolve();
      }
      this.idleWaiters.push(done);
    });
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
      if (flow.retries > 0) this.fail(flow, 'LW_GW_UPSTREAM_FAILED');
      else this.shed(flow.res, 'LW_GW_NO_BACKEND', 'no-backend', c.noBackendRetryAfterSec(nowMs));
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
      this.fail(flow, 'LW_GW_UPSTREAM_FAILED');
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
    const hook = this.core.options.on.proxyReq;
    if (hook && !this.runHook(flow, () => hook(proxyReq, req, flow.res))) return;
    writeBody(proxyReq, flow.body);
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
    const hook = c.options.on.proxyRes;
    if (hook && !this.runHook(flow, () => hook(proxyRes, req, res), proxyRes)) return;
    // Shutting down: the client's next request should open a connection elsewhere.
    if (c.draining) proxyRes.headers.connection = 'close';
    const status = proxyRes.statusCode ?? 502;
    const failed = status >= 500 && c.options.outlier.failOn5xx;
    flow.responseOk = !failed;
    c.metrics.onResponse(backend.id, status, c.now() - flow.attemptStartMs);
    if (failed) {
      c.metrics.onError(backend.id, '5xx');
      c.outlier.onFailure(backend);
    } else c.outlier.onSuccess(backend);
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
    if (c.closed) {
      // Cut by close() after its grace: not the backend's failure.
      this.endAttempt(flow);
      return this.shed(flow.res, 'LW_GW_CLOSED', 'no-backend', 1);
    }
    flow.responseOk = false;
    this.endAttempt(flow);
    c.metrics.onError(backend.id, kind);
    c.outlier.onFailure(backend);
    const res2 = flow.res;
    const errno = (err as { code?: string }).code ?? err.message;
    const attempt = `attempt ${flow.retries + 1} of ${flow.req.method} ${flow.req.url} to ${backend.id} (${backend.target.href}) failed: ${errno}`;
    if (res2.headersSent) {
      c.logLine(`upstream:${backend.id}:${errno}`, `${attempt} mid-response; connection cut`);
      return void res2.destroy();
    }
    if (kind !== 'timeout' || (err as { code?: string }).code === CONNECT_TIMEOUT_CODE) {
      if (this.mayRetry(flow)) {
        c.logLine(`upstream:${backend.id}:${errno}`, `${attempt}; retrying`);
        c.metrics.onRetry(backend.id);
        flow.tried ??= new Set();
        flow.tried.add(backend.endpoint);
        flow.retries++;
        if (this.dispatch(flow) === 'saturated') this.shedSaturated(flow);
        return;
      }
    }
    const code = kind === 'timeout' ? 'LW_GW_UPSTREAM_TIMEOUT' : 'LW_GW_UPSTREAM_FAILED';
    c.logLine(`upstream:${backend.id}:${errno}`, `${attempt}; answering ${code}`);
    this.fail(flow, code);
  }

  private mayRetry(flow: Flow): boolean {
    const r = this.core.options.retry;
    if (!r || flow.retries >= r.maxRetries) return false;
    if (!r.methods.includes(flow.req.method ?? 'GET')) return false;
    if (hasBody(flow.req) && flow.body.kind !== 'buffered') return false;
    // Not req.destroyed: a fully read IncomingMessage is auto-destroyed; the client is gone when its socket is.
    if (flow.res.destroyed || flow.req.socket.destroyed) return false;
    return this.core.budget?.tryRetry() ?? false;
  }

  private fail(flow: Flow, code: GatewayErrorCode): void {
    sendError(flow.res, code);
  }

  /**
   * Runs a user hook; one that throws ends the attempt without counting it
   * against the backend (the request never fairly reached it) and answers
   * 500 LW_GW_HOOK_FAILED. Returns false then.
   */
  private runHook(flow: Flow, hook: () => void, proxyRes?: IncomingMessage): boolean {
    try {
      hook();
      return true;
    } catch (err) {
      this.core.logLine('hook', `an on.proxyReq/on.proxyRes hook threw: ${String(err)}`);
      this.endAttempt(flow);
      // Nothing of this attempt may reach the client after the error answer.
      proxyRes?.destroy();
      flow.proxyReq?.destroy();
      sendError(flow.res, 'LW_GW_HOOK_FAILED');
      return false;
    }
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
    flow.backend.load.onRequestEnd(nowMs, nowMs - flow.attemptStartMs, flow.responseOk);
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
    this.active--;
    if (this.active === 0 && this.idleWaiters.length > 0) {
      const waiters = this.idleWaiters;
      this.idleWaiters = [];
      for (const w of waiters) w();
    }
    if (flow.queued) {
      flow.queued = false;
      this.core.queueChanged();
    }
    flow.proxyReq = undefined;
  }
}
