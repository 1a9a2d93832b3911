/**
 * The baseline peer: Express + plain http-proxy-middleware, round robin over
 * the backends through HPM's `router` option, every other option at its default
 * (so, like most deployments, no keep-alive agent to the backends).
 */
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import express from 'express';
import { createProxyMiddleware } from 'http-proxy-middleware';
import { closeServer, fail, onShutdown, readConfig, tell } from './child';
import { answerDiagMessages, startDiag } from './gateway-diag';

interface HpmConfig {
  backends: Array<{ id: string; url: string }>;
  /** Diagnostic variant (scenario 8): a keep-alive agent to the backends instead of HPM's default. */
  keepAlive?: boolean;
  port?: number;
}

async function main(): Promise<void> {
  const cfg = readConfig<HpmConfig>();
  const diag = startDiag();
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
  const server = app.listen(cfg.port ?? 0, '127.0.0.1');
  await new Promise<void>((resolve, reject) => {
    server.once('listening', resolve);
    server.once('error', reject);
  });
  answerDiagMessages(diag);
  onShutdown(async () => {
    await closeServer(server);
  });
  tell({ type: 'ready', port: (server.address() as AddressInfo).port });
}

main().catch(fail);
