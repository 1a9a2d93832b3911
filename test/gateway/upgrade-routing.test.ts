/**
 * WebSocket upgrades through the app (`server.on('upgrade', routeUpgrades(app))`):
 * the app's middleware and mount paths apply to them as to any request. Two
 * services behind one Express app, real `ws` echo backends and a real `ws`
 * client: an unauthenticated upgrade gets the auth middleware's 401, a path
 * no balancer is mounted on gets 404, and an authorised one reaches the echo
 * backend of its own mount path, with the mount path stripped.
 */
import express from 'express';
import { loadBalance, routeUpgrades, type LoadBalancerMiddleware } from '@loadwise/gateway-plugin';
import { wsExchange } from '../kit/ws-client';
import { createServer } from 'node:http';
import { listen, type TestServer } from '../kit/http';
import { wsEchoBackend } from '../kit/ws-server';
import { quietLogger } from '../kit/gateway';

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
