/**
 * `loadBalance(opts)`: the Express middleware. Options are validated here, at
 * construction (a coded GatewayError is thrown); afterwards the middleware
 * never throws and never calls `next(err)`: every request ends in a proxied
 * response or a coded JSON error (errors.ts). It works mounted
 * (`app.use('/api', loadBalance(...))`) and after the user's own middleware.
 *
 * WebSocket: attach `lb.upgrade` to the HTTP server's 'upgrade' event
 * (`server.on('upgrade', lb.upgrade)`); http-proxy-middleware's own automatic
 * subscription only happens after a first HTTP request, which is too late.
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Socket } from 'node:net';
import { Balancer } from './balancer';
import { createDashboard, type Dashboard } from './dashboard';
import { metricsHandler, statusHandler, type HttpHandler } from './observability';
import type { LoadBalanceOptions } from './options';
import { resolveOptions } from './options-validate';

export interface LoadBalancerMiddleware {
  (req: IncomingMessage, res: ServerResponse, next?: (err?: unknown) => void): void;
  /** The balancer: events, snapshot(), brokerUrl, ready(). */
  readonly balancer: Balancer;
  /** WebSocket upgrades: `server.on('upgrade', lb.upgrade)`. */
  readonly upgrade: (req: IncomingMessage, socket: Socket, head: Buffer) => void;
  /** The dashboard (viewers, sampling, recent events) when the `dashboard` option is on. */
  readonly dashboard: Dashboard | undefined;
  /** Resolves once the broker is connected (at once without one). */
  ready(): Promise<void>;
  /** Releases everything: timers, broker connection (or embedded broker), sockets. */
  close(): Promise<void>;
}

function pathOf(url: string | undefined): string {
  if (!url) return '/';
  const q = url.indexOf('?');
  return q < 0 ? url : url.slice(0, q);
}

export function loadBalance(opts: LoadBalanceOptions): LoadBalancerMiddleware {
  const options = resolveOptions(opts);
  const balancer = new Balancer(options);
  const getSnapshot = (): ReturnType<Balancer['snapshot']> => balancer.snapshot();
  const status: HttpHandler | undefined =
    options.statusPath === undefined
      ? undefined
      : statusHandler({ getSnapshot, token: options.statusToken });
  const metrics: HttpHandler | undefined =
    options.metricsPath === undefined
      ? undefined
      : metricsHandler(balancer.metrics.registry, { token: options.statusToken });

  const dashboard = options.dashboard && createDashboard(balancer, options.dashboard);

  const middleware = ((req: IncomingMessage, res: ServerResponse) => {
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
      value: (req: IncomingMessage, socket: Socket, head: Buffer) =>
        balancer.flow.upgrades.upgrade(req, socket, head),
    },
    ready: { value: () => balancer.ready() },
    close: {
      value: () => {
        // Open dashboard streams would keep an HTTP server's close() waiting.
        dashboard?.close();
        return balancer.close();
      },
    },
  });
  return middleware;
}
