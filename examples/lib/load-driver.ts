/**
 * A small open-loop load generator for the quick start: sends GETs to one URL
 * at a fixed rate over loopback, never more than `maxOutstanding` at once
 * (beyond that it skips and counts, so a stuck gateway cannot make it pile up
 * memory), and counts per second who served each request (the backend's
 * `x-served-by` header, passed through by the gateway).
 */
import http from 'node:http';

export interface LoadDriverOptions {
  url: string;
  /** Requests per second (bounded: 1..5000). */
  ratePerSec: number;
  /** Requests outstanding at most (default 256). */
  maxOutstanding?: number;
  /** Per-request timeout, ms (default 10000). */
  timeoutMs?: number;
}

export interface LoadWindow {
  /** Responses per serving backend in this window. */
  servedBy: Map<string, number>;
  /** Responses by status class ('2xx', '5xx', ...). */
  statuses: Map<string, number>;
  /** Requests that failed without a response (connection refused, reset, timeout). */
  errors: number;
  /** Requests not sent because maxOutstanding were still open. */
  skipped: number;
  /** Latency of the responses, ms, sorted ascending. */
  latenciesMs: number[];
}

export interface LoadDriver {
  /** Counts since the previous call (or the start), and resets them. */
  takeWindow(): LoadWindow;
  /** Totals since the start. */
  readonly totals: { sent: number; responses: number; ok: number; errors: number; skipped: number };
  readonly outstanding: number;
  /** Stops sending; resolves when outstanding requests have finished (or timed out). */
  stop(): Promise<void>;
}

/** Scheduling tick, ms: each tick sends rate × tick / 1000 requests (fractions carried over). */
const TICK_MS = 10;

function emptyWindow(): LoadWindow {
  return { servedBy: new Map(), statuses: new Map(), errors: 0, skipped: 0, latenciesMs: [] };
}

export function startLoadDriver(opts: LoadDriverOptions): LoadDriver {
  if (!(opts.ratePerSec >= 1 && opts.ratePerSec <= 5000))
    throw new RangeError('ratePerSec must be 1..5000');
  const maxOutstanding = opts.maxOutstanding ?? 256;
  const timeoutMs = opts.timeoutMs ?? 10_000;
  const target = new URL(opts.url);
  const agent = new http.Agent({ keepAlive: true, maxSockets: maxOutstanding });
  let window = emptyWindow();
  const totals = { sent: 0, responses: 0, ok: 0, errors: 0, skipped: 0 };
  let outstanding = 0;
  let credit = 0;
  let stopped = false;
  let onIdle: (() => void) | undefined;

  const finished = (): void => {
    outstanding--;
    if (outstanding === 0 && onIdle) onIdle();
  };

  const sendOne = (): void => {
    if (outstanding >= maxOutstanding) {
      window.skipped++;
      totals.skipped++;
      return;
    }
    outstanding++;
    totals.sent++;
    const startMs = performance.now();
    let done = false;
    const req = http.get(
      {
        host: target.hostname,
        port: target.port,
        path: target.pathname + target.search,
        agent,
        timeout: timeoutMs,
      },
      (res) => {
        res.resume();
        res.on('end', () => {
          if (done) return;
          done = true;
          const cls = `${Math.floor((res.statusCode ?? 0) / 100)}xx`;
          window.statuses.set(cls, (window.statuses.get(cls) ?? 0) + 1);
          const by = res.headers['x-served-by'];
          if (typeof by === 'string') window.servedBy.set(by, (window.servedBy.get(by) ?? 0) + 1);
          window.latenciesMs.push(performance.now() - startMs);
          totals.responses++;
          if (cls === '2xx') totals.ok++;
          finished();
        });
      },
    );
    req.on('timeout', () => req.destroy(new Error('timeout')));
    req.on('error', () => {
      if (done) return;
      done = true;
      window.errors++;
      totals.errors++;
      finished();
    });
  };

  const timer = setInterval(() => {
    credit += (opts.ratePerSec * TICK_MS) / 1000;
    while (credit >= 1) {
      credit -= 1;
      sendOne();
    }
  }, TICK_MS);

  return {
    takeWindow() {
      const w = window;
      window = emptyWindow();
      w.latenciesMs.sort((a, b) => a - b);
      return w;
    },
    totals,
    get outstanding() {
      return outstanding;
    },
    async stop() {
      if (stopped) return;
      stopped = true;
      clearInterval(timer);
      if (outstanding > 0) {
        await new Promise<void>((resolve) => {
          onIdle = resolve;
          // Bounded: requests time out after timeoutMs anyway; do not wait longer than that.
          setTimeout(resolve, timeoutMs + 1000).unref();
        });
      }
      agent.destroy();
    },
  };
}

/** The q-quantile (0..1) of ascending values, undefined when empty. */
export function quantile(sortedAsc: readonly number[], q: number): number | undefined {
  if (sortedAsc.length === 0) return undefined;
  return sortedAsc[Math.min(sortedAsc.length - 1, Math.floor(q * sortedAsc.length))];
}
