/**
 * Bounded closed-loop load for the end-to-end tests: `concurrency` clients
 * send GETs back to back over loopback until `total` requests were sent or
 * stop() is called. Every request is accounted for: a status, the backend that
 * served it (the example backend's `x-served-by` header, passed through by the
 * gateway), or a client-side error.
 */
import http from 'node:http';

export interface LoadResult {
  sent: number;
  /** Responses by status code. */
  statuses: Map<number, number>;
  /** 2xx responses per serving backend. */
  servedBy: Map<string, number>;
  /** Requests that got no response (refused, reset, client timeout). */
  errors: number;
  /** Slowest response per status code, ms (from sending the request to the end of the response). */
  maxLatencyMs: Map<number, number>;
  /** Headers of the non-2xx responses (first 20), to explain failures. */
  failures: { status: number; headers: http.IncomingHttpHeaders; body: string }[];
}

export interface LoadOptions {
  url: string;
  /** Requests to send at most (the bound). */
  total: number;
  /** Requests outstanding at once (default 8). */
  concurrency?: number;
  /** Client-side timeout per request, ms (default 15000: the gateway's own timeouts should answer first). */
  timeoutMs?: number;
  method?: string;
  /** Pause between one client's requests, ms (default 0: back to back). */
  thinkMs?: number;
}

export interface RunningLoad {
  readonly result: LoadResult;
  /** Stops sending new requests; resolves when the outstanding ones finished. */
  stop(): Promise<LoadResult>;
  /** Resolves when `total` requests were sent and answered. */
  done: Promise<LoadResult>;
}

export function ok(r: LoadResult): number {
  let n = 0;
  for (const [status, count] of r.statuses) if (status >= 200 && status < 300) n += count;
  return n;
}

export function failed(r: LoadResult): number {
  return r.sent - ok(r);
}

export function startLoad(opts: LoadOptions): RunningLoad {
  const agent = new http.Agent({ keepAlive: true, maxSockets: opts.concurrency ?? 8 });
  const target = new URL(opts.url);
  const result: LoadResult = {
    sent: 0,
    statuses: new Map(),
    servedBy: new Map(),
    errors: 0,
    maxLatencyMs: new Map(),
    failures: [],
  };
  let stopped = false;

  const one = (): Promise<void> =>
    new Promise((resolve) => {
      const startMs = performance.now();
      const req = http.request(
        {
          host: target.hostname,
          port: target.port,
          path: target.pathname + target.search,
          method: opts.method ?? 'GET',
          agent,
          timeout: opts.timeoutMs ?? 15_000,
        },
        (res) => {
          let body = '';
          res.setEncoding('utf8');
          res.on('data', (chunk: string) => {
            if (body.length < 500) body += chunk;
          });
          res.on('end', () => {
            const status = res.statusCode ?? 0;
            result.statuses.set(status, (result.statuses.get(status) ?? 0) + 1);
            const latencyMs = performance.now() - startMs;
            if (latencyMs > (result.maxLatencyMs.get(status) ?? -1))
              result.maxLatencyMs.set(status, latencyMs);
            if (status >= 200 && status < 300) {
              const by = String(res.headers['x-served-by'] ?? '?');
              result.servedBy.set(by, (result.servedBy.get(by) ?? 0) + 1);
            } else if (result.failures.length < 20) {
              result.failures.push({ status, headers: res.headers, body });
            }
            resolve();
          });
          res.on('error', () => {
            result.errors++;
            resolve();
          });
        },
      );
      req.on('timeout', () => req.destroy(new Error('client timeout')));
      req.on('error', () => {
        result.errors++;
        resolve();
      });
      req.end();
    });

  const client = async (): Promise<void> => {
    while (!stopped && result.sent < opts.total) {
      result.sent++;
      await one();
      if (opts.thinkMs) await new Promise((r) => setTimeout(r, opts.thinkMs));
    }
  };
  const done = Promise.all(Array.from({ length: opts.concurrency ?? 8 }, client)).then(() => {
    agent.destroy();
    return result;
  });
  return {
    result,
    done,
    stop() {
      stopped = true;
      return done;
    },
  };
}

/** Sends `total` requests and waits for all of them. */
export function fire(opts: LoadOptions): Promise<LoadResult> {
  return startLoad(opts).done;
}

/** Shares of 2xx responses per backend, 0..1. */
export function shares(r: LoadResult): Record<string, number> {
  let total = 0;
  for (const n of r.servedBy.values()) total += n;
  const out: Record<string, number> = {};
  for (const [id, n] of r.servedBy) out[id] = total === 0 ? 0 : n / total;
  return out;
}
