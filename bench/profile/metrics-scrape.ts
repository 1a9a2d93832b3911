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
 * Prints one line per run; the first run of each N includes compilation.
 * docs/observability.md, "Scrape cost".
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import { performance } from 'node:perf_hooks';
import { loadBalance, metricsHandler } from '@loadwise/gateway-plugin';
import { internals } from '@loadwise/gateway-plugin/internals';

function arg(name: string, fallback: string): string {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 && process.argv[i + 1] !== undefined ? process.argv[i + 1]! : fallback;
}

/** One scrape through the handler, with the longest synchronous block seen meanwhile. */
async function handlerScrape(
  handler: ReturnType<typeof metricsHandler>,
): Promise<{ ms: number; longestBlockMs: number; bytes: number }> {
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
  const body = await new Promise<string>((resolve, reject) => {
    const res = { statusCode: 0, setHeader() {}, end: (b: string) => resolve(b) };
    handler(
      { method: 'GET', headers: {} } as IncomingMessage,
      res as unknown as ServerResponse,
      reject,
    );
  });
  const ms = performance.now() - t0;
  stop = true;
  longest = Math.max(longest, performance.now() - last);
  return { ms, longestBlockMs: longest, bytes: Buffer.byteLength(body) };
}

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
    for (let r = 0; r < runs; r++) {
      const t0 = performance.now();
      await registry.metrics();
      const direct = performance.now() - t0;
      const h = await handlerScrape(handler);
      console.log(
        `${n} backends, run ${r + 1}: registry.metrics() ${direct.toFixed(1)} ms; ` +
          `metricsHandler ${h.ms.toFixed(1)} ms, longest block ${h.longestBlockMs.toFixed(1)} ms, ` +
          `${(h.bytes / 1e6).toFixed(2)} MB`,
      );
    }
    await lb.close({ graceMs: 0 });
  }
}

main().catch((err: unknown) => {
  console.error(err);
  process.exit(1);
});
