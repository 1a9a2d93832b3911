/**
 * The gateway of the slow-clients reproduction: Express + `loadBalance`, in a
 * process of its own so its file descriptors can be counted
 * (/proc/<pid>/fd) and a crash shows as an exit, not as a stalled parent.
 * `server` sets the http.Server timeouts docs/gateway.md ("Slow and hostile
 * clients") recommends; absent, Node's defaults apply.
 */
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import express from 'express';
import { loadBalance, type LoadBalanceOptions } from '@loadwise/gateway-plugin';
import { closeServer, fail, onShutdown, readConfig, tell } from '../procs/child';

export interface HostileGatewayConfig {
  options: LoadBalanceOptions;
  server?: {
    connectionsCheckingInterval?: number;
    headersTimeout?: number;
    requestTimeout?: number;
    keepAliveTimeout?: number;
    maxHeadersCount?: number;
  };
}

async function main(): Promise<void> {
  const cfg = readConfig<HostileGatewayConfig>();
  const lb = loadBalance({ ...cfg.options, metricsPath: '/_lb/metrics' });
  const app = express();
  app.disable('x-powered-by');
  app.use(lb);
  const s = cfg.server;
  const server = createServer(
    s?.connectionsCheckingInterval === undefined
      ? {}
      : { connectionsCheckingInterval: s.connectionsCheckingInterval },
    app,
  );
  if (s?.headersTimeout !== undefined) server.headersTimeout = s.headersTimeout;
  if (s?.requestTimeout !== undefined) server.requestTimeout = s.requestTimeout;
  if (s?.keepAliveTimeout !== undefined) server.keepAliveTimeout = s.keepAliveTimeout;
  if (s?.maxHeadersCount !== undefined) server.maxHeadersCount = s.maxHeadersCount;
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen({ port: 0, host: '127.0.0.1', backlog: 4096 }, resolve);
  });
  onShutdown(async () => {
    await closeServer(server);
    await lb.close();
  });
  tell({ type: 'ready', port: (server.address() as AddressInfo).port });
}

main().catch(fail);
