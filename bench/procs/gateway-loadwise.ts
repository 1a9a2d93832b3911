/**
 * The gateway under test: an Express app with `app.use(loadBalance(opts))`,
 * fed by the backends' health agents through the broker.
 */
import { readFileSync } from 'node:fs';
import type { AddressInfo } from 'node:net';
import type { Server } from 'node:http';
import express from 'express';
import { loadBalance, runWorkers, type LoadBalanceOptions } from '@loadwise/gateway-plugin';
import { parseKeyFile } from '@loadwise/protocol';
import { fail, onShutdown, readConfig, tell } from './child';
import { answerDiagMessages, startDiag } from './gateway-diag';

interface LoadwiseConfig {
  options: LoadBalanceOptions;
  /** The agents' key file (keys cannot travel in the JSON config: they are Buffers). */
  keyFile?: string;
  port?: number;
  /** Run the gateway as this many workers (runWorkers, node:cluster) on one port. */
  workers?: number;
}

async function startGateway(cfg: LoadwiseConfig) {
  const keys = cfg.keyFile ? parseKeyFile(readFileSync(cfg.keyFile, 'utf8')) : undefined;
  const balancer = loadBalance({ ...cfg.options, ...(keys ? { keys } : {}) });
  const app = express();
  app.disable('x-powered-by');
  app.use(balancer);
  const server: Server = app.listen(cfg.port ?? 0, '127.0.0.1');
  await new Promise<void>((resolve, reject) => {
    server.once('listening', resolve);
    server.once('error', reject);
  });
  return { balancer, server };
}

/**
 * The primary of a worker pool: says ready with the shared port and the
 * workers' pids (their CPU counts as the gateway's). Diag figures are per
 * process, so this variant reports none.
 */
async function mainWorkers(cfg: LoadwiseConfig, workers: number): Promise<void> {
  const pool = await runWorkers({
    workers,
    handleSignals: false,
    log: () => undefined,
    start: async () => {
      const { balancer, server } = await startGateway(cfg);
      return {
        close: async () => {
          server.closeAllConnections();
          await new Promise<void>((resolve) => server.close(() => resolve()));
          await balancer.close();
        },
      };
    },
  });
  if (!pool) return; // a worker: start() runs it
  const port = await pool.listening();
  process.on('message', (m: { type?: string }) => {
    if (m.type === 'diag') tell({ type: 'diag' });
  });
  onShutdown(() => pool.close());
  tell({ type: 'ready', port, workerPids: [...pool.pids().values()] });
}

async function main(): Promise<void> {
  const cfg = readConfig<LoadwiseConfig>();
  if (cfg.workers !== undefined) return mainWorkers(cfg, cfg.workers);
  const diag = startDiag();
  const { balancer, server } = await startGateway(cfg);
  answerDiagMessages(diag);
  onShutdown(async () => {
    server.closeAllConnections();
    await new Promise<void>((resolve) => server.close(() => resolve()));
    await balancer.close();
  });
  tell({ type: 'ready', port: (server.address() as AddressInfo).port });
}

main().catch(fail);
