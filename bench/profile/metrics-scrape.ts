/**
 * `npm run bench:metrics-scrape [-- --backends 1000,3000,10000] [--runs 5]`
 *
 * What one `/_lb/metrics` scrape costs the gateway's event loop at N
 * backends, in process and without a network: N configured backends (none
 * reachable, health checks off), each with a pick and a response counted as
 * traffic would, then per run `registry.metrics()` (prom-client's own path,
 * one synchronous block) and a scrape through `metricsHandler` (what
 * `metricsPath` serves: written in chunks with pauses for the event loop).
 * For the handler: its total time and its longest synchronous block (the
 * longest gap between two turns of a setImmediate ticker running beside it).
 * Then the same handler served over a loopback socket (an http.Server and an
 * http.get client in this process), which adds the write of the text to the
 * socket: its total time to the last byte read, its longest block.
 * Prints one line per run; the first run of each N includes compilation.
 * docs/observability.md, "Scrape cost".
 */
import { createServer, get, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { performance } from 'node:perf_hooks';
import { loadBalance, metricsHandler } from '@loadwise/gateway-plugin';
import { internals } from '@loadwise/gateway-plugin/internals';

function arg(name: string, fallback: string): string {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 && process.argv[i + 1] !== undefined ? process.argv[i + 1]! : fallback;
}

interface Timed {
  ms: number;
  longestBlockMs: number;
  bytes: number;
}

/** `run()` timed, with the longest synchronous block (setImmediate ticker) seen meanwhile. */
async function timed(run: () => Promise<number>): Promise<Timed> {
  let longest = 0;
  let last = performance.now();
  let stop = false;
  const tick = (): void => {
    const now = performance.now();
    longest = Math.max(longest, now - last);
    last = now;
    if (!stop) setImmediate(tick);
  };
  setImmediate(tick);
  const t0 = performance.now();
  const bytes = await run();
  const ms = performance.now() - t0;
  stop = true;
  longest = Math.max(longest, performance.now() - last);
  return { ms, longestBlockMs: longest, bytes };
}

/** One scrape through the handler with a response object that keeps what it is given. */
function inProcessScrape(handler: ReturnType<typeof metricsHandler>): Promise<Timed> {
  return timed(
    () =>
      new Promise<number>((resolve, reject) => {
        let bytes = 0;
        const count = (chunk: unknown): void => {
          if (typeof chunk === 'string') bytes += Buffer.byteLength(chunk);
        };
        // Both shapes of handler: one that ends with the whole text, one that writes its parts.
        const res = {
          statusCode: 0,
          headersSent: false,
          writableEnded: false,
          setHeader() {},
          writeHead() {
            res.headersSent = true;
          },
          on() {},
          once() {},
          off() {},
          write(chunk: string) {
            res.headersSent = true;
            count(chunk);
            return true;
          },
          end(chunk?: string) {
            count(chunk);
            res.writableEnded = true;
            resolve(bytes);
          },
        };
        handler(
          { method: 'GET', headers: {} } as IncomingMessage,
          res as unknown as ServerResponse,
          reject,
        );
      }),
  );
}

/** One scrape of `url` over the socket: the bytes of the body, read to its end. */
function socketScrape(url: string): Promise<Timed> {
  return timed(
    () =>
      new Promise<number>((resolve, reject) => {
        get(url, (res) => {
          let bytes = 0;
          res.on('data', (chunk: Buffer) => (bytes += chunk.length));
          res.on('end', () =>
            res.statusCode === 200 ? resolve(bytes) : reject(new Error(`status ${res.statusCode}`)),
          );
          res.on('error', reject);
        }).on('error', reject);
      }),
  );
}

const fmt = (t: Timed): string =>
  `${t.ms.toFixed(1)} ms, longest block ${t.longestBlockMs.toFixed(1)} ms, ${(t.bytes / 1e6).toFixed(2)} MB`;

async function main(): Promise<void> {
  const sizes = arg('backends', '1000,3000,10000').split(',').map(Number);
  const runs = Number(arg('runs', '5'));
  for (const n of sizes) {
    const backends = Array.from({ length: n }, (_, i) => ({
      id: `api-${i}`,
      url: `http://127.0.0.1:${1024 + (i % 60000)}`,
    }));
    const lb = loadBalance({
      backends,
      healthCheck: false,
      warmUp: false,
      overload: false,
      logger: { info() {}, warn() {}, error() {} },
    });
    const metrics = internals(lb).metrics;
    for (const { id } of backends) {
      metrics.onPick(id, 'load-aware');
      metrics.onResponse(id, 200, 5);
    }
    const registry = lb.balancer.metricsRegistry;
    const handler = metricsHandler(registry);
    const server = createServer((req, res) => handler(req, res));
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/metrics`;
    for (let r = 0; r < runs; r++) {
      const t0 = performance.now();
      await registry.metrics();
      const direct = performance.now() - t0;
      const h = await inProcessScrape(handler);
      const s = await socketScrape(url);
      console.log(
        `${n} backends, run ${r + 1}: registry.metrics() ${direct.toFixed(1)} ms; ` +
          `metricsHandler ${fmt(h)}; over a socket ${fmt(s)}`,
      );
    }
    await new Promise((resolve) => server.close(resolve));
    await lb.close({ graceMs: 0 });
  }
}

main().catch((err: unknown) => {
  console.error(err);
  process.exit(1);
});
