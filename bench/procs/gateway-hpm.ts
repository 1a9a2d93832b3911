/**
 * The baseline peer: Express + plain http-proxy-middleware, round robin over
 * the backends through HPM's `router` option, every other option at its default
 * (so, like most deployments, no keep-alive agent to the backends).
 */
import http from 'node:http';
import express from 'express';
import { createProxyMiddleware } from 'http-proxy-middleware';
import { gatewayServerOptions } from '@loadwise/gateway-plugin';
import { fail, readConfig } from './child';
import { servePeerGateway } from './gateway-diag';

interface HpmConfig {
  backends: Array<{ id: string; url: string }>;
  /** Diagnostic variant (scenario 8): a keep-alive agent to the backends instead of HPM's default. */
  keepAlive?: boolean;
  port?: number;
  /**
   * Transparency variant: the same peer served with loadwise's gatewayServerOptions()
   * (docs/gateway.md, "The gateway's server"), which any Express server can use.
   */
  gatewayServerClasses?: boolean;
}

async function main(): Promise<void> {
  const cfg = readConfig<HpmConfig>();
  let i = 0;
  const app = express();
  app.disable('x-powered-by');
  app.use(
    createProxyMiddleware({
      target: cfg.backends[0]!.url,
      router: () => cfg.backends[i++ % cfg.backends.length]!.url,
      // Without an agent, http-proxy opens a new connection per request (agent: false).
      ...(cfg.keepAlive ? { agent: new http.Agent({ keepAlive: true, maxSockets: 256 }) } : {}),
    }),
  );
  await servePeerGateway(
    app,
    cfg.port,
    undefined,
    cfg.gatewayServerClasses ? gatewayServerOptions() : {},
  );
}

main().catch(fail);
