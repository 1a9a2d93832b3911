/**
 * The gateway under test: an Express app with `app.use(loadBalance(opts))`,
 * fed by the backends' health agents through the broker.
 */
import { readFileSync } from 'node:fs';
import type { AddressInfo } from 'node:net';
import express from 'express';
import { loadBalance, type LoadBalanceOptions } from '@loadwise/gateway-plugin';
import { parseKeyFile } from '@loadwise/protocol';
import { fail, onShutdown, readConfig, tell } from './child';
import { startDiag } from './gateway-diag';

interface LoadwiseConfig {
  options: LoadBalanceOptions;
  /** The agents' key file (keys cannot travel in the JSON config: they are Buffers). */
  keyFile?: string;
  port?: number;
}

async function main(): Promise<void> {
  const cfg = readConfig<LoadwiseConfig>();
  const diag = startDiag();
  const keys = cfg.keyFile ? parseKeyFile(readFileSync(cfg.keyFile, 'utf8')) : undefined;
  const balancer = loadBalance({ ...cfg.options, ...(keys ? { keys } : {}) });
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
