/**
 * Diagnostics a Node gateway reports after a run (scenario 8 asks why Node
 * gateways grow tails): event-loop delay percentiles and time spent in GC.
 */
import { writeFileSync } from 'node:fs';
import http, { type RequestListener } from 'node:http';
import { Session } from 'node:inspector';
import type { AddressInfo } from 'node:net';
import { constants, monitorEventLoopDelay, PerformanceObserver } from 'node:perf_hooks';
import { writeHeapSnapshot } from 'node:v8';
import { closeServer, onShutdown, tell } from './child';

export interface GatewayDiag {
  eventLoopDelayP50Ms: number;
  eventLoopDelayP99Ms: number;
  eventLoopDelayMaxMs: number;
  gcCount: number;
  gcTotalMs: number;
  gcMaxMs: number;
  /** Major (mark-compact) collections among gcCount, and their total ms: the long pauses. */
  gcMajorCount: number;
  gcMajorMs: number;
}

export function startDiag(): { reset(): void; read(): GatewayDiag } {
  const eld = monitorEventLoopDelay({ resolution: 5 });
  eld.enable();
  let gcCount = 0;
  let gcTotalMs = 0;
  let gcMaxMs = 0;
  let gcMajorCount = 0;
  let gcMajorMs = 0;
  const obs = new PerformanceObserver((list) => {
    for (const e of list.getEntries()) {
      gcCount++;
      gcTotalMs += e.duration;
      if (e.duration > gcMaxMs) gcMaxMs = e.duration;
      const kind = (e as { detail?: { kind?: number } }).detail?.kind;
      if (kind === constants.NODE_PERFORMANCE_GC_MAJOR) {
        gcMajorCount++;
        gcMajorMs += e.duration;
      }
    }
  });
  obs.observe({ entryTypes: ['gc'] });
  const ms = (ns: number): number => Math.round(ns / 1e4) / 100;
  return {
    reset() {
      eld.reset();
      gcCount = 0;
      gcTotalMs = 0;
      gcMaxMs = 0;
      gcMajorCount = 0;
      gcMajorMs = 0;
    },
    read() {
      return {
        eventLoopDelayP50Ms: ms(eld.percentile(50)),
        eventLoopDelayP99Ms: ms(eld.percentile(99)),
        eventLoopDelayMaxMs: ms(eld.max),
        gcCount,
        gcTotalMs: Math.round(gcTotalMs * 10) / 10,
        gcMaxMs: Math.round(gcMaxMs * 10) / 10,
        gcMajorCount,
        gcMajorMs: Math.round(gcMajorMs * 10) / 10,
      };
    },
  };
}

/**
 * The IPC messages every Node gateway of the bench answers: 'diag-reset',
 * 'diag' (the figures above) and, for bench/profile/run.ts, 'profile-start'
 * and 'profile-stop' { file }: a V8 CPU profile of the measured phase only
 * (node:inspector in this process), written as a .cpuprofile; for
 * bench/profile/gc-survival.ts, 'heap-sampling-start' and 'heap-sampling-stop'
 * { file }: a sampling heap profile of the objects that outlived a scavenge
 * (those collected by a minor GC are left out, those a major GC collected are
 * kept), written as a .heapprofile; and 'heap-snapshot' { file }.
 */
export function answerDiagMessages(diag: { reset(): void; read(): GatewayDiag }): void {
  let session: Session | undefined;
  process.on('message', (m: { type?: string; file?: string }) => {
    if (m.type === 'diag-reset') diag.reset();
    if (m.type === 'diag') tell({ type: 'diag', diag: diag.read() });
    if (m.type === 'profile-start') {
      session = new Session();
      session.connect();
      session.post('Profiler.enable', () =>
        session!.post('Profiler.start', () => tell({ type: 'profile-started' })),
      );
    }
    if (m.type === 'heap-snapshot' && m.file) {
      writeHeapSnapshot(m.file);
      tell({ type: 'heap-snapshot-written' });
    }
    if (m.type === 'heap-sampling-start') {
      session = new Session();
      session.connect();
      const params = {
        samplingInterval: 4096,
        includeObjectsCollectedByMajorGC: true,
        includeObjectsCollectedByMinorGC: false,
      };
      session.post('HeapProfiler.startSampling', params, () =>
        tell({ type: 'heap-sampling-started' }),
      );
    }
    if (m.type === 'heap-sampling-stop' && session && m.file) {
      const file = m.file;
      session.post('HeapProfiler.stopSampling', (err, res) => {
        if (!err) writeFileSync(file, JSON.stringify(res.profile));
        session?.disconnect();
        session = undefined;
        tell({ type: 'heap-sampling-stopped', error: err?.message });
      });
    }
    if (m.type === 'profile-stop' && session && m.file) {
      const file = m.file;
      session.post('Profiler.stop', (err, res) => {
        if (!err) writeFileSync(file, JSON.stringify(res.profile));
        session?.disconnect();
        session = undefined;
        tell({ type: 'profile-stopped', error: err?.message });
      });
    }
  });
}

/**
 * Client keep-alive as docs/gateway.md ("Running it well") deploys a gateway,
 * and as nginx (75 s) and HAProxy (`timeout client 60s`) keep it here: with
 * Node's default 5 s the server closed pooled client sockets the load
 * generator was reusing, and 2 requests of a scenario 4 run failed with
 * ECONNRESET (2026-12-02).
 */
export function keepClientsAlive(server: http.Server): void {
  server.keepAliveTimeout = 65_000;
  server.headersTimeout = 66_000;
}

/**
 * Serves a peer gateway's app (Express + a proxy) on loopback `port` (0: any
 * free one) with the diagnostics above, closes it (then `close`, its clients
 * to the backends) on shutdown, and tells the parent 'ready' with the port.
 * `serverOptions`: http.createServer's (the server-classes variant).
 */
export async function servePeerGateway(
  app: RequestListener,
  port = 0,
  close: () => Promise<unknown> = async () => undefined,
  serverOptions: http.ServerOptions = {},
): Promise<void> {
  const diag = startDiag();
  const server = http.createServer(serverOptions, app);
  keepClientsAlive(server);
  server.listen(port, '127.0.0.1');
  await new Promise<void>((resolve, reject) => {
    server.once('listening', resolve);
    server.once('error', reject);
  });
  answerDiagMessages(diag);
  onShutdown(async () => {
    await closeServer(server);
    await close();
  });
  tell({ type: 'ready', port: (server.address() as AddressInfo).port });
}
