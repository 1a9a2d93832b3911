/**
 * The gateway under test: an Express app with `app.use(loadBalance(opts))`,
 * fed by the backends' health agents through the broker.
 */
import { execFile } from 'node:child_process';
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
  /**
   * Instrumentation for the cold-start scenario: every `traceEveryMs` the
   * waiting queue, the requests in flight per backend and the overload state,
   * plus every saturation/overload event, sent to the parent on `diag`.
   */
  traceEveryMs?: number;
  /** Listen backlog; absent: app.listen's (Node's default, 511). */
  backlog?: number;
}

async function main(): Promise<void> {
  const cfg = readConfig<LoadwiseConfig>();
  const diag = startDiag();
  const keys = cfg.keyFile ? parseKeyFile(readFileSync(cfg.keyFile, 'utf8')) : undefined;
  const balancer = loadBalance({ ...cfg.options, ...(keys ? { keys } : {}) });
  const app = express();
  app.disable('x-powered-by');
  app.use(balancer);
  // app.listen's backlog is Node's default, 511; `backlog` sets another (capped by somaxconn).
  const server =
    cfg.backlog === undefined
      ? app.listen(cfg.port ?? 0, '127.0.0.1')
      : app.listen({ port: cfg.port ?? 0, host: '127.0.0.1', backlog: cfg.backlog });
  await new Promise<void>((resolve, reject) => {
    server.once('listening', resolve);
    server.once('error', reject);
  });
  const trace: Array<Record<string, unknown>> = [];
  const acceptQueue: Array<[number, number, number]> = [];
  const t0 = Date.now();
  let tracer: NodeJS.Timeout | undefined;
  if (cfg.traceEveryMs) {
    const b = balancer.balancer;
    tracer = setInterval(() => {
      const inFlight: Record<string, number> = {};
      let sockets = 0;
      for (const be of b.registry.backends.values()) {
        inFlight[be.id] = be.load.inFlight;
        for (const list of Object.values(be.agent.sockets)) sockets += list?.length ?? 0;
      }
      const port = (server.address() as AddressInfo | null)?.port;
      // The listen socket's accept queue (ss: Recv-Q) and its bound (Send-Q), read by a child
      // process so that this event loop does not parse the host's socket table.
      execFile('ss', ['-ltnH', `sport = :${port}`], (err, out) => {
        const m = /^\S+\s+(\d+)\s+(\d+)/.exec(out);
        if (!err && m) acceptQueue.push([Date.now() - t0, Number(m[1]), Number(m[2])]);
      });
      trace.push({
        t: Date.now() - t0,
        queued: b.queue.length,
        active: b.flow.active,
        sockets,
        overloaded: b.overload?.overloaded ?? false,
        inFlight,
      });
    }, cfg.traceEveryMs);
    tracer.unref();
    b.on('saturation', (e) => trace.push({ t: Date.now() - t0, event: 'saturation', ...e }));
    b.on('overload', (e) => trace.push({ t: Date.now() - t0, event: 'overload', ...e }));
  }
  process.on('message', (m: { type?: string }) => {
    if (m.type === 'diag-reset') diag.reset();
    if (m.type === 'diag') tell({ type: 'diag', diag: { ...diag.read(), trace, acceptQueue } });
  });
  onShutdown(async () => {
    if (tracer) clearInterval(tracer);
    server.closeAllConnections();
    await new Promise<void>((resolve) => server.close(() => resolve()));
    await balancer.close();
  });
  tell({ type: 'ready', port: (server.address() as AddressInfo).port });
}

main().catch(fail);
