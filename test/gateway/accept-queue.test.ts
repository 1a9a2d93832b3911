/**
 * The gateway sheds before the kernel drops (docs/gateway.md, "Accept queue"):
 * connections that waited in the listen socket's accept queue while the
 * gateway's event loop was busy get 503 LW_GW_OVERLOADED + Retry-After, each
 * an answer, none dropped. A real server with a listen backlog of 8; its event
 * loop is held by the backend (in this process) until 8 connections from a
 * worker thread wait in the kernel's queue, read from /proc/net/tcp: a
 * condition, not a duration. Linux only (the signal is absent elsewhere).
 */
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { Worker } from 'node:worker_threads';
import express from 'express';
import {
  loadBalance,
  type BalancerEvents,
  type LoadBalancerMiddleware,
  type Logger,
} from '@loadwise/gateway-plugin';
import { readListenDepth } from '@loadwise/gateway-plugin/internals';
import { send, startBackend, type TestServer } from '../kit/http';
import { quietLogger } from '../kit/gateway';

const BACKLOG = 8;
const SAMPLE_MS = 10;

/**
 * Opens `n` connections to `port` (`agent: false`: one each), one GET on each, and
 * posts every answer's status, Retry-After and body, or the error.
 */
const CLIENTS = `
const { workerData, parentPort } = require('node:worker_threads');
const http = require('node:http');
const answers = [];
const done = (a) => {
  answers.push(a);
  if (answers.length === workerData.n) parentPort.postMessage(answers);
};
for (let i = 0; i < workerData.n; i++) {
  const req = http.get({ host: '127.0.0.1', port: workerData.port, path: '/queued', agent: false }, (res) => {
    let body = '';
    res.setEncoding('utf8');
    res.on('data', (d) => (body += d));
    res.on('end', () => done({ status: res.statusCode, retryAfter: res.headers['retry-after'], body }));
  });
  req.on('error', (e) => done({ error: e.code }));
}
`;

interface Answer {
  status?: number;
  retryAfter?: string;
  body?: string;
  error?: string;
}

/** Blocks this thread until `n` connections wait to be accepted on `port` (bounded). */
function holdUntilQueued(port: number, n: number): number {
  const sleeper = new Int32Array(new SharedArrayBuffer(4));
  const start = performance.now();
  let depth = 0;
  for (let i = 0; i < 20_000 && depth < n; i++) {
    depth = readListenDepth('/proc/net/tcp', port) ?? 0;
    if (depth < n) Atomics.wait(sleeper, 0, 0, 1);
  }
  // The sampler's interval is due by the time the loop turns again, and so is
  // its next read (a read of d ms defers the next by 100 d, accept-queue.ts:
  // 300 ms covers a read of 3 ms, one preempted on a busy machine).
  while (performance.now() - start < 300) Atomics.wait(sleeper, 0, 0, 1);
  return depth;
}

const linux = process.platform === 'linux' ? describe : describe.skip;

linux('accept-queue shedding: a real listen backlog filled while the loop is busy', () => {
  let backend: TestServer;
  let server: http.Server | undefined;
  let lb: LoadBalancerMiddleware | undefined;
  let worker: Worker | undefined;
  let queuedDepth = 0;
  let answers: Promise<Answer[]>;

  beforeAll(async () => {
    // The first request through the gateway reaches this backend and holds the
    // shared event loop while the worker's connections queue at the gateway.
    backend = await startBackend('held', (req, res) => {
      if (req.url !== '/hold' || worker !== undefined) return void res.end('ok');
      // Held from the check phase, not from this I/O callback: the loop's next
      // turn then starts with its timers (the sampler, due) before its poll
      // accepts the queued connections. Held here, other I/O of the same
      // poll could run first (1 run in 8 on a busy machine got 200s).
      setImmediate(() => {
        const port = (server!.address() as AddressInfo).port;
        worker = new Worker(CLIENTS, { eval: true, workerData: { port, n: BACKLOG } });
        answers = new Promise((resolve, reject) => {
          worker!.once('message', resolve);
          worker!.once('error', reject);
        });
        queuedDepth = holdUntilQueued(port, BACKLOG);
        res.end('ok');
      });
    });
  });
  afterEach(async () => {
    await worker?.terminate();
    worker = undefined;
    await lb?.close({ graceMs: 0 });
    lb = undefined;
    if (server) await new Promise((r) => server!.close(r));
    server = undefined;
  });
  afterAll(() => backend.close());

  async function start(acceptQueue: false | object, logger: Logger = quietLogger) {
    const events: BalancerEvents['accept-queue'][0][] = [];
    lb = loadBalance({
      backends: [{ id: 'held', url: backend.url }],
      healthCheck: false,
      warmUp: false,
      overload: false,
      logger,
      acceptQueue,
    });
    lb.balancer.on('accept-queue', (e) => events.push(e));
    const app = express();
    app.use(lb);
    server = http.createServer(app);
    await new Promise<void>((r) =>
      server!.listen({ port: 0, host: '127.0.0.1', backlog: BACKLOG }, r),
    );
    const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
    const first = await send(`${url}/hold`);
    expect(first.status).toBe(200);
    expect(queuedDepth).toBe(BACKLOG);
    return { events, answers: await answers };
  }

  it('answers every queued connection 503 LW_GW_OVERLOADED + Retry-After', async () => {
    const { events, answers } = await start({
      backlog: BACKLOG,
      shedAt: 0.5,
      resumeAt: 0,
      holdMs: 60_000,
      // All of them (the default sheds at most half).
      maxShare: 1,
      sampleIntervalMs: SAMPLE_MS,
    });
    expect(answers).toHaveLength(BACKLOG);
    for (const a of answers) {
      expect(a).toMatchObject({ status: 503, retryAfter: '1' });
      expect(a.body).toContain('LW_GW_OVERLOADED');
    }
    expect(events).toEqual([{ shedding: true, depth: BACKLOG, limit: BACKLOG }]);
    const snap = lb!.balancer.snapshot();
    expect(snap.overloaded).toBe(true);
    expect(snap.acceptQueueDepth).toBeGreaterThanOrEqual(0);
    const metrics = await lb!.balancer.metricsRegistry.metrics();
    expect(metrics).toContain(`loadwise_shed_total{reason="overloaded"} ${BACKLOG}`);
  }, 30_000);

  it('says once that the server listens with a larger backlog than acceptQueue.backlog', async () => {
    // Told 4, listening with 8: the 8 queued connections are more than Linux queues for 4
    // (backlog + 1), so the configured backlog is wrong and the guard shed from 2 of them.
    const warnings: Array<{ fields: unknown; msg: string }> = [];
    const logger: Logger = {
      ...quietLogger,
      warn: (fields: unknown, msg?: string) => warnings.push({ fields, msg: msg ?? '' }),
    };
    const { answers } = await start(
      { backlog: 4, shedAt: 0.5, resumeAt: 0, holdMs: 60_000, sampleIntervalMs: SAMPLE_MS },
      logger,
    );
    expect(answers).toHaveLength(BACKLOG);
    const lines = warnings.filter(
      (w) => (w.fields as { event?: string }).event === 'accept-queue-backlog',
    );
    expect(lines).toHaveLength(1);
    expect(lines[0]!.fields).toMatchObject({ depth: BACKLOG, limit: 4 });
    expect(lines[0]!.msg).toContain('Set acceptQueue.backlog to the backlog you listen with');
  }, 30_000);

  it('control: without the signal the same queued connections are proxied (200, late)', async () => {
    const { events, answers } = await start(false);
    expect(answers).toEqual(Array.from({ length: BACKLOG }, () => ({ status: 200, body: 'ok' })));
    expect(events).toEqual([]);
    expect(lb!.balancer.snapshot().acceptQueueDepth).toBeNull();
  }, 30_000);
});
