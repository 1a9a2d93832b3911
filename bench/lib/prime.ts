import http from 'node:http';
import { httpGet } from './http-get';

/**
 * Warms the backends before the first measured row: every backend is a fresh
 * Node process (Express, the request tracker, the agent's stats route), and
 * whichever balancer ran first met code that had never run. On 2026-12-04 the
 * first row of run 1 was the worst of its three runs in scenario 8b (p99 65
 * ms against 24-25 ms, the other rows 23-26 ms; docs/bench.md, "Backends
 * primed"). A backend in production has been serving for a while, so each
 * gets `requests` GETs straight from the harness, `concurrency` at a time on
 * keep-alive connections and every `freshEvery`-th on a new connection (the
 * accept path), within `maxMs`. No balancer, gateway or agent metric is
 * involved beyond what a backend's own agent reports of that traffic, and the
 * engine drains the backends before the first run.
 */
export interface PrimeOptions {
  requests?: number;
  concurrency?: number;
  freshEvery?: number;
  maxMs?: number;
}

export interface PrimeResult {
  /** Answered requests per backend URL (any status: the code ran). */
  answered: Map<string, number>;
  failed: number;
  ms: number;
}

export async function primeBackends(urls: string[], opts: PrimeOptions = {}): Promise<PrimeResult> {
  const requests = opts.requests ?? 400;
  const concurrency = opts.concurrency ?? 4;
  const freshEvery = opts.freshEvery ?? 8;
  const deadline = Date.now() + (opts.maxMs ?? 3_000);
  const started = Date.now();
  const answered = new Map<string, number>();
  let failed = 0;
  // Any status counts: the backend's code ran.
  const one = (url: string, agent: http.Agent | false): Promise<void> =>
    httpGet(`${url}/prime`, 2_000, agent).then(
      () => {
        answered.set(url, (answered.get(url) ?? 0) + 1);
      },
      () => {
        failed++;
      },
    );
  await Promise.all(
    urls.map(async (url) => {
      const agent = new http.Agent({ keepAlive: true, maxSockets: concurrency });
      let next = 0;
      const worker = async (): Promise<void> => {
        while (next < requests && Date.now() < deadline) {
          const i = next++;
          await one(url, i % freshEvery === freshEvery - 1 ? false : agent);
        }
      };
      try {
        await Promise.all(Array.from({ length: concurrency }, worker));
      } finally {
        agent.destroy();
      }
    }),
  );
  return { answered, failed, ms: Date.now() - started };
}
