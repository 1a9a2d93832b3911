/**
 * The soak's gateway: `app.use(loadBalance(opts))` in its own process, so its
 * RSS, file descriptors and sockets can be read from /proc/<pid> without the
 * load generator's in the way. Answers `{type:'mem'}` with
 * process.memoryUsage() figures (the heap is only visible from inside).
 */
import { readFileSync } from 'node:fs';
import type { AddressInfo } from 'node:net';
import express from 'express';
import { loadBalance, type LoadBalanceOptions } from '@loadwise/gateway-plugin';
import { parseKeyFile } from '@loadwise/protocol';
import { closeServer, fail, onShutdown, readConfig, tell } from '../procs/child';

async function main(): Promise<void> {
  const cfg = readConfig<{
    options: LoadBalanceOptions;
    keyFile: string;
    keepAliveTimeoutMs: number;
  }>();
  const lb = loadBalance({
    ...cfg.options,
    keys: parseKeyFile(readFileSync(cfg.keyFile, 'utf8')),
    logger: { info() {}, warn() {}, error() {} },
  });
  const app = express();
  app.disable('x-powered-by');
  app.use(lb);
  const server = app.listen(0, '127.0.0.1');
  // Longer than the clients' idle timeout, so the client closes first (no reuse race).
  server.keepAliveTimeout = cfg.keepAliveTimeoutMs;
  server.headersTimeout = cfg.keepAliveTimeoutMs + 1000;
  await new Promise<void>((resolve, reject) => {
    server.once('listening', resolve);
    server.once('error', reject);
  });
  const events: Record<string, number> = {};
  for (const name of ['backend-ejected', 'backend-down', 'backend-up', 'broker-lost'] as const) {
    lb.balancer.on(name, () => {
      events[name] = (events[name] ?? 0) + 1;
    });
  }
  process.on('message', (m: { type?: string }) => {
    if (m.type !== 'mem') return;
    const mem = process.memoryUsage();
    const snap = lb.balancer.snapshot();
    tell({
      type: 'mem',
      heapUsed: mem.heapUsed,
      heapTotal: mem.heapTotal,
      external: mem.external,
      arrayBuffers: mem.arrayBuffers,
      eligible: snap.backends.filter((b) => b.state === 'healthy').length,
      backends: snap.backends.map((b) => `${b.id}:${b.state}:${b.inFlight}`).join(' '),
      queued: snap.saturationQueueLength,
      brokerConnected: lb.balancer.brokerConnected,
      events: { ...events },
    });
  });
  onShutdown(async () => {
    await closeServer(server);
    await lb.close();
  });
  tell({ type: 'ready', port: (server.address() as AddressInfo).port });
}

main().catch(fail);
