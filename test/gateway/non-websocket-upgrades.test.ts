/**
 * Upgrade requests that are not a WebSocket's: `Upgrade: h2c` on a GET (what
 * Java's HttpClient and `curl --http2` send to plain-http URLs) and an Upgrade
 * on a POST. http-proxy closed their sockets without a word. They are served
 * as the ordinary requests they also are (a server may ignore Upgrade, RFC
 * 9110 §7.8), through routeUpgrades(app) with what the app's middleware set,
 * and through the raw `lb.upgrade`; one with a body gets a coded 400. Real
 * servers, raw client sockets.
 */
import { createServer } from 'node:http';
import express from 'express';
import { loadBalance, routeUpgrades, type LoadBalancerMiddleware } from '@loadwise/gateway-plugin';
import { listen, type TestServer } from '../kit/http';
import { rawExchange } from '../kit/raw-http';
import { quietLogger } from '../kit/gateway';

const H2C =
  'Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n';

describe('upgrades other than WebSocket', () => {
  let backend: TestServer;
  const servers: TestServer[] = [];
  const lbs: LoadBalancerMiddleware[] = [];
  const warnings: { event?: string; code?: string }[] = [];

  beforeAll(async () => {
    // Echoes what reached it: method, path, and the Upgrade header if any.
    backend = await listen(
      createServer((req, res) => {
        req.resume();
        req.on('end', () =>
          res.end(`${req.method} ${req.url} upgrade=${req.headers.upgrade ?? '-'}`),
        );
      }),
    );
  });
  afterAll(async () => {
    for (const s of servers) await s.close();
    for (const lb of lbs) await lb.close({ graceMs: 0 });
    await backend.close();
  });

  const balancer = (): LoadBalancerMiddleware => {
    const lb = loadBalance({
      backends: [{ id: 'b', url: backend.url }],
      healthCheck: false,
      overload: false,
      warmUp: false,
      logger: { ...quietLogger, warn: (f) => void warnings.push(f as never) },
    });
    lbs.push(lb);
    return lb;
  };

  /** An Express app of one balancer, its upgrades through routeUpgrades(app) or `lb.upgrade`. */
  const gateway = async (raw = false): Promise<TestServer> => {
    const lb = balancer();
    const app = express();
    app.use(lb);
    const server = createServer(app);
    server.on('upgrade', raw ? lb.upgrade : routeUpgrades(app));
    const gw = await listen(server);
    servers.push(gw);
    return gw;
  };

  it('an h2c upgrade through routeUpgrades(app) is served as a request, with the app middleware headers', async () => {
    const lb = balancer();
    const app = express();
    app.use((_req, res, next) => {
      res.setHeader('x-request-id', 'r-1');
      next();
    });
    app.use(lb);
    const server = createServer(app);
    server.on('upgrade', routeUpgrades(app));
    const gw = await listen(server);
    servers.push(gw);
    const r = await rawExchange(gw.port, `GET /page HTTP/1.1\r\nHost: a\r\n${H2C}\r\n`, {
      responses: 1,
    });
    expect(r.responses[0]).toMatchObject({ status: 200, body: 'GET /page upgrade=-' });
    expect(r.responses[0]!.headers['x-request-id']).toBe('r-1');
    expect(r.responses[0]!.headers.connection).toBe('close');
  });

  it('through the raw lb.upgrade: an h2c GET and a bodiless POST asking for websocket are served as requests', async () => {
    const gw = await gateway(true);
    const get = await rawExchange(gw.port, `GET /h HTTP/1.1\r\nHost: a\r\n${H2C}\r\n`, {
      responses: 1,
    });
    expect(get.responses[0]).toMatchObject({ status: 200, body: 'GET /h upgrade=-' });
    const post = await rawExchange(
      gw.port,
      'POST /p HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nContent-Length: 0\r\n\r\n',
      { responses: 1 },
    );
    expect(post.responses[0]).toMatchObject({ status: 200, body: 'POST /p upgrade=-' });
  });

  it('an upgrade other than WebSocket with a body: a coded 400, counted and logged', async () => {
    const gw = await gateway();
    const r = await rawExchange(
      gw.port,
      `POST /p HTTP/1.1\r\nHost: a\r\n${H2C}Content-Length: 5\r\n\r\nhello`,
      { responses: 1 },
    );
    expect(r.responses[0]).toMatchObject({ status: 400 });
    expect(r.responses[0]!.headers['x-loadwise-error']).toBe('LW_GW_BAD_REQUEST');
    expect(warnings).toContainEqual(
      expect.objectContaining({ event: 'request-refused', code: 'LW_GW_BAD_REQUEST' }),
    );
  });

  it('a WebSocket upgrade whose Upgrade lists websocket among others is still proxied as one', async () => {
    const gw = await gateway();
    // The backend is plain HTTP: the upgrade reaches it (its answer is a 200, not a 101).
    const r = await rawExchange(
      gw.port,
      'GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket, foo\r\n' +
        'Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n',
      { responses: 1 },
    );
    expect(r.responses[0]).toMatchObject({ status: 200, body: 'GET /ws upgrade=websocket' });
  });
});
