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
import { renderMetrics } from './exposition';
import type { BalancerSnapshot } from './snapshot';

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

/** Serves `getSnapshot()` (or every balancer's snapshot) as JSON. */
export function statusHandler(opts: StatusHandlerOptions): HttpHandler {
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
  return (req, res, next) => {
    if (refuse(req, res, authorized)) return;
    let body: string;
    try {
      body = JSON.stringify(take(), null, 2);
    } catch (err) {
      if (next) return next(err);
      send(res, req, 500, 'application/json; charset=utf-8', '{"error":"snapshot failed"}');
      return;
    }
    send(res, req, 200, 'application/json; charset=utf-8', body);
  };
}

/**
 * Serves the registry in the Prometheus text format: the text of
 * `registry.metrics()`, rendered in chunks that let the event loop run
 * between them (exposition.ts); scrapes that arrive together share one render.
 */
export function metricsHandler(
  registry: Registry,
  opts: ProtectedHandlerOptions = {},
): HttpHandler {
  const authorized = makeAuthorizer(opts.token);
  return (req, res, next) => {
    if (refuse(req, res, authorized)) return;
    renderMetrics(registry)
      .then(
        (text) => send(res, req, 200, registry.contentType, text),
        (err: unknown) => {
          if (next) return next(err);
          send(res, req, 500, 'text/plain; charset=utf-8', 'metrics collection failed\n');
        },
      )
      // A scrape stays open over several turns of the loop now: whatever answered the
      // request meanwhile (headers sent), the throw of send() must not be an unhandled
      // rejection, which ends a Node 20 process.
      .catch(() => {
        if (!res.headersSent) res.statusCode = 500;
        if (!res.writableEnded) res.end();
      });
  };
}
