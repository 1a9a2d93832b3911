/**
 * WebSocket upgrades through the app (`server.on('upgrade', routeUpgrades(app))`):
 * the app's middleware and mount paths apply to them as to any request. Two
 * services behind one Express app, real `ws` echo backends and a real `ws`
 * client: an unauthenticated upgrade gets the auth middleware's 401, a path
 * no balancer is mounted on gets 404, and an authorised one reaches the echo
 * backend of its own mount path, with the mount path stripped.
 */
import { once } from 'node:events';
import { connect } from 'node:net';
import { Readable } from 'node:stream';
import express from 'express';
import { WebSocket, WebSocketServer } from 'ws';
import { loadBalance, routeUpgrades, type LoadBalancerMiddleware } from '@loadwise/gateway-plugin';
import { wsExchange } from '../kit/ws-client';
import { createServer } from 'node:http';
import { listen, type TestServer } from '../kit/http';
import { wsEchoBackend } from '../kit/ws-server';
import { parseResponses } from '../kit/raw-http';
import { expressGateway, quietLogger } from '../kit/gateway';
import { eventually } from '../kit/fleet';

const TOKEN = 'user-token-1';

describe('routeUpgrades(app)', () => {
  const backends: TestServer[] = [];
  let gateway: TestServer;
  const lbs: LoadBalancerMiddleware[] = [];
  const seen: string[] = [];

  beforeAll(async () => {
    for (const id of ['users-1', 'orders-1'])
      backends.push(await wsEchoBackend((m, req) => `${id} ${req.url}: ${m}`, id));
    const [users, orders] = (['users', 'orders'] as const).map((service, i) =>
      loadBalance({
        backends: [{ id: `${service}-1`, url: backends[i]!.url }],
        service,
        healthCheck: false,
        overload: false,
        logger: quietLogger,
      }),
    );
    lbs.push(users!, orders!);
    const app = express();
    app.use((req, _res, next) => {
      seen.push(req.url);
      next();
    });
    app.use((req, res, next) => {
      if (req.headers.authorization !== `Bearer ${TOKEN}`) res.status(401).json({ error: 'auth' });
      else next();
    });
    app.use('/api/users', users!);
    app.use('/api/orders', orders!);
    const server = createServer(app);
    server.on('upgrade', routeUpgrades(app));
    gateway = await listen(server);
  });
  afterAll(async () => {
    await gateway.close();
    for (const lb of lbs) await lb.close();
    for (const b of backends) await b.close();
  });

  const ws = (path: string): string => `${gateway.url.replace('http', 'ws')}${path}`;
  const auth = { authorization: `Bearer ${TOKEN}` };

  it('refuses an unauthenticated upgrade with the auth middleware answer', async () => {
    await expect(wsExchange(ws('/api/users/ws'))).resolves.toEqual({ status: 401 });
    expect(seen).toContain('/api/users/ws');
  });

  it('refuses an upgrade outside every mount path with 404', async () => {
    await expect(wsExchange(ws('/anything'), auth)).resolves.toEqual({ status: 404 });
  });

  it('proxies an authorised upgrade to the backends of its own mount path', async () => {
    await expect(wsExchange(ws('/api/users/ws'), auth)).resolves.toEqual({
      echo: 'users-1 /ws: ping',
    });
    await expect(wsExchange(ws('/api/orders/ws?room=7'), auth)).resolves.toEqual({
      echo: 'orders-1 /ws?room=7: ping',
    });
  });

  it('refuses upgrades once the balancer drains', async () => {
    const closing = lbs[1]!.close({ graceMs: 0 });
    await closing;
    await expect(wsExchange(ws('/api/orders/ws'), auth)).resolves.toEqual({ status: 503 });
  });
});

/**
 * An upgrade pipelined behind a request whose answer is not out yet: Node hands it
 * over at once, and binding a response to that socket threw inside Node's parser
 * callback, ending the process (one write from any client). It waits for the answer
 * ahead of it, and goes out after it, in order.
 */
describe('an upgrade pipelined behind an unanswered request', () => {
  let backend: TestServer;
  beforeAll(async () => {
    backend = await wsEchoBackend((m) => `echo ${m}`, 'b');
  });
  afterAll(() => backend.close());

  const upgrade = (path: string, kind: string): string =>
    `GET ${path} HTTP/1.1\r\nHost: gw\r\nConnection: Upgrade\r\nUpgrade: ${kind}\r\n` +
    'Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n';

  /**
   * A gateway whose app answers `GET /plain` after `plainMs` (then calls `answered`), its
   * upgrades through routeUpgrades(app) or, `routed` false, lb.upgrade.
   */
  async function gateway(
    routed: boolean,
    plainMs: number,
    answered: () => void = () => {},
  ): Promise<TestServer & { lb: LoadBalancerMiddleware }> {
    return expressGateway(backend.url, {}, (app, lb, server) => {
      app.get('/plain', (_req, res) => {
        setTimeout(() => {
          answered();
          res.end('PLAIN');
        }, plainMs);
      });
      app.use(lb);
      server.on('upgrade', routed ? routeUpgrades(app) : lb.upgrade);
    });
  }

  it.each([
    ['routeUpgrades(app), a WebSocket', true, 'websocket', /101 Switching Protocols/],
    ['routeUpgrades(app), h2c (served as a request)', true, 'h2c', /200 OK[\s\S]*closed/],
    ['lb.upgrade, a WebSocket', false, 'websocket', /101 Switching Protocols/],
    ['lb.upgrade, h2c (served as a request)', false, 'h2c', /200 OK[\s\S]*closed/],
  ])('%s: answered after the answer ahead of it', async (_name, routed, kind, second) => {
    const gw = await gateway(routed, 100);
    const sock = connect(gw.port, '127.0.0.1');
    try {
      let raw = '';
      sock.setEncoding('latin1');
      sock.on('data', (d: string) => (raw += d));
      sock.on('close', () => (raw += '<closed>'));
      sock.on('error', () => {});
      await once(sock, 'connect');
      sock.write(`GET /plain HTTP/1.1\r\nHost: gw\r\n\r\n${upgrade('/ws', kind)}`);
      while (!(raw.includes('<closed>') || /101 Switching Protocols\r\n[\s\S]*\r\n\r\n/.test(raw)))
        await new Promise((r) => setTimeout(r, 10));
      const [first, ...rest] = raw.split(/(?=HTTP\/1\.1 )/);
      expect(first).toMatch(/^HTTP\/1\.1 200 OK[\s\S]*PLAIN$/);
      expect(rest.join('')).toMatch(second);
      // The gateway is still up, and serves the next connection.
      await expect(wsExchange(`${gw.url.replace('http', 'ws')}/ws`)).resolves.toEqual({
        echo: 'echo ping',
      });
    } finally {
      sock.destroy();
      await gw.close();
    }
  });

  it.each([true, false])(
    'a client that resets while its upgrade waits takes nothing down (routed %s)',
    async (routed) => {
      let answered = false;
      const gw = await gateway(routed, 300, () => (answered = true));
      try {
        const sock = connect(gw.port, '127.0.0.1');
        sock.on('error', () => {});
        await once(sock, 'connect');
        sock.write(`GET /plain HTTP/1.1\r\nHost: gw\r\n\r\n${upgrade('/ws', 'websocket')}`);
        await new Promise((r) => setTimeout(r, 50));
        sock.resetAndDestroy();
        while (!answered) await new Promise((r) => setTimeout(r, 20));
        await expect(wsExchange(`${gw.url.replace('http', 'ws')}/ws`)).resolves.toEqual({
          echo: 'echo ping',
        });
        // Nothing held for the reset one (the exchange's own closes as it ends).
        await eventually(
          () => gw.lb.balancer.snapshot().openWebSockets === 0,
          5_000,
          'every WebSocket released',
        );
      } finally {
        await gw.close();
      }
    },
  );
});

describe('routeUpgrades(app): a client that leaves while the middleware runs, and errors', () => {
  let backend: Awaited<ReturnType<typeof wsEchoBackend>>;
  let gateway: TestServer;
  let lb: LoadBalancerMiddleware;
  let accepted = 0;
  const own = new WebSocketServer({ noServer: true });
  let ownBytes = 0;
  own.on('connection', (c) =>
    c.on('message', (m: Buffer) => {
      ownBytes += m.length;
      c.send(String(ownBytes));
    }),
  );
  /** The slow middleware's request has been seen, and it goes on when `release` is called. */
  let slow: { closed: boolean; release: () => void } | undefined;

  beforeAll(async () => {
    backend = await wsEchoBackend();
    backend.wss.on('connection', () => accepted++);
    lb = loadBalance({
      backends: [{ id: 'ws-1', url: backend.url }],
      healthCheck: false,
      overload: false,
      logger: quietLogger,
    });
    const app = express();
    app.use('/slow', (req, _res, next) => {
      // An async auth step (a session store lookup) that takes its time.
      const s = { closed: false, release: () => next() };
      req.once('close', () => (s.closed = true));
      slow = s;
    });
    // Answered by the app itself: more than a socket buffer.
    // (piped, so each write waits for 'drain' once the socket's buffer is full).
    app.get('/big', (_req, res) =>
      Readable.from(Array.from({ length: 20 }, () => Buffer.alloc(10_000, 98))).pipe(res),
    );
    // A WebSocket server of the app's own on a route, as express-ws does.
    app.get('/own', (req) =>
      own.handleUpgrade(req, req.socket, Buffer.alloc(0), (c) => own.emit('connection', c, req)),
    );
    app.use('/denied', (_req, _res, next) =>
      next(
        Object.assign(new Error('no'), {
          statusCode: 403,
          headers: { 'WWW-Authenticate': 'Bearer' },
        }),
      ),
    );
    app.use(lb);
    const server = createServer(app);
    server.on('upgrade', routeUpgrades(app));
    gateway = await listen(server);
  });
  afterAll(async () => {
    for (const c of own.clients) c.terminate();
    own.close();
    await gateway.close();
    await lb.close();
    await backend.close();
  });

  const upgradeHead = (path: string): string =>
    `GET ${path} HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n` +
    'Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n';

  it('one that sends its FIN is let go at once: no backend WebSocket for it, no socket kept', async () => {
    slow = undefined;
    const socket = connect(Number(new URL(gateway.url).port), '127.0.0.1');
    let received = '';
    socket.on('data', (d: Buffer) => (received += d.toString('latin1')));
    socket.on('error', () => undefined);
    socket.write(upgradeHead('/slow/ws'));
    await eventually(() => slow !== undefined);
    socket.end(); // FIN: the client leaves, its side half-open
    // Before: the socket stayed open (CLOSE_WAIT, for good behind a middleware that never
    // answers), and the middleware's request never closed.
    await once(socket, 'close');
    await eventually(() => slow!.closed);
    // The middleware goes on after all: nothing is proxied for a client that left (before,
    // a 101 went to nobody and the backend accepted a WebSocket for it).
    slow!.release();
    await new Promise((r) => setTimeout(r, 100));
    expect(received).toBe('');
    expect(accepted).toBe(0);
  });

  it('refuses more than 64 KiB sent while the middleware runs with 400 LW_GW_BAD_REQUEST', async () => {
    slow = undefined;
    const socket = connect(Number(new URL(gateway.url).port), '127.0.0.1');
    let received = '';
    socket.on('data', (d: Buffer) => (received += d.toString('latin1')));
    socket.on('error', () => undefined);
    socket.write(upgradeHead('/slow/ws'));
    await eventually(() => slow !== undefined);
    socket.write(Buffer.alloc(80 * 1024, 120));
    // Before: the socket was closed with no answer, as if the client had left.
    await once(socket, 'close');
    expect(
      parseResponses(received).responses.map((r) => [r.status, r.headers['x-loadwise-error']]),
    ).toEqual([[400, 'LW_GW_BAD_REQUEST']]);
    await eventually(() => slow!.closed);
    slow!.release();
    await new Promise((r) => setTimeout(r, 100));
    expect(accepted).toBe(0);
  });

  it('serves an upgrade answered as a plain request (h2c) past a socket buffer whole', async () => {
    const socket = connect(Number(new URL(gateway.url).port), '127.0.0.1');
    let received = Buffer.alloc(0);
    socket.on('data', (d: Buffer) => (received = Buffer.concat([received, d])));
    socket.on('error', () => undefined);
    socket.write(
      'GET /big HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\n' +
        'Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n',
    );
    await once(socket, 'close');
    // Before: 'drain' never reached the response, and the answer stopped at about 64 KiB
    // (curl --http2 waited until its timeout).
    const { responses } = parseResponses(received.toString('latin1'), [], true);
    expect(responses.map((r) => [r.status, r.body.length])).toEqual([[200, 200_000]]);
  });

  it('leaves a WebSocket the app serves itself to the app (it was cut after 64 KiB)', async () => {
    const client = new WebSocket(`${gateway.url.replace('http', 'ws')}/own`);
    client.on('error', () => undefined);
    await once(client, 'open');
    const counted: string[] = [];
    client.on('message', (m) => counted.push(String(m)));
    for (let i = 0; i < 10; i++) client.send(Buffer.alloc(16 * 1024, 97));
    await eventually(() => counted.length === 10 || client.readyState !== WebSocket.OPEN);
    expect(client.readyState).toBe(WebSocket.OPEN);
    expect(counted.at(-1)).toBe(String(10 * 16 * 1024));
    client.close();
    await once(client, 'close');
  });

  it("answers next(err) as Express's final handler: statusCode and the error's headers", async () => {
    const socket = connect(Number(new URL(gateway.url).port), '127.0.0.1');
    let received = '';
    socket.on('data', (d: Buffer) => (received += d.toString('latin1')));
    socket.on('error', () => undefined);
    socket.write(upgradeHead('/denied/ws'));
    await once(socket, 'close');
    // Before: 500, without WWW-Authenticate.
    expect(received).toMatch(/^HTTP\/1\.1 403 /);
    expect(received).toMatch(/\r\nWWW-Authenticate: Bearer\r\n/i);
  });
});

describe('routeUpgrades(app) at shutdown', () => {
  /**
   * A gateway whose middleware never answers `hangPath` (a session lookup that hangs), an
   * upgrade sent there, then the shutdown recipe: stop listening, then the balancer's grace.
   * Node no longer counts an upgrade's socket as its connection: closeAllConnections()
   * missed it, and the stopped process lived until the client left.
   */
  async function hungUpgradeAtShutdown(
    hangPath: string,
    before: (gatewayUrl: string) => Promise<void>,
  ): Promise<void> {
    const backend = await wsEchoBackend();
    const lb = loadBalance({
      backends: [{ id: 'ws-1', url: backend.url }],
      healthCheck: false,
      overload: false,
      warmUp: false,
      logger: quietLogger,
    });
    let seen = false;
    const app = express();
    app.use(hangPath, () => void (seen = true));
    app.use(lb);
    const server = createServer(app);
    server.on('upgrade', routeUpgrades(app));
    const gateway = await listen(server);
    const socket = connect(Number(new URL(gateway.url).port), '127.0.0.1');
    try {
      await before(gateway.url);
      let cut = false;
      socket.once('close', () => (cut = true));
      socket.on('error', () => {});
      socket.write(
        `GET ${hangPath} HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n` +
          'Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n',
      );
      await eventually(() => seen, 5_000, 'the upgrade in the middleware');
      server.close();
      await lb.close({ graceMs: 100 });
      await eventually(() => cut, 5_000, "the upgrade's socket cut");
    } finally {
      socket.destroy();
      await gateway.close();
      await backend.close();
    }
  }

  it("cuts an upgrade still in the app's middleware once the grace is over", async () => {
    // Only WebSockets: one the balancer proxies makes the server one of its own (it noted
    // servers from plain requests alone, and a WebSocket-only gateway kept the hung one).
    await hungUpgradeAtShutdown('/hang', async (url) => {
      const open = new WebSocket(`${url.replace('http', 'ws')}/ws`);
      await once(open, 'open');
      open.close();
      await once(open, 'close');
    });
  });
});
