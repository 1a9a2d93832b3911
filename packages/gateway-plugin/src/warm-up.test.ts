/**
 * The warm-up (warm-up.ts) with real servers on port 0: its requests go
 * through the request path to a loopback sink and are counted nowhere, its
 * preconnected sockets are the ones the first real requests use, a request
 * during the warm-up is served, and close() mid-warm-up releases everything.
 */
import http, { type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import type { BalancerEvents } from './events';
import { loadBalance, type LoadBalancerMiddleware } from './load-balance';
import type { LoadBalanceOptions } from './options';
import { ProxyEngine } from './proxy/proxy-engine';
import { RequestFlow } from './proxy/request-flow';
import { gatewayServerOptions } from './proxy/server-classes';
import { MAX_PRECONNECT_SOCKETS, PRECONNECT_CONCURRENCY, REQUEST_BUDGET_MS } from './warm-up';

const quiet = { info: () => {}, warn: () => {}, error: () => {} };

interface TestBackend {
  url: string;
  /** `METHOD path user-agent` of every request, in order. */
  requests: string[];
  /** Client ports of the sockets that carried a preconnect. */
  preconnectPorts: Set<number>;
  /** Client port of the socket of each other request, by path. */
  portOf: Map<string, number>;
  close(): Promise<void>;
}

/** A server on 127.0.0.1, port 0, that closes every socket it accepted. */
async function listen(
  handler: (req: IncomingMessage, res: ServerResponse) => void,
): Promise<{ server: Server; port: number; close(): Promise<void> }> {
  const server = http.createServer(handler);
  const sockets = new Set<Socket>();
  server.on('connection', (s: Socket) => {
    sockets.add(s);
    s.once('close', () => sockets.delete(s));
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    server,
    port: (server.address() as AddressInfo).port,
    close: () =>
      new Promise<void>((resolve) => {
        for (const s of sockets) s.destroy();
        server.close(() => resolve());
      }),
  };
}

/**
 * Resolves once the request flow has handled `n` requests (the warm-up's own,
 * while nothing else is sent); each still goes through the real handle().
 */
function afterRequests(n: number): Promise<void> {
  let reached!: () => void;
  const seen = new Promise<void>((resolve) => (reached = resolve));
  const handle = RequestFlow.prototype.handle;
  let calls = 0;
  jest.spyOn(RequestFlow.prototype, 'handle').mockImplementation(function (
    this: RequestFlow,
    req,
    res,
  ) {
    if (++calls === n) reached();
    return handle.call(this, req, res);
  });
  return seen;
}

async function startBackend(): Promise<TestBackend> {
  const b = { requests: [] as string[], preconnectPorts: new Set<number>(), portOf: new Map() };
  const srv = await listen((req, res) => {
    const ua = req.headers['user-agent'] ?? '-';
    b.requests.push(`${req.method} ${req.url} ${ua}`);
    if (ua === 'loadwise-gateway-preconnect') b.preconnectPorts.add(req.socket.remotePort!);
    else b.portOf.set(req.url!, req.socket.remotePort!);
    req.resume();
    res.end('ok');
  });
  return { ...b, url: `http://127.0.0.1:${srv.port}`, close: srv.close };
}

/** A GET on a connection of its own. */
function get(port: number, path: string): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const req = http.get({ host: '127.0.0.1', port, path, agent: false }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (c: string) => (body += c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
    });
    req.on('error', reject);
  });
}

const EVENTS: (keyof BalancerEvents)[] = [
  'backend-up',
  'backend-down',
  'backend-ejected',
  'backend-restored',
  'backend-added',
  'backend-removed',
  'saturation',
  'overload',
  'accept-queue',
  'panic',
  'invalid-message',
];

/**
 * A health check interval long enough that no check runs during a test: each backend's
 * first check comes at a random point of the first interval (active-checker.ts), so a
 * minute left one in a test's seconds now and then.
 */
const NO_CHECK_MS = 1_900_000_000;

describe('warm-up', () => {
  let a: TestBackend;
  let lb: LoadBalancerMiddleware | undefined;
  beforeEach(async () => {
    a = await startBackend();
  });
  afterEach(async () => {
    jest.restoreAllMocks();
    await lb?.close({ graceMs: 0 });
    lb = undefined;
    await a.close();
  });

  function start(opts: Partial<LoadBalanceOptions>): LoadBalancerMiddleware {
    lb = loadBalance({
      backends: [{ id: 'a', url: a.url }],
      overload: false,
      logger: quiet,
      ...opts,
    });
    return lb;
  }

  it('runs its requests through the request path to a loopback sink, counted nowhere', async () => {
    const handle = jest.spyOn(RequestFlow.prototype, 'handle');
    const web = jest.spyOn(ProxyEngine.prototype, 'web');
    const gw = start({ healthCheck: false, warmUp: { requests: 40 } });
    const events: string[] = [];
    for (const name of EVENTS) gw.balancer.on(name, () => events.push(name));
    await gw.ready();

    // The request flow and the proxy engine ran each synthetic request...
    expect(handle).toHaveBeenCalledTimes(40);
    expect(web).toHaveBeenCalledTimes(40);
    // ...to the sink, never to the configured backend (healthCheck: false: no preconnect).
    expect(new Set(web.mock.calls.map(([backend]) => backend.id))).toEqual(new Set(['warm-up']));
    expect(a.requests).toEqual([]);
    // Nothing of it in the snapshot, the metrics or the events.
    const [snap] = gw.balancer.snapshot().backends;
    expect(snap).toMatchObject({ id: 'a', requestsTotal: 0, windowRequests: 0, inFlight: 0 });
    expect(gw.balancer.snapshot().backends.map((b) => b.id)).toEqual(['a']);
    const text = await gw.balancer.metricsRegistry.metrics();
    expect(text).not.toContain('warm-up');
    expect(text).not.toMatch(/^loadwise_picks_total\{[^}]*\} [1-9]/m);
    expect(events).toEqual([]);

    // The real path still works afterwards.
    const srv = await listen((req, res) => gw(req, res));
    try {
      expect(await get(srv.port, '/after')).toEqual({ status: 200, body: 'ok' });
      expect(a.requests).toEqual(['GET /after -']);
    } finally {
      await srv.close();
    }
  });

  it('sends half of its requests on new connections, through an Express app', async () => {
    // The warm-up's own servers: the sink first, then the front (warm-up.ts compile()).
    const created: Array<{ listener: unknown; options: unknown; connections: number }> = [];
    const createServer = http.createServer.bind(http) as (...args: unknown[]) => Server;
    jest.spyOn(http, 'createServer').mockImplementation(((...args: unknown[]) => {
      const server = createServer(...args);
      const rec = {
        listener: args[args.length - 1],
        options: args.length > 1 ? args[0] : undefined,
        connections: 0,
      };
      created.push(rec);
      server.on('connection', () => rec.connections++);
      return server;
    }) as unknown as typeof http.createServer);
    const gw = start({ healthCheck: false, warmUp: { requests: 40 } });
    await gw.ready();
    expect(created).toHaveLength(2);
    const front = created[1]!;
    // Express is installed here (a devDependency): the front is an Express app.
    expect(typeof (front.listener as { use?: unknown }).use).toBe('function');
    // On the classes a gateway built as docs/gateway.md says serves with: the same
    // constructors, compiled by the warm-up's requests.
    expect(front.options).toEqual(gatewayServerOptions());
    // 20 requests on connections of their own, 20 over at most 16 keep-alive ones.
    expect(front.connections).toBeGreaterThanOrEqual(20);
    expect(front.connections).toBeLessThanOrEqual(36);
  });

  it("preconnects sockets to each backend's pool with GETs of the health path; real requests reuse them", async () => {
    const gw = start({
      healthCheck: { path: '/healthz', intervalMs: NO_CHECK_MS },
      warmUp: { requests: 0, connectionsPerBackend: 3 },
    });
    await gw.ready();
    const preconnects = a.requests.filter((r) => r.endsWith('loadwise-gateway-preconnect'));
    expect(preconnects).toEqual(Array(3).fill('GET /healthz loadwise-gateway-preconnect'));
    expect(a.preconnectPorts.size).toBe(3);
    expect(gw.balancer.snapshot().backends[0]).toMatchObject({ requestsTotal: 0 });

    const srv = await listen((req, res) => gw(req, res));
    try {
      for (let i = 0; i < 3; i++) expect((await get(srv.port, `/r${i}`)).status).toBe(200);
      // Every proxied request went over a preconnected socket: no connection was opened for it.
      for (let i = 0; i < 3; i++) expect(a.preconnectPorts.has(a.portOf.get(`/r${i}`)!)).toBe(true);
    } finally {
      await srv.close();
    }
  });

  it('ends its requests when their time budget is spent, still preconnects, and logs how far it got', async () => {
    // A slow host: the clock jumps past the request budget after the fifth request.
    const realNow = Date.now.bind(Date);
    let shift = 0;
    jest.spyOn(Date, 'now').mockImplementation(() => realNow() + shift);
    const fifthSeen = afterRequests(5);
    const lines: string[] = [];
    const log = (fields: { event?: string }, msg: string): void => {
      if (fields.event === 'warm-up') lines.push(msg);
    };
    const gw = start({
      healthCheck: { path: '/healthz', intervalMs: NO_CHECK_MS },
      warmUp: { requests: 100_000, connectionsPerBackend: 2 },
      logger: { info: log, warn: log, error: log },
    });
    await fifthSeen;
    shift = REQUEST_BUDGET_MS;
    await gw.ready();
    expect(a.requests.filter((r) => r.endsWith('loadwise-gateway-preconnect'))).toHaveLength(2);
    expect(lines).toHaveLength(1);
    expect(lines[0]).toMatch(
      /^warm-up done: \d+ requests through the request path \(of 100000: the 4000 ms budget ended\), 2 connections to backends/,
    );
  });

  it('serves a request that arrives during the warm-up', async () => {
    const fifthSeen = afterRequests(5);
    // Far more requests than the test lasts: the warm-up is still running below.
    const gw = start({ healthCheck: false, warmUp: { requests: 100_000 } });
    let ready = false;
    const readyP = gw.ready().then(() => (ready = true));
    const srv = await listen((req, res) => gw(req, res));
    try {
      await fifthSeen;
      expect(await get(srv.port, '/during')).toEqual({ status: 200, body: 'ok' });
      expect(ready).toBe(false);
      expect(a.requests).toEqual(['GET /during -']);
      expect(gw.balancer.snapshot().backends[0]).toMatchObject({ requestsTotal: 1 });
    } finally {
      await srv.close();
    }
    await gw.close();
    // close() ends the warm-up: ready() does not hang, and does not say ready either (it
    // resolved, and a start-up script opened its port on a closed balancer).
    await expect(readyP).rejects.toMatchObject({ code: 'LW_GW_CLOSED' });
    expect(ready).toBe(false);
  });

  it('close() mid-way returns under a fake clock (unit tests of apps that use one)', async () => {
    jest.useFakeTimers({ doNotFake: ['nextTick', 'setImmediate', 'queueMicrotask'] });
    try {
      const fifthSeen = afterRequests(5);
      const gw = start({ healthCheck: false, warmUp: { requests: 100_000 } });
      await fifthSeen;
      await gw.close({ graceMs: 0 });
      lb = undefined;
      // Settles at once (a closed balancer is never ready), fake clock or not.
      await expect(gw.ready()).rejects.toMatchObject({ code: 'LW_GW_CLOSED' });
    } finally {
      jest.useRealTimers();
    }
  });

  it.each([
    ['at once', 0],
    ['mid-way', 5],
  ])('close() %s stops the warm-up and closes its servers', async (_when, after) => {
    const servers: Server[] = [];
    const createServer = http.createServer.bind(http);
    jest.spyOn(http, 'createServer').mockImplementation(((...args: unknown[]) => {
      const s = (createServer as (...a: unknown[]) => Server)(...args);
      servers.push(s);
      return s;
    }) as typeof http.createServer);
    const seen = afterRequests(after);
    const gw = start({ warmUp: { requests: 100_000, connectionsPerBackend: 2 } });
    if (after > 0) await seen;
    await gw.close();
    lb = undefined;
    await expect(gw.ready()).rejects.toMatchObject({ code: 'LW_GW_CLOSED' });
    // The sink and the shadow's front: both closed (a server still binding closes once bound).
    if (after > 0) expect(servers).toHaveLength(2);
    await Promise.all(
      servers.map((s) =>
        s.listening ? new Promise((resolve) => s.once('close', resolve)) : undefined,
      ),
    );
    expect(servers.every((s) => !s.listening)).toBe(true);
    expect(a.requests.filter((r) => r.endsWith('loadwise-gateway-preconnect'))).toEqual([]);
  });

  describe('a large fleet', () => {
    const servers: Array<{ close(): Promise<void> }> = [];
    afterEach(async () => {
      await lb?.close({ graceMs: 0 });
      lb = undefined;
      await Promise.all(servers.splice(0).map((srv) => srv.close()));
    });

    /** `n` backends that count their preconnects and hold each answer until `release`. */
    async function fleet(n: number) {
      const held: Array<() => void> = [];
      const perBackend = new Map<string, number>();
      let hold = true;
      const urls: string[] = [];
      for (let i = 0; i < n; i++) {
        const id = `b${i}`;
        const srv = await listen((req, res) => {
          req.resume();
          if (req.headers['user-agent'] === 'loadwise-gateway-preconnect')
            perBackend.set(id, (perBackend.get(id) ?? 0) + 1);
          if (hold) held.push(() => res.end('ok'));
          else res.end('ok');
        });
        servers.push(srv);
        urls.push(`http://127.0.0.1:${srv.port}`);
      }
      return {
        backends: urls.map((url, i) => ({ id: `b${i}`, url })),
        held,
        perBackend,
        release() {
          hold = false;
          for (const answer of held.splice(0)) answer();
        },
      };
    }

    it(`preconnects ${PRECONNECT_CONCURRENCY} backends at a time`, async () => {
      // All at once, 1,000 backends opened 4,000 sockets in one turn: a 369 ms stall.
      const f = await fleet(PRECONNECT_CONCURRENCY + 8);
      const gw = (lb = loadBalance({
        backends: f.backends,
        overload: false,
        logger: quiet,
        healthCheck: { path: '/healthz', intervalMs: NO_CHECK_MS },
        warmUp: { requests: 0, connectionsPerBackend: 2 },
      }));
      const ready = gw.ready();
      const full = PRECONNECT_CONCURRENCY * 2;
      while (f.held.length < full) await new Promise((r) => setTimeout(r, 5));
      expect(f.perBackend.size).toBe(PRECONNECT_CONCURRENCY);
      f.release();
      await ready;
      expect(f.perBackend.size).toBe(PRECONNECT_CONCURRENCY + 8);
      expect([...f.perBackend.values()].every((count) => count === 2)).toBe(true);
    });

    it(`shares ${MAX_PRECONNECT_SOCKETS} preconnected sockets among the backends`, async () => {
      // 300 backends x 4 would hold 1,200 descriptors; each gets 3 (1,024 / 300).
      const f = await fleet(300);
      f.release();
      const gw = (lb = loadBalance({
        backends: f.backends,
        overload: false,
        logger: quiet,
        healthCheck: { path: '/healthz', intervalMs: NO_CHECK_MS },
        warmUp: { requests: 0, connectionsPerBackend: 4 },
      }));
      await gw.ready();
      const share = Math.floor(MAX_PRECONNECT_SOCKETS / 300);
      expect(new Set(f.perBackend.values())).toEqual(new Set([share]));
    }, 30_000);
  });

  it('forgets the event-loop delay its own work caused: not overloaded at ready()', async () => {
    // A preconnect answer that holds this (shared) event loop past the limit, as a large
    // fleet's preconnects did: the monitor's tick after it says overloaded, and the first
    // requests after ready() were shed until its next sample.
    const srv = await listen((req, res) => {
      req.resume();
      const until = Date.now() + 400;
      while (Date.now() < until);
      res.end('ok');
    });
    try {
      const gw = (lb = loadBalance({
        backends: [{ id: 'slow', url: `http://127.0.0.1:${srv.port}` }],
        logger: quiet,
        overload: { maxEventLoopDelayMs: 100, sampleIntervalMs: 200 },
        healthCheck: { path: '/healthz', intervalMs: NO_CHECK_MS },
        warmUp: { requests: 0, connectionsPerBackend: 1 },
      }));
      const overloads: boolean[] = [];
      gw.balancer.on('overload', ({ overloaded }) => overloads.push(overloaded));
      await gw.ready();
      expect(gw.balancer.snapshot().overloaded).toBe(false);
      if (overloads.length > 0) expect(overloads.at(-1)).toBe(false);
    } finally {
      await lb?.close({ graceMs: 0 });
      lb = undefined;
      await srv.close();
    }
  });
});
