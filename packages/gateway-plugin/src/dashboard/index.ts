/**
 * The dashboard: `loadBalance({ dashboard: { token } })` serves a live page
 * at `<path>` (default /_lb/dashboard) relative to the mount point.
 *
 *   <path>                 the page (token required)
 *   <path>/events          its server-sent event stream (token required)
 *   <path>/<asset>         the page's script and styles and uPlot (public:
 *                          package files that carry no data)
 *
 * The token is read-only and separate from statusToken: a browser can only
 * send it in the URL (`?token=`; EventSource cannot set headers), where it
 * ends up in history and access logs, so it must unlock nothing but this
 * page. `Authorization: Bearer <token>` works too. Compared in constant time
 * (observability/handlers.ts).
 *
 * The page and its assets are plain files in the package's static/dashboard/
 * folder (no build step); uPlot is served from its npm package, so the page
 * loads nothing from another origin (the Content-Security-Policy says so).
 */
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import type { IncomingMessage, ServerResponse } from 'node:http';
import path from 'node:path';
import type { Balancer } from '../balancer';
import type { Stall } from '../observability/backpressure';
import { bearerToken, refuse, send, tokenMatcher } from '../observability/handlers';
import { EventRing } from './event-ring';
import type { ResolvedDashboardOptions } from './options';
import { DashboardStream } from './stream';

export interface Dashboard {
  /** Serves `req` when `pathname` is the dashboard's; returns false (untouched) otherwise. */
  handle(req: IncomingMessage, res: ServerResponse, pathname: string): boolean;
  readonly stream: DashboardStream;
  readonly events: EventRing;
  /** Ends every stream, stops the timer and unsubscribes from the balancer. */
  close(): void;
}

interface Asset {
  type: string;
  body: Buffer;
  etag: string;
}

/** static/dashboard/ of the package: two levels up from src/dashboard/ and dist/dashboard/ alike. */
const STATIC_DIR = path.join(__dirname, '..', '..', 'static', 'dashboard');

/** No inline script or style, nothing from another origin, never framed. */
const PAGE_CSP = [
  "default-src 'none'",
  "script-src 'self'",
  "style-src 'self'",
  "connect-src 'self'",
  "img-src 'self' data:",
  "frame-ancestors 'none'",
  "base-uri 'none'",
  "form-action 'none'",
].join('; ');

function asset(type: string, file: string): Asset {
  const body = readFileSync(file);
  const etag = `"${createHash('sha256').update(body).digest('base64url').slice(0, 22)}"`;
  return { type, body, etag };
}

function escapeHtml(text: string): string {
  return text.replace(
    /[&<>"']/g,
    (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' })[c]!,
  );
}

function loadAssets(): Map<string, Asset> {
  const js = 'text/javascript; charset=utf-8';
  const css = 'text/css; charset=utf-8';
  // uplot has no "exports" map, so its dist files resolve directly.
  return new Map([
    ['dashboard.js', asset(js, path.join(STATIC_DIR, 'dashboard.js'))],
    ['dashboard.css', asset(css, path.join(STATIC_DIR, 'dashboard.css'))],
    ['uPlot.iife.min.js', asset(js, require.resolve('uplot/dist/uPlot.iife.min.js'))],
    ['uPlot.min.css', asset(css, require.resolve('uplot/dist/uPlot.min.css'))],
  ]);
}

function queryToken(req: IncomingMessage): string | undefined {
  const url = req.url ?? '';
  const q = url.indexOf('?');
  if (q < 0) return undefined;
  return new URLSearchParams(url.slice(q + 1)).get('token') ?? undefined;
}

function serveAsset(req: IncomingMessage, res: ServerResponse, a: Asset): void {
  res.setHeader('X-Content-Type-Options', 'nosniff');
  res.setHeader('Cache-Control', 'no-cache');
  res.setHeader('ETag', a.etag);
  if (req.headers['if-none-match'] === a.etag) {
    res.statusCode = 304;
    res.end();
    return;
  }
  res.statusCode = 200;
  res.setHeader('Content-Type', a.type);
  res.setHeader('Content-Length', a.body.length);
  res.end(req.method === 'HEAD' ? undefined : a.body);
}

/** `stall`: a viewer with bytes unsent whose socket takes none this long is cut, and told of. */
export function createDashboard(
  balancer: Balancer,
  opts: ResolvedDashboardOptions,
  stall: Stall,
): Dashboard {
  const matches = tokenMatcher(opts.token);
  // Either form: an auth proxy in front (oauth2-proxy passing the user's token on) may add
  // an `Authorization: Bearer` of its own to every request, and a browser can send only the
  // query form; the Bearer alone was read, and the page answered 401.
  const authorized = (req: IncomingMessage): boolean =>
    matches(bearerToken(req)) || matches(queryToken(req));
  const anyone = (): boolean => true;
  const assets = loadAssets();
  // The page refers to its assets relative to itself (`<last segment>/x`), so it works mounted anywhere.
  const base = opts.path.slice(opts.path.lastIndexOf('/') + 1);
  const page = readFileSync(path.join(STATIC_DIR, 'index.html'), 'utf8').replaceAll(
    '{{base}}',
    escapeHtml(encodeURIComponent(base)),
  );
  // Shown as times of day: the wall clock, not the monotonic one the gateway times itself on.
  const events = new EventRing(balancer.events, balancer.wallNow);
  const stream = new DashboardStream(balancer, events, opts, stall);
  const prefix = `${opts.path}/`;

  const servePage = (req: IncomingMessage, res: ServerResponse): void => {
    if (refuse(req, res, authorized)) return;
    res.setHeader('Content-Security-Policy', PAGE_CSP);
    res.setHeader('X-Content-Type-Options', 'nosniff');
    res.setHeader('X-Frame-Options', 'DENY');
    // The URL carries the token: never send it on as a Referer.
    res.setHeader('Referrer-Policy', 'no-referrer');
    send(res, req, 200, 'text/html; charset=utf-8', page);
  };

  return {
    stream,
    events,
    handle(req, res, pathname) {
      if (pathname === opts.path) {
        servePage(req, res);
        return true;
      }
      if (!pathname.startsWith(prefix)) return false;
      const rest = pathname.slice(prefix.length);
      if (rest === '') {
        // `<path>/` would resolve the page's relative asset URLs one level too deep.
        const url = req.url ?? '';
        const q = url.indexOf('?');
        res.statusCode = 308;
        // Its Location carries the token: a browser may keep a 308 in its disk cache, and
        // send its URL on as a Referer, unless told not to (the page itself says both).
        res.setHeader('Cache-Control', 'no-store');
        res.setHeader('Referrer-Policy', 'no-referrer');
        res.setHeader('Location', `../${encodeURIComponent(base)}${q < 0 ? '' : url.slice(q)}`);
        res.end();
        return true;
      }
      if (rest === 'events') {
        if (!refuse(req, res, authorized)) stream.open(req, res);
        return true;
      }
      const a = assets.get(rest);
      if (a === undefined) {
        send(res, req, 404, 'application/json; charset=utf-8', '{"error":"not found"}');
      } else if (!refuse(req, res, anyone)) {
        serveAsset(req, res, a);
      }
      return true;
    },
    close() {
      stream.close();
      events.close();
    },
  };
}
