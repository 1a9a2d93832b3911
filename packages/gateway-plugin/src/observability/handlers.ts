/**
 * HTTP handlers for the status JSON and the Prometheus text. They take plain
 * node:http request/response objects, so they mount in Express
 * (`app.get('/lb/status', statusHandler(...))`), in connect or on a bare
 * http.Server alike. The status can reveal backend addresses and load, so it
 * can require a token: in its own header, `X-Loadwise-Token`, so it never
 * collides with the app's own `Authorization` scheme; `Authorization: Bearer`
 * is read only when that header is absent.
 */
import { createHash, timingSafeEqual } from 'node:crypto';
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Registry } from 'prom-client';
import { MetricsRenders, type RenderRead } from './exposition';
import type { BalancerSnapshot } from './snapshot';
import { StatusBodies, writeStatus } from './status-body';
import {
  AnswerWaiter,
  awaitsAnswer,
  drainedOrCut,
  stallOf,
  type Stall,
  type StallOptions,
} from './backpressure';

export type HttpHandler = (
  req: IncomingMessage,
  res: ServerResponse,
  next?: (err?: unknown) => void,
) => void;

/** The header the status and metrics token travels in. */
export const TOKEN_HEADER = 'x-loadwise-token';

export interface ProtectedHandlerOptions {
  /**
   * When set, requests must carry `X-Loadwise-Token: <token>` (or, without
   * that header, `Authorization: Bearer <token>`); others get 401.
   */
  token?: string;
}

/** A balancer, or the `loadBalance()` middleware that holds one. */
export type SnapshotSource =
  { snapshot(): BalancerSnapshot } | { readonly balancer: { snapshot(): BalancerSnapshot } };

export interface StatusHandlerOptions extends ProtectedHandlerOptions {
  /** One balancer's state (the body is that snapshot). */
  getSnapshot?: () => BalancerSnapshot;
  /**
   * Several balancers on one page (one gateway, several services): the body is
   * `{ takenAt, services: [snapshot, ...] }`, each snapshot naming its `service`.
   */
  balancers?: SnapshotSource[];
}

/**
 * Compares digests, not the strings: timingSafeEqual needs equal lengths, and
 * hashing first keeps the token's length from leaking through an early return.
 */
function digest(text: string): Buffer {
  return createHash('sha256').update(text).digest();
}

/** A constant-time check of a presented token against `token` (the dashboard uses it too). */
export function tokenMatcher(token: string): (given: string | undefined) => boolean {
  if (token === '') throw new TypeError('token must not be empty (omit it to serve without one)');
  const expected = digest(token);
  return (given) => given !== undefined && timingSafeEqual(digest(given.trim()), expected);
}

/** The token of an `Authorization: Bearer <token>` header, if the request has one. */
export function bearerToken(req: IncomingMessage): string | undefined {
  const header = req.headers.authorization;
  if (typeof header !== 'string') return undefined;
  // RFC 6750 §2.1: "Bearer" then one space; the scheme is case-insensitive (RFC 9110 §11.1).
  const match = /^bearer +(\S+) *$/i.exec(header);
  return match === null ? undefined : match[1];
}

function makeAuthorizer(token: string | undefined): (req: IncomingMessage) => boolean {
  if (token === undefined) return () => true;
  const matches = tokenMatcher(token);
  // Its own header first (X-Loadwise-Token): the app's auth may own Authorization.
  return (req) => {
    const own = req.headers[TOKEN_HEADER];
    return matches(typeof own === 'string' ? own : bearerToken(req));
  };
}

export function send(
  res: ServerResponse,
  req: IncomingMessage,
  status: number,
  type: string,
  body: string,
): void {
  res.statusCode = status;
  res.setHeader('Content-Type', type);
  res.setHeader('Cache-Control', 'no-store');
  res.setHeader('Content-Length', Buffer.byteLength(body));
  res.end(req.method === 'HEAD' ? undefined : body);
}

/** Answers what is not an authorized GET/HEAD; returns true when it did. */
export function refuse(
  req: IncomingMessage,
  res: ServerResponse,
  authorized: (req: IncomingMessage) => boolean,
): boolean {
  if (req.method !== 'GET' && req.method !== 'HEAD') {
    res.setHeader('Allow', 'GET, HEAD');
    send(res, req, 405, 'application/json; charset=utf-8', '{"error":"method not allowed"}');
    return true;
  }
  if (!authorized(req)) {
    res.setHeader('WWW-Authenticate', 'Bearer realm="loadwise"');
    send(res, req, 401, 'application/json; charset=utf-8', '{"error":"unauthorized"}');
    return true;
  }
  return false;
}

function snapshotOf(source: SnapshotSource): BalancerSnapshot {
  return 'balancer' in source ? source.balancer.snapshot() : source.snapshot();
}

/**
 * Serves `getSnapshot()` (or every balancer's snapshot) as compact JSON. The
 * requests that arrive together read one body, made in steps and written in
 * slices as the socket takes them (status-body.ts); a request that would
 * need a new body while answers in progress hold MAX_HELD_STATUS_BYTES of
 * them gets 503 with Retry-After; one whose client takes no byte for 30 s is cut.
 */
export function statusHandler(opts: StatusHandlerOptions): HttpHandler {
  return serveStatus(opts);
}

/** How statusHandler is built; `loadBalance()` sets the stall handling from its options. */
export interface StatusServeOptions extends StatusHandlerOptions, StallOptions {}

/** statusHandler, with the stall handling set (`loadBalance()`). */
export function serveStatus(opts: StatusServeOptions): HttpHandler {
  const stall = stallOf(opts);
  const authorized = makeAuthorizer(opts.token);
  const { getSnapshot, balancers } = opts;
  if ((getSnapshot === undefined) === (balancers === undefined))
    throw new TypeError('statusHandler: give either getSnapshot or balancers');
  if (balancers !== undefined && (!Array.isArray(balancers) || balancers.length === 0))
    throw new TypeError('statusHandler: balancers must be a non-empty array');
  const take = (): unknown =>
    getSnapshot !== undefined
      ? getSnapshot()
      : { takenAt: new Date().toISOString(), services: balancers!.map(snapshotOf) };
  const bodies = new StatusBodies(take);
  return (req, res, next) => {
    if (refuse(req, res, authorized)) return;
    // Gone already, or queued on a connection that may go: see awaitsAnswer.
    if (!awaitsAnswer(req, res)) return;
    // An answer holds its body until its client has taken it: clients that never read,
    // each arriving after the last body was made, must not pin one each, for good.
    const body = bodies.acquire();
    if (body === undefined) return tooMany(req, res, 'status requests');
    let held = true;
    res.once('close', () => {
      if (held) bodies.release(body);
      held = false;
    });
    const failed = (err: unknown): void => {
      if (next) return next(err);
      send(res, req, 500, 'application/json; charset=utf-8', '{"error":"snapshot failed"}');
    };
    // An answer may wait for its body and for 'drain' over many turns: a write that throws
    // must not be an unhandled rejection, which ends a Node 20 process.
    writeStatus(body, req, res, failed, stall).catch(() => {
      if (res.headersSent) res.destroy();
      else if (!res.writableEnded) {
        res.statusCode = 500;
        res.end();
      }
    });
  };
}

/** 503 + Retry-After: the answers in progress hold their bound of bodies (`what`: of which). */
function tooMany(req: IncomingMessage, res: ServerResponse, what: string): void {
  res.setHeader('Retry-After', '1');
  send(res, req, 503, 'application/json; charset=utf-8', `{"error":"too many ${what}"}`);
}

/** Most characters of a part handed to the socket in one write (status-body.ts writes as much). */
const WRITE_SLICE_CHARS = 64 * 1024;

/**
 * `part` in slices of WRITE_SLICE_CHARS, never between the two halves of a
 * surrogate pair (each half alone would be written as U+FFFD). Substrings of
 * a flat string are views of it, not copies.
 */
function* slicesOf(part: string): Generator<string> {
  if (part.length <= WRITE_SLICE_CHARS) {
    yield part;
    return;
  }
  for (let from = 0; from < part.length;) {
    let to = Math.min(from + WRITE_SLICE_CHARS, part.length);
    const last = part.charCodeAt(to - 1);
    if (to < part.length && last >= 0xd800 && last <= 0xdbff) to--;
    yield part.slice(from, to);
    from = to;
  }
}

/**
 * Writes the read render's text part by part as it is rendered, each part in
 * slices, waiting for 'drain' whenever the socket has enough buffered. The
 * status line and headers go with the first part, so a render that fails
 * before it is still a 500 (or the app's error handler); one that fails
 * after it destroys the response, so the client sees a cut chunked body,
 * never a complete one (the error still goes to `next`, for the app's log).
 * A client that takes no byte for `stallTimeoutMs` while the scrape waits
 * for 'drain' is cut the same way (`onStalled` is told), and its render
 * released: before, one that never read held its render for as long as its
 * connection stayed open.
 */
async function writeMetrics(
  registry: Registry,
  parts: RenderRead,
  req: IncomingMessage,
  res: ServerResponse,
  next: ((err?: unknown) => void) | undefined,
  stall: Stall,
): Promise<void> {
  const waiter = new AnswerWaiter(res);
  let started = false;
  try {
    for (;;) {
      let part: IteratorResult<string>;
      try {
        part = await parts.next();
      } catch (err) {
        if (started) res.destroy();
        if (next) return next(err);
        if (!started && !waiter.closed && !res.headersSent)
          send(res, req, 500, 'text/plain; charset=utf-8', 'metrics collection failed\n');
        return;
      }
      if (part.done) break;
      // The client went, or something else answered meanwhile: stop reading the render.
      if (waiter.closed || res.writableEnded || (!started && res.headersSent)) {
        if (!waiter.closed && !res.writableEnded) res.end();
        return;
      }
      if (!started) {
        started = true;
        res.statusCode = 200;
        res.setHeader('Content-Type', registry.contentType);
        res.setHeader('Cache-Control', 'no-store');
      }
      for (const slice of slicesOf(part.value)) {
        if (res.write(slice)) continue;
        if (!(await drainedOrCut(waiter, req, res, stall, 'metrics scrape', 'its render'))) return;
      }
    }
    if (!waiter.closed && !res.writableEnded) res.end();
  } finally {
    waiter.dispose();
    // Leaves the render (a no-op when it was read to its end): it stops when no scrape is left.
    parts.release();
  }
}

/** How metricsHandler is built; `loadBalance()` sets the stall handling from its options. */
export interface MetricsServeOptions extends ProtectedHandlerOptions, StallOptions {
  /** Bound of the renders held by scrapes in progress (MAX_HELD_METRICS_BYTES). */
  maxHeldBytes?: number;
}

/**
 * Serves the registry in the Prometheus text format: the text of
 * `registry.metrics()`, rendered in chunks that let the event loop run
 * between them and written to the socket as they are rendered, without a
 * Content-Length (exposition.ts); scrapes that arrive together read one
 * render. A scrape that would need a new render while scrapes in progress
 * hold MAX_HELD_METRICS_BYTES of renders gets 503 with Retry-After, as the
 * status does; one whose client takes no byte for 30 s is cut. HEAD answers
 * with the headers only, without rendering.
 */
export function metricsHandler(
  registry: Registry,
  opts: ProtectedHandlerOptions = {},
): HttpHandler {
  return serveMetrics(registry, opts);
}

/** metricsHandler, with the stall handling and the bound set (`loadBalance()`, tests). */
export function serveMetrics(registry: Registry, opts: MetricsServeOptions = {}): HttpHandler {
  const authorized = makeAuthorizer(opts.token);
  const renders = new MetricsRenders(registry, opts.maxHeldBytes);
  const stall = stallOf(opts);
  return (req, res, next) => {
    if (refuse(req, res, authorized)) return;
    if (req.method === 'HEAD') {
      res.statusCode = 200;
      res.setHeader('Content-Type', registry.contentType);
      res.setHeader('Cache-Control', 'no-store');
      res.end();
      return;
    }
    // Gone already (a write would wait for a 'drain' that never comes, the scrape's render
    // pinned), or queued on a connection that may go: see awaitsAnswer.
    if (!awaitsAnswer(req, res)) return;
    // A scrape holds its render until its client has taken the text: clients that never
    // read, each arriving after the last render ended, must not pin one each.
    const parts = renders.acquire();
    if (parts === undefined) return tooMany(req, res, 'metrics scrapes');
    // A scrape stays open over many turns of the loop: whatever answered the request
    // meanwhile, or a write that throws, must not be an unhandled rejection, which ends
    // a Node 20 process.
    writeMetrics(registry, parts, req, res, next, stall).catch(() => {
      parts.release();
      if (res.headersSent) res.destroy();
      else if (!res.writableEnded) {
        res.statusCode = 500;
        res.end();
      }
    });
  };
}
