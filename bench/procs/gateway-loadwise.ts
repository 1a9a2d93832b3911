/**
 * The gateway under test: an Express app with `app.use(loadBalance(opts))`,
 * fed by the backends' health agents through the broker.
 */
import type { AddressInfo } from 'node:net';
import express from 'express';
import type { RequestHandler } from 'express';
import * as gateway from '@loadwise/gateway-plugin';
import { fail, onShutdown, readConfig, tell } from './child';
import { startDiag } from './gateway-diag';

// Looked up at run time while the gateway core lands in parallel (issue 1);
// switch to the typed import once `loadBalance` is exported.
type Balancer = RequestHandler & { close(): Promise<void> };
const loadBalance = (gateway as unknown as { loadBalance?: (o: unknown) => Balancer }).loadBalance;

interface LoadwiseConfig {
  options: Record<string, unknown>;
  port?: number;
}

async function main(): Promise<void> {
  const cfg = readConfig<LoadwiseConfig>();
  const diag = startDiag();
  if (!loadBalance) throw new Error('@loadwise/gateway-plugin does not export loadBalance yet');
  const balancer = loadBalance(cfg.options);
  const app = express();
  app.disable('x-powered-by');
  app.use(balancer);
  const server = app.listen(cfg.port ?? 0, '127.0.0.1');
  await new Promise<void>((resolve, reject) => {
    server.once('listening', resolve);
    server.once('error', reject);
  });
  process.on('message', (m: { type?: string }) => {
    if (m.type === 'diag-reset') diag.reset();
    if (m.type === 'diag') tell({ type: 'diag', diag: diag.read() });
  });
  onShutdown(async () => {
    server.closeAllConnections();
    await new Promise<void>((resolve) => server.close(() => resolve()));
    await balancer.close();
  });
  tell({ type: 'ready', port: (server.address() as AddressInfo).port });
}

main().catch(fail);
