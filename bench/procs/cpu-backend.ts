/**
 * A CPU-bound backend with one worker: each request costs `cpuMs` of CPU
 * *time* (user + system, from process.cpuUsage()), not of wall time, so under
 * a CFS quota (bench/lib/cgroups.ts) a request takes longer in wall time
 * while its cost stays the same, as a real CPU-bound handler's does.
 *
 * Requests are served in FIFO order from an explicit queue: on arrival a
 * request is pushed; the worker takes one at a time, burns its CPU
 * synchronously, answers, then yields (setImmediate) so that requests which
 * arrived meanwhile are parsed and counted before the next burn. Beyond
 * `maxQueue` waiting requests the answer is 503.
 *
 * The backend's outstanding requests (queued + in service) are a Prometheus
 * gauge at /metrics (text exposition format 0.0.4), which the health agent
 * reads with --prometheus-url; STATS_PATH answers the same figures as JSON in
 * the tracker's shape ({ inFlight, queued }) for the harness's drain().
 */
import http, { type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { closeServer, fail, onShutdown, readConfig, tell } from './child';

export const STATS_PATH = '/.well-known/loadwise/stats';
export const METRICS_PATH = '/metrics';
/** The gauge at METRICS_PATH: requests queued or in service. */
export const OUTSTANDING_GAUGE = 'loadwise_bench_outstanding_requests';

export interface CpuBackendConfig {
  id: string;
  /** CPU time each request burns, ms. */
  cpuMs: number;
  /** Waiting requests beyond this get 503. */
  maxQueue: number;
  /** 0 = pick a free port. */
  port?: number;
}

/**
 * Burns `ms` of this process's CPU time (user + system). The arithmetic is
 * only there to make each getrusage call a small part of the cost; the loop
 * ends on the CPU time, whatever the compiler makes of the rest.
 */
export function burnCpu(ms: number): number {
  const start = process.cpuUsage();
  const targetUs = ms * 1000;
  let x = 1;
  for (;;) {
    // A few µs of arithmetic between getrusage calls, so the syscall is a small part of the cost.
    for (let i = 0; i < 2_000; i++) x = (Math.imul(x, 1_103_515_245) + 12_345) | 0;
    const used = process.cpuUsage(start);
    if (used.user + used.system >= targetUs) return x;
  }
}

async function main(): Promise<void> {
  const cfg = readConfig<CpuBackendConfig>();
  const queue: Array<{ res: ServerResponse }> = [];
  let inService = 0;
  let scheduled = false;
  let served = 0;
  let rejected = 0;

  const work = (): void => {
    scheduled = false;
    const next = queue.shift();
    if (!next) return;
    inService = 1;
    // A client that gave up (its socket closed) costs nothing more.
    if (!next.res.destroyed) {
      burnCpu(cfg.cpuMs);
      next.res.setHeader('x-backend-id', cfg.id);
      next.res.end('ok');
      served++;
    }
    inService = 0;
    schedule();
  };
  const schedule = (): void => {
    if (scheduled || queue.length === 0) return;
    scheduled = true;
    setImmediate(work);
  };

  const server = http.createServer((req: IncomingMessage, res: ServerResponse) => {
    req.resume();
    const path = (req.url ?? '/').split('?')[0];
    if (path === '/healthz') {
      res.end('ok');
    } else if (path === METRICS_PATH) {
      res.setHeader('content-type', 'text/plain; version=0.0.4');
      res.end(
        `# HELP ${OUTSTANDING_GAUGE} Requests queued or in service.\n` +
          `# TYPE ${OUTSTANDING_GAUGE} gauge\n` +
          `${OUTSTANDING_GAUGE} ${queue.length + inService}\n` +
          `# HELP loadwise_bench_served_total Requests answered after their CPU burn.\n` +
          `# TYPE loadwise_bench_served_total counter\n` +
          `loadwise_bench_served_total ${served}\n` +
          `# HELP loadwise_bench_rejected_total Requests refused with 503 (queue full).\n` +
          `# TYPE loadwise_bench_rejected_total counter\n` +
          `loadwise_bench_rejected_total ${rejected}\n`,
      );
    } else if (path === STATS_PATH) {
      res.setHeader('content-type', 'application/json');
      res.end(JSON.stringify({ inFlight: inService, queued: queue.length, served, rejected }));
    } else if (queue.length >= cfg.maxQueue) {
      rejected++;
      res.statusCode = 503;
      res.setHeader('x-backend-id', cfg.id);
      res.end('queue full');
    } else {
      queue.push({ res });
      schedule();
    }
  });
  // Node's default keep-alive timeout (5 s) is shorter than nginx/HAProxy idle
  // timeouts; a race there shows up as sporadic 502s unrelated to routing.
  server.keepAliveTimeout = 65_000;
  server.headersTimeout = 66_000;
  server.listen(cfg.port ?? 0, '127.0.0.1');
  await new Promise<void>((resolve, reject) => {
    server.once('listening', resolve);
    server.once('error', reject);
  });
  const port = (server.address() as AddressInfo).port;
  onShutdown(async () => {
    await closeServer(server);
  });
  tell({ type: 'ready', port, pid: process.pid });
}

// Run when forked; bench/lib imports the constants above.
if (require.main === module) main().catch(fail);
