/**
 * `loadBalance(opts)`: the Express middleware. Options are validated here, at
 * construction (a coded GatewayError is thrown); afterwards the middleware
 * never throws and never calls `next(err)`: every request ends in a proxied
 * response or a coded JSON error (errors.ts). It works mounted
 * (`app.use('/api', loadBalance(...))`) and after the user's own middleware.
 *
 * WebSocket: `server.on('upgrade', routeUpgrades(app))` runs upgrade requests
 * through the app (middleware and mount paths apply) and the balancer they
 * reach takes the socket over (upgrade-routing.ts). `lb.upgrade` is the raw
 * handler for a server whose only job is this balancer.
 * http-proxy-middleware's own automatic subscription only happens after a
 * first HTTP request, which is too late.
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Socket } from 'node:net';
import { Balancer, closedError } from './balancer';
import { createDashboard } from './dashboard';
import type { BalancerHandle } from './handle';
import type { HttpHandler } from './observability';
import { stallOf, type StallOptions } from './observability/backpressure';
import { serveMetrics, serveStatus } from './observability/handlers';
import { writeLog } from './observability/event-log';
import type { CloseOptions, LoadBalanceOptions, ReadyOptions } from './options';
import { closeOptions, resolveOptions } from './options-validate';
import { isRoutedUpgrade, releaseUpgrade, takeUpgrade } from './upgrade-routing';
import { WarmUp } from './warm-up';

export interface LoadBalancerMiddleware {
  (req: IncomingMessage, res: ServerResponse, next?: (err?: unknown) => void): void;
  /** The running balancer: events, snapshot(), the broker connection, the metrics registry. */
  readonly balancer: BalancerHandle;
  /**
   * Raw WebSocket upgrade handler: every upgrade goes to this balancer's
   * backends, with no middleware and no mount path. In an app, use
   * `server.on('upgrade', routeUpgrades(app))` instead.
   */
  readonly upgrade: (req: IncomingMessage, socket: Socket, head: Buffer) => void;
  /**
   * Resolves once the broker is connected and its retained messages are in
   * (at once without one) and the
   * warm-up is over (`warmUp`: the request path run, the backend pools
   * opened). A broker not connected after `timeoutMs` (default 10 000):
   * resolves anyway, with one warning, the balancer routing on local signals
   * and reconnecting; with `requireBroker: true` rejects with
   * LW_GW_BROKER_UNREACHABLE instead. Requests that come earlier are served,
   * colder.
   */
  ready(opts?: ReadyOptions): Promise<void>;
  /**
   * Graceful: refuses new requests (503 LW_GW_DRAINING), lets in-flight ones
   * finish for up to `graceMs` (default 10 000; `Infinity`: as long as they
   * take), then releases everything: timers, broker connection (or embedded
   * broker), sockets. A `graceMs` outside 0 to 2^31 - 1 (other than Infinity)
   * rejects with LW_GW_INVALID_OPTION and closes nothing. A second call gets
   * the first call's promise (its grace stands). `server`: the server(s) the
   * app listens on, so that requests still in the app's middleware are waited
   * for though none reached the balancer yet (CloseOptions).
   */
  close(opts?: CloseOptions): Promise<void>;
}

/** Scheme and authority of an absolute-form target (RFC 9112 §3.2.2), which Express keeps. */
const ABSOLUTE_FORM = /^[a-z][a-z0-9+.-]*:\/\/[^/?#]*/i;

/**
 * The path of a request target as Express routes it: without the scheme and authority of
 * an absolute-form target, the query or a fragment. Cut at `?` alone, `GET
 * http://gw/_lb/status` and `GET /_lb/status#x` were not the status path here, while
 * Express mounted the balancer for them and the backend got `/_lb/status` (with the
 * token, in `Authorization`).
 */
function pathOf(url: string | undefined): string {
  if (!url) return '/';
  // Origin form (`/...`), nearly every request: no regex on the request path.
  const start = url.charCodeAt(0) === 47 ? 0 : (ABSOLUTE_FORM.exec(url)?.[0].length ?? 0);
  const q = url.indexOf('?', start);
  const h = url.indexOf('#', start);
  const end = q < 0 ? h : h < 0 ? q : Math.min(q, h);
  return url.slice(start, end < 0 ? undefined : end) || '/';
}

export function loadBalance(opts: LoadBalanceOptions): LoadBalancerMiddleware {
  const options = resolveOptions(opts);
  const balancer = new Balancer(options);
  const getSnapshot = (): ReturnType<BalancerHandle['snapshot']> => balancer.snapshot();
  // A status or metrics answer whose client stops reading is cut as a proxied answer would
  // be, and logged (`event`, rate-limited).
  const stallCut = (event: string): StallOptions => ({
    stallTimeoutMs: options.requestTimeoutMs,
    onStalled: (message) => balancer.logLine(event, message, { event }),
  });
  const token = options.statusToken === false ? undefined : options.statusToken;
  if (
    options.statusToken === undefined &&
    (options.statusPath ?? options.metricsPath) !== undefined
  ) {
    // Once, here: `statusToken: process.env.LB_TOKEN` with the variable missing opened both
    // to anyone who reached them (every signed-in user of the app, or everyone), unsaid.
    const paths = [options.statusPath, options.metricsPath].filter((p) => p !== undefined);
    writeLog(
      options.logger,
      'warn',
      { event: 'status-unprotected' },
      `${paths.join(' and ')} answer${paths.length === 1 ? 's' : ''} without a token: statusToken is unset, so ` +
        'anyone who reaches the gateway reads backend addresses and load. Set statusToken, or ' +
        "statusToken: false if the app's own auth protects them.",
    );
  }
  const status: HttpHandler | undefined =
    options.statusPath === undefined
      ? undefined
      : serveStatus({
          getSnapshot,
          token,
          ...stallCut('status-request-stalled'),
        });
  const metrics: HttpHandler | undefined =
    options.metricsPath === undefined
      ? undefined
      : serveMetrics(balancer.metrics.registry, {
          token,
          ...stallCut('metrics-scrape-stalled'),
        });

  const dashboard =
    options.dashboard &&
    createDashboard(balancer, options.dashboard, stallOf(stallCut('dashboard-viewer-stalled')));
  // Starts now, beside the broker connection; ready() waits for both (warm-up.ts).
  const warmUp = options.warmUp && new WarmUp(balancer, options.warmUp);

  const middleware = ((req: IncomingMessage, res: ServerResponse) => {
    // An upgrade routed through the app (routeUpgrades) that reached this balancer.
    if (isRoutedUpgrade(req)) {
      if (balancer.flow.upgrades.servedAsRequest(req)) releaseUpgrade(req);
      else {
        balancer.flow.noteServerOf(req);
        const upgrade = takeUpgrade(req)!;
        return balancer.flow.upgrades.upgrade(req, upgrade.socket, upgrade.head);
      }
    }
    if (status || metrics || dashboard) {
      const p = pathOf(req.url);
      if (status && p === options.statusPath) return status(req, res);
      if (metrics && p === options.metricsPath) return metrics(req, res);
      if (dashboard && dashboard.handle(req, res, p)) return;
    }
    balancer.flow.handle(req, res);
  }) as LoadBalancerMiddleware;
  Object.defineProperties(middleware, {
    balancer: { value: balancer, enumerable: true },
    dashboard: { value: dashboard || undefined },
    upgrade: {
      value: (req: IncomingMessage, socket: Socket, head: Buffer) => {
        balancer.flow.noteServerOf(req);
        return balancer.flow.upgrades.upgrade(req, socket, head);
      },
    },
    ready: {
      value: (o?: ReadyOptions) =>
        warmUp
          ? Promise.all([balancer.ready(o), warmUp.done]).then(() => {
              // close() began during the warm-up, which it ends (`done` then resolves) after
              // the broker's part had settled: resolved, ready() let a start-up script open
              // its port on a closed balancer, every request 503 and the process up for good.
              if (balancer.draining) throw closedError();
            })
          : balancer.ready(o),
    },
    close: {
      value: (o?: CloseOptions) => {
        // A mistaken grace closes nothing: the caller learns of it with everything serving.
        try {
          closeOptions(o);
        } catch (err) {
          return Promise.reject(err as Error);
        }
        // Open dashboard streams would keep an HTTP server's close() waiting.
        dashboard?.close();
        // Both at once: draining starts now, not after the warm-up has stopped.
        const closing = balancer.close(o);
        return warmUp ? Promise.all([warmUp.close(), closing]).then(() => undefined) : closing;
      },
    },
  });
  return middleware;
}
