import { connect, type AddressInfo, type Socket } from 'node:net';
import { createServer, type Server, type ServerResponse } from 'node:http';
import express from 'express';
import { Registry } from 'prom-client';
import { metricsHandler, statusHandler } from './handlers';
import { createGatewayMetrics } from './metrics';
import type { BalancerSnapshot } from './snapshot';
import { STATUS_STEP_BACKENDS, StatusBodies } from './status-body';

const SNAPSHOT: BalancerSnapshot = {
  takenAt: '2026-01-01T00:00:00.000Z',
  service: null,
  strategy: 'load-aware',
  panic: false,
  saturationQueueLength: 0,
  openWebSockets: 0,
  openStreams: 0,
  requestBufferBytes: 0,
  inFlight: 0,
  eventLoopDelayMs: 1.5,
  overloaded: false,
  acceptQueueDepth: 0,
  brokerConnected: true,
  trafficWindowMs: 10_000,
  backends: [
    {
      id: 'a',
      url: 'http://127.0.0.1:9/',
      origin: 'config',
      weight: 1,
      state: 'healthy',
      stateReason: null,
      inFlight: 0,
      latencyMs: 3,
      expectedWaitMs: 3,
      serviceTimeSource: 'local',
      cpuThroughputRps: null,
      reportAgeMs: 200,
      reportFresh: true,
      signedBy: null,
      lastReport: null,
      trafficShare: 1,
      windowRequests: 10,
      slowStartFactor: 1,
      ejections: 0,
      requestsTotal: 10,
      failuresTotal: 0,
    },
  ],
};

let server: Server;
let base: string;
const registry = new Registry();
const metrics = createGatewayMetrics({ registry, getSnapshot: () => SNAPSHOT });
/** The gateway's families, then one of the app's that fails to collect. */
const brokenRegistry = new Registry();
createGatewayMetrics({ registry: brokenRegistry, getSnapshot: () => SNAPSHOT });
brokenRegistry.registerMetric({
  name: 'app_broken',
  help: 'fails',
  type: 'gauge',
  aggregator: 'sum',
  get: () => Promise.reject(new Error('collect failed')),
  reset() {},
} as unknown as Parameters<Registry['registerMetric']>[0]);
const errorsHandled: unknown[] = [];

beforeAll(async () => {
  const app = express();
  app.get('/open/status', statusHandler({ getSnapshot: () => SNAPSHOT }));
  app.all('/closed/status', statusHandler({ getSnapshot: () => SNAPSHOT, token: 's3cret' }));
  app.get(
    '/broken/status',
    statusHandler({
      getSnapshot: () => {
        throw new Error('boom');
      },
    }),
  );
  const other: BalancerSnapshot = { ...SNAPSHOT, service: 'orders', backends: [] };
  app.get(
    '/all/status',
    statusHandler({
      balancers: [
        { snapshot: () => ({ ...SNAPSHOT, service: 'users' }) },
        { balancer: { snapshot: () => other } },
      ],
      token: 's3cret',
    }),
  );
  app.get('/metrics', metricsHandler(registry));
  app.get('/closed/metrics', metricsHandler(registry, { token: 's3cret' }));
  app.get('/broken/metrics', metricsHandler(brokenRegistry));
  // Express's default error handler would print the stack; answer 500 quietly instead.
  app.use(
    (err: unknown, _req: express.Request, res: express.Response, next: express.NextFunction) => {
      errorsHandled.push(err);
      if (res.headersSent) return next(err);
      res.status(500).json({ error: 'handled' });
    },
  );
  server = app.listen(0, '127.0.0.1');
  await new Promise<void>((resolve) => server.once('listening', resolve));
  base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
});

afterAll(async () => {
  await new Promise<void>((resolve) => server.close(() => resolve()));
});

describe('statusHandler', () => {
  it('serves the snapshot as JSON, not cached', async () => {
    const res = await fetch(`${base}/open/status`);
    expect(res.status).toBe(200);
    expect(res.headers.get('content-type')).toMatch(/^application\/json/);
    expect(res.headers.get('cache-control')).toBe('no-store');
    expect(await res.json()).toEqual(SNAPSHOT);
  });

  it.each([
    ['no header', undefined],
    ['wrong token', 'Bearer nope'],
    ['longer token', 'Bearer s3cret-and-more'],
    ['wrong scheme', 'Basic s3cret'],
    ['empty bearer', 'Bearer '],
  ])('answers 401 with %s', async (_label, authorization) => {
    const res = await fetch(`${base}/closed/status`, {
      headers: authorization ? { authorization } : {},
    });
    expect(res.status).toBe(401);
    expect(res.headers.get('www-authenticate')).toMatch(/^Bearer/);
    expect(await res.text()).not.toContain('127.0.0.1');
  });

  it.each(['Bearer s3cret', 'bearer s3cret'])('serves with %j', async (authorization) => {
    const res = await fetch(`${base}/closed/status`, { headers: { authorization } });
    expect(res.status).toBe(200);
    expect(((await res.json()) as BalancerSnapshot).backends[0]!.id).toBe('a');
  });

  it.each([
    [
      "X-Loadwise-Token next to the app's own Authorization",
      { 'x-loadwise-token': 's3cret', authorization: 'Bearer app-user-jwt' },
      200,
    ],
    ['X-Loadwise-Token alone', { 'x-loadwise-token': 's3cret' }, 200],
    [
      'a wrong X-Loadwise-Token, even with a right Bearer',
      { 'x-loadwise-token': 'nope', authorization: 'Bearer s3cret' },
      401,
    ],
  ])('reads %s', async (_label, headers, status) => {
    const res = await fetch(`${base}/closed/status`, { headers });
    expect(res.status).toBe(status);
  });

  it('lists every balancer on one page', async () => {
    const res = await fetch(`${base}/all/status`, { headers: { 'x-loadwise-token': 's3cret' } });
    expect(res.status).toBe(200);
    const body = (await res.json()) as { takenAt: string; services: BalancerSnapshot[] };
    expect(body.services.map((s) => s.service)).toEqual(['users', 'orders']);
    expect(body.services[0]!.backends[0]!.id).toBe('a');
    expect(Date.parse(body.takenAt)).not.toBeNaN();
  });

  it('needs exactly one of getSnapshot and balancers', () => {
    expect(() => statusHandler({})).toThrow(TypeError);
    expect(() => statusHandler({ balancers: [] })).toThrow(TypeError);
  });

  it('refuses other methods with 405 and Allow', async () => {
    const res = await fetch(`${base}/closed/status`, {
      method: 'POST',
      headers: { authorization: 'Bearer s3cret' },
    });
    expect(res.status).toBe(405);
    expect(res.headers.get('allow')).toBe('GET, HEAD');
  });

  it('passes a snapshot failure to the error handler', async () => {
    const res = await fetch(`${base}/broken/status`);
    expect(res.status).toBe(500);
    expect(await res.json()).toEqual({ error: 'handled' });
  });

  it('rejects an empty token at construction', () => {
    expect(() => statusHandler({ getSnapshot: () => SNAPSHOT, token: '' })).toThrow(TypeError);
  });
});

describe('statusHandler at fleet scale', () => {
  /** More backends than one step: the body is made over several turns. */
  const LARGE: BalancerSnapshot = {
    ...SNAPSHOT,
    backends: Array.from({ length: 3 * STATUS_STEP_BACKENDS }, (_, i) => ({
      ...SNAPSHOT.backends[0]!,
      id: `b${i}`,
      url: `http://10.0.${i >> 8}.${i & 255}:3000/`,
    })),
  };
  let takes = 0;
  let wrap: ((res: ServerResponse) => void) | undefined;
  /** An async middleware in front (an auth step): the handler runs after this many ms. */
  let delayMs = 0;
  let big: Server;
  let port = 0;
  const handler = statusHandler({
    getSnapshot: () => {
      takes++;
      return LARGE;
    },
  });

  beforeAll(async () => {
    big = createServer((req, res) => {
      wrap?.(res);
      if (delayMs > 0) setTimeout(() => handler(req, res), delayMs);
      else handler(req, res);
    });
    big.listen(0, '127.0.0.1');
    await new Promise<void>((resolve) => big.once('listening', resolve));
    port = (big.address() as AddressInfo).port;
  });

  afterAll(async () => {
    big.closeAllConnections();
    await new Promise<void>((resolve) => big.close(() => resolve()));
  });

  beforeEach(() => {
    takes = 0;
    wrap = undefined;
    delayMs = 0;
  });

  it('holds no body for a client that left while a middleware before it ran', async () => {
    // Its 'close' had fired already, so the body acquired for it was never released: a
    // dozen such aborts (a poller's timeout) at 10,000 backends held 32 MiB for good, and
    // every status request got 503 until the gateway restarted.
    const acquire = jest.spyOn(StatusBodies.prototype, 'acquire');
    const release = jest.spyOn(StatusBodies.prototype, 'release');
    try {
      delayMs = 50;
      const [s] = await sockets(1);
      const closed = new Promise<void>((resolve) =>
        big.once('request', (_q, r) => r.once('close', () => resolve())),
      );
      s!.write(GET);
      s!.destroy();
      await closed;
      await new Promise((r) => setTimeout(r, 100)); // the handler has run by now
      expect(acquire.mock.calls.length).toBe(release.mock.calls.length);
      delayMs = 0;
      const [t] = await sockets(1);
      const text = body(t!);
      t!.write(GET);
      expect(JSON.parse(await text)).toEqual(LARGE);
    } finally {
      acquire.mockRestore();
      release.mockRestore();
    }
  });

  /** `n` connections, open on both ends before any of them sends its request. */
  async function sockets(n: number): Promise<Socket[]> {
    let accepted = 0;
    const all = new Promise<void>((resolve) => {
      const onConnection = (): void => {
        if (++accepted < n) return;
        big.off('connection', onConnection);
        resolve();
      };
      big.on('connection', onConnection);
    });
    const list = Array.from({ length: n }, () => connect(port, '127.0.0.1'));
    await Promise.all([
      all,
      ...list.map((s) => new Promise<void>((resolve) => s.once('connect', () => resolve()))),
    ]);
    return list;
  }

  /** The body of the one response `socket` reads (Content-Length framed). */
  function body(socket: Socket): Promise<string> {
    return new Promise((resolve, reject) => {
      let data = Buffer.alloc(0);
      socket.on('data', (chunk: Buffer) => {
        data = Buffer.concat([data, chunk]);
        const end = data.indexOf('\r\n\r\n');
        if (end < 0) return;
        const length = Number(/content-length: (\d+)/i.exec(data.subarray(0, end).toString())![1]);
        if (data.length >= end + 4 + length) {
          resolve(data.subarray(end + 4, end + 4 + length).toString());
          socket.destroy();
        }
      });
      socket.on('error', reject);
    });
  }

  const GET = 'GET / HTTP/1.1\r\nHost: x\r\n\r\n';

  it('answers the requests that come together from one snapshot and one serialisation', async () => {
    const list = await sockets(8);
    const bodies = list.map(body);
    for (const s of list) s.write(GET);
    const texts = await Promise.all(bodies);
    expect(takes).toBe(1);
    expect(new Set(texts).size).toBe(1);
    expect(JSON.parse(texts[0]!)).toEqual(LARGE);
  });

  it('writes one slice, then waits for drain; the answers share one Buffer', async () => {
    // A socket that takes nothing: each write is kept here and "fills" it (false), so the
    // handler must wait for 'drain', which only the test emits.
    const writes = new Map<ServerResponse, Buffer[]>();
    wrap = (res) => {
      const mine: Buffer[] = [];
      writes.set(res, mine);
      res.write = ((chunk: Buffer) => {
        mine.push(chunk);
        return false;
      }) as typeof res.write;
    };
    const turn = (): Promise<void> => new Promise((resolve) => setImmediate(resolve));
    const list = await sockets(2);
    for (const s of list) s.write(GET);
    for (let turns = 0; turns < 1000; turns++) {
      if (writes.size === 2 && [...writes.values()].every((w) => w.length > 0)) break;
      await turn();
    }
    for (let i = 0; i < 5; i++) await turn();
    const [a, b] = [...writes.values()] as [Buffer[], Buffer[]];
    // One write each, not the whole body, until 'drain'.
    expect(a).toHaveLength(1);
    expect(b).toHaveLength(1);
    const json = JSON.stringify(LARGE);
    expect(a[0]!.length).toBeLessThan(Buffer.byteLength(json));
    // Views of the same memory: two answers cost one body.
    expect(a[0]!.buffer).toBe(b[0]!.buffer);
    for (let turns = 0; turns < 1000 && [...writes.keys()].some((r) => !r.writableEnded); turns++) {
      for (const res of writes.keys()) if (!res.writableEnded) res.emit('drain');
      await turn();
    }
    expect(Buffer.concat(a).toString()).toBe(json);
    expect(Buffer.concat(b).toString()).toBe(json);
    expect(a.length).toBeGreaterThan(1);
    for (const s of list) s.destroy();
  });
});

describe('metricsHandler', () => {
  it('serves the Prometheus text with counters and scrape-time gauges', async () => {
    metrics.onResponse('a', 200, 12);
    metrics.onShed('overloaded');
    const res = await fetch(`${base}/metrics`);
    expect(res.status).toBe(200);
    expect(res.headers.get('content-type')).toBe(registry.contentType);
    const text = await res.text();
    expect(text).toContain('loadwise_backend_requests_total{backend="a",status_class="2xx"} 1');
    expect(text).toContain('loadwise_shed_total{reason="overloaded"} 1');
    expect(text).toContain('loadwise_backend_report_age_seconds{backend="a"} 0.2');
    expect(text).toContain('loadwise_broker_connected 1');
  });

  it('requires the token when one is set', async () => {
    expect((await fetch(`${base}/closed/metrics`)).status).toBe(401);
    const ok = await fetch(`${base}/closed/metrics`, {
      headers: { authorization: 'Bearer s3cret' },
    });
    expect(ok.status).toBe(200);
  });

  it('streams the text (chunked, no Content-Length) and answers HEAD with the headers only', async () => {
    const res = await fetch(`${base}/metrics`);
    expect(res.headers.get('transfer-encoding')).toBe('chunked');
    expect(res.headers.get('content-length')).toBeNull();
    expect(res.headers.get('cache-control')).toBe('no-store');
    expect(await res.text()).toBe(await registry.metrics());
    const head = await fetch(`${base}/metrics`, { method: 'HEAD' });
    expect(head.status).toBe(200);
    expect(head.headers.get('content-type')).toBe(registry.contentType);
    expect(head.headers.get('cache-control')).toBe('no-store');
    expect(await head.text()).toBe('');
  });

  it('cuts the body when the render fails after its first part: never a complete response', async () => {
    errorsHandled.length = 0;
    const res = await fetch(`${base}/broken/metrics`);
    expect(res.status).toBe(200);
    await expect(res.text()).rejects.toThrow();
    expect(errorsHandled).toEqual([expect.objectContaining({ message: 'collect failed' })]);
  });
});
