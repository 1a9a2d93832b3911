/**
 * A backend with finite capacity: `slots` requests are served at once, each
 * holds its slot for `serviceMs` (a timer, so capacity is slots / serviceMs
 * without burning CPU), and the health agent's tracker queues the rest in FIFO
 * order, as a real server's worker pool does. Overload therefore grows the
 * queue, and the tracker's figures (exposed at STATS_PATH for the agent) show it.
 *
 * The parent can change the service time at run time (scenario 3) via IPC.
 * With `agentCheckPort`, it also answers HAProxy's agent-check protocol with a
 * weight derived from the same tracker figures, so HAProxy gets the same load
 * signal the loadwise agent publishes.
 */
import { createServer as createTcpServer, type AddressInfo } from 'node:net';
import type { Server } from 'node:http';
import express from 'express';
import { trackRequests } from '@loadwise/health-agent';
import { closeServer, fail, onShutdown, readConfig, tell } from './child';

export const STATS_PATH = '/.well-known/loadwise/stats';

export interface BackendConfig {
  id: string;
  slots: number;
  serviceMs: number;
  /** Waiting requests beyond this get 503 (the tracker's bound). */
  maxQueue: number;
  /** 0 = pick a free port. */
  port?: number;
  /** Serve HAProxy agent-check on this port (0 = pick one); absent = off. */
  agentCheckPort?: number;
}

async function main(): Promise<void> {
  const cfg = readConfig<BackendConfig>();
  let serviceMs = cfg.serviceMs;
  const tracker = trackRequests({
    concurrencyLimit: cfg.slots,
    maxQueue: cfg.maxQueue,
    exposePath: STATS_PATH,
  });
  const app = express();
  app.disable('x-powered-by');
  app.disable('etag');
  app.use(tracker);
  app.get('/healthz', (_req, res) => {
    res.send('ok');
  });
  app.use((_req, res) => {
    const done = (): void => {
      res.setHeader('x-backend-id', cfg.id);
      res.end('ok');
    };
    // serviceMs 0 (scenario 6) answers at once without a timer hop.
    if (serviceMs <= 0) done();
    else setTimeout(done, serviceMs);
  });
  const server: Server = app.listen(cfg.port ?? 0, '127.0.0.1');
  // Node's default keep-alive timeout (5 s) is shorter than nginx/HAProxy idle
  // timeouts; a race there shows up as sporadic 502s unrelated to routing.
  server.keepAliveTimeout = 65_000;
  server.headersTimeout = 66_000;
  await new Promise<void>((resolve, reject) => {
    server.once('listening', resolve);
    server.once('error', reject);
  });
  const port = (server.address() as AddressInfo).port;

  let agentCheckPort: number | undefined;
  const agentServer = createTcpServer((socket) => {
    // HAProxy agent-check: reply one ASCII line, e.g. "75%\n", then close.
    // Weight = free share of the backend's slots, from the tracker's figures.
    const s = tracker.snapshot();
    const busy = s.inFlight + s.queued;
    const freeShare = Math.max(0, cfg.slots - busy) / cfg.slots;
    const pct = Math.max(1, Math.round(freeShare * 100));
    socket.end(`${pct}%\n`);
    socket.on('error', () => undefined);
  });
  if (cfg.agentCheckPort !== undefined) {
    await new Promise<void>((resolve) =>
      agentServer.listen(cfg.agentCheckPort, '127.0.0.1', resolve),
    );
    agentCheckPort = (agentServer.address() as AddressInfo).port;
  }

  process.on('message', (m: { type?: string; serviceMs?: number }) => {
    if (m.type === 'set-service' && typeof m.serviceMs === 'number') serviceMs = m.serviceMs;
    if (m.type === 'snapshot') tell({ type: 'snapshot', snapshot: tracker.snapshot() });
  });
  onShutdown(async () => {
    tracker.close();
    agentServer.close();
    await closeServer(server);
  });
  tell({ type: 'ready', port, agentCheckPort, pid: process.pid });
}

main().catch(fail);
