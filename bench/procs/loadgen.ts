/**
 * The load generator, alone in its process.
 *
 * Open loop: Poisson arrivals at a fixed rate, each request's latency measured
 * from its *scheduled* send time, so a stall (in the gateway, the socket pool or
 * this process) counts against every request it delayed instead of silently
 * lowering the offered rate (coordinated omission, Gil Tene). Closed loop: a
 * fixed number of workers each sending the next request when the last ends.
 *
 * Requests sent during warm-up are not recorded. Every run is bounded in time:
 * scheduling stops at warmup + duration, and outstanding requests are given up
 * after timeoutMs (an error).
 */
import http from 'node:http';
import { monitorEventLoopDelay, performance } from 'node:perf_hooks';
import { summarize, type LatencySummary } from '../lib/stats';
import { fail, onShutdown, readConfig, tell } from './child';

export interface LoadgenConfig {
  /** Full URLs; requests alternate over them (two gateways in scenario 5). */
  targets: string[];
  mode: 'open' | 'closed';
  /** Open loop: arrivals per second. */
  rate?: number;
  /** Closed loop: concurrent workers. */
  concurrency?: number;
  warmupMs: number;
  durationMs: number;
  /** Keep-alive sockets per target; beyond, requests wait in the pool (and that wait counts). */
  maxSockets: number;
  timeoutMs: number;
  /** Width of the time-series windows (shares and p99 over time). */
  windowMs: number;
  /** Header naming the backend that served a response. */
  backendHeader?: string;
}

export interface SeriesWindow {
  /** Window start, ms after the end of warm-up. */
  tMs: number;
  counts: Record<string, number>;
  errors: number;
  /** The window's errors by status or error code (ECONNREFUSED, ECONNRESET, timeout, 503...). */
  errorCodes: Record<string, number>;
  p99Ms: number;
}

export interface LoadgenResult {
  type: 'result';
  mode: 'open' | 'closed';
  offeredRate?: number;
  sent: number;
  ok: number;
  errors: Record<string, number>;
  errorCount: number;
  latency: LatencySummary;
  /** OK responses per second over the measured span. */
  throughputRps: number;
  /** Share of OK responses per backend id (sums to 1). */
  shares: Record<string, number>;
  /** Latency of OK responses per backend id (where a tail comes from). */
  perBackend: Record<string, LatencySummary>;
  series: SeriesWindow[];
  /** Epoch ms when the measured phase began (after warm-up). */
  measureStartEpochMs: number;
  /** How late this process sent open-loop requests vs schedule, p99 ms (generator health). */
  sendLagP99Ms: number;
  eventLoopDelayP99Ms: number;
  /** Latency of OK responses per target, in `targets` order (each gateway's own p99). */
  perTarget: LatencySummary[];
}

function expSample(ratePerMs: number): number {
  return -Math.log(1 - Math.random()) / ratePerMs;
}

async function main(): Promise<void> {
  const cfg = readConfig<LoadgenConfig>();
  const header = cfg.backendHeader ?? 'x-backend-id';
  const agents = cfg.targets.map(
    () =>
      new http.Agent({
        keepAlive: true,
        maxSockets: cfg.maxSockets,
        maxFreeSockets: cfg.maxSockets,
      }),
  );
  const urls = cfg.targets.map((t) => new URL(t));
  onShutdown(() => agents.forEach((a) => a.destroy()));

  const latencies: number[] = [];
  const targetLatencies: number[][] = cfg.targets.map(() => []);
  const sendLags: number[] = [];
  const errors: Record<string, number> = {};
  const perBackend: Record<string, number> = {};
  const backendLatencies: Record<string, number[]> = {};
  const windows = new Map<
    number,
    {
      counts: Record<string, number>;
      errors: number;
      errorCodes: Record<string, number>;
      lat: number[];
    }
  >();
  let sent = 0;
  let ok = 0;
  let errorCount = 0;
  let outstanding = 0;
  let next = 0;
  let lastEndMs = 0;

  const eld = monitorEventLoopDelay({ resolution: 10 });
  const t0 = performance.now();
  const measureFromMs = t0 + cfg.warmupMs;
  const stopAtMs = measureFromMs + cfg.durationMs;
  const measureStartEpochMs = Date.now() + cfg.warmupMs;

  let drained: () => void = () => undefined;
  const allDone = new Promise<void>((resolve) => (drained = resolve));
  let scheduling = true;

  const windowOf = (
    scheduledMs: number,
  ): {
    counts: Record<string, number>;
    errors: number;
    errorCodes: Record<string, number>;
    lat: number[];
  } => {
    const idx = Math.floor((scheduledMs - measureFromMs) / cfg.windowMs);
    let w = windows.get(idx);
    if (!w) windows.set(idx, (w = { counts: {}, errors: 0, errorCodes: {}, lat: [] }));
    return w;
  };

  const record = (
    scheduledMs: number,
    target: number,
    status: number | string,
    backend: string | undefined,
  ): void => {
    const endMs = performance.now();
    if (scheduledMs >= measureFromMs) {
      const latencyMs = endMs - scheduledMs;
      const w = windowOf(scheduledMs);
      if (status === 200) {
        ok++;
        latencies.push(latencyMs);
        targetLatencies[target]!.push(latencyMs);
        w.lat.push(latencyMs);
        const id = backend ?? 'unknown';
        perBackend[id] = (perBackend[id] ?? 0) + 1;
        (backendLatencies[id] ??= []).push(latencyMs);
        w.counts[id] = (w.counts[id] ?? 0) + 1;
      } else {
        errorCount++;
        w.errors++;
        const key = String(status);
        errors[key] = (errors[key] ?? 0) + 1;
        w.errorCodes[key] = (w.errorCodes[key] ?? 0) + 1;
      }
      lastEndMs = Math.max(lastEndMs, endMs);
    }
  };

  const send = (scheduledMs: number, onEnd?: () => void): void => {
    const i = next++ % urls.length;
    const url = urls[i]!;
    if (scheduledMs >= measureFromMs) sent++;
    outstanding++;
    let finished = false;
    const finish = (status: number | string, backend?: string): void => {
      if (finished) return;
      finished = true;
      outstanding--;
      record(scheduledMs, i, status, backend);
      onEnd?.();
      if (!scheduling && outstanding === 0) drained();
    };
    const req = http.request(
      {
        host: url.hostname,
        port: url.port,
        path: url.pathname + url.search,
        agent: agents[i],
        method: 'GET',
      },
      (res) => {
        const backend = res.headers[header];
        res.resume();
        res.on('end', () =>
          finish(res.statusCode ?? 0, typeof backend === 'string' ? backend : undefined),
        );
        res.on('error', (e: NodeJS.ErrnoException) => finish(e.code ?? 'response-error'));
      },
    );
    // The timeout covers the whole request, including time queued for a socket.
    const timer = setTimeout(
      () => {
        req.destroy();
        finish('timeout');
      },
      cfg.timeoutMs - Math.max(0, performance.now() - scheduledMs),
    );
    req.on('close', () => clearTimeout(timer));
    req.on('error', (e: NodeJS.ErrnoException) => finish(e.code ?? 'request-error'));
    req.end();
  };

  eld.enable();
  if (cfg.mode === 'open') {
    const ratePerMs = (cfg.rate ?? 0) / 1000;
    if (!(ratePerMs > 0)) throw new Error('open loop needs rate > 0');
    let nextAtMs = t0 + expSample(ratePerMs);
    await new Promise<void>((resolve) => {
      const tick = (): void => {
        const now = performance.now();
        while (nextAtMs <= now && nextAtMs < stopAtMs) {
          if (nextAtMs >= measureFromMs) sendLags.push(now - nextAtMs);
          send(nextAtMs);
          nextAtMs += expSample(ratePerMs);
        }
        if (nextAtMs >= stopAtMs) return resolve();
        // setTimeout(1) wakes every ~1 ms; lateness is measured (sendLagP99Ms), not hidden.
        setTimeout(tick, Math.max(0, Math.min(1, nextAtMs - performance.now())));
      };
      tick();
    });
  } else {
    const workers = cfg.concurrency ?? 1;
    await new Promise<void>((resolve) => {
      let running = workers;
      const loop = (): void => {
        const now = performance.now();
        if (now >= stopAtMs) {
          if (--running === 0) resolve();
          return;
        }
        send(now, loop);
      };
      for (let w = 0; w < workers; w++) loop();
    });
  }
  scheduling = false;
  if (outstanding > 0) await allDone;
  eld.disable();

  // Open loop: OK responses per second of offered load (the rate actually
  // served; slow ones show in the latency). Closed loop: over the span until
  // the last response.
  const spanMs =
    cfg.mode === 'open' ? cfg.durationMs : Math.max(lastEndMs, stopAtMs) - measureFromMs;
  const shares: Record<string, number> = {};
  for (const [id, n] of Object.entries(perBackend)) shares[id] = ok ? n / ok : 0;
  const series: SeriesWindow[] = [...windows.entries()]
    .sort((a, b) => a[0] - b[0])
    .filter(([idx]) => idx >= 0)
    .map(([idx, w]) => ({
      tMs: idx * cfg.windowMs,
      counts: w.counts,
      errors: w.errors,
      errorCodes: w.errorCodes,
      p99Ms: summarize(w.lat).p99Ms,
    }));
  const result: LoadgenResult = {
    type: 'result',
    mode: cfg.mode,
    offeredRate: cfg.rate,
    sent,
    ok,
    errors,
    errorCount,
    latency: summarize(latencies),
    throughputRps: Math.round((ok / spanMs) * 1000 * 10) / 10,
    shares,
    perBackend: Object.fromEntries(
      Object.entries(backendLatencies).map(([id, l]) => [id, summarize(l)]),
    ),
    series,
    measureStartEpochMs,
    sendLagP99Ms: summarize(sendLags).p99Ms,
    eventLoopDelayP99Ms: Math.round(eld.percentile(99) / 1e4) / 100,
    perTarget: targetLatencies.map((l) => summarize(l)),
  };
  agents.forEach((a) => a.destroy());
  tell(result as unknown as Record<string, unknown>);
}

main().catch(fail);
