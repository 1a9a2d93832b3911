/**
 * A WebSocket's life around the gateway's own: `lb.close()` waits for open
 * WebSockets within its grace and then cuts them, client and backend side,
 * so the shutdown recipe's process ends by itself; every answer the gateway
 * writes on an upgrade's socket is coded, a backend that cannot be reached
 * included. Real `ws` servers and clients, a real Express app with
 * `routeUpgrades(app)`.
 */
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import express from 'express';
import WebSocket, { WebSocketServer } from 'ws';
import { loadBalance, routeUpgrades, type LoadBalancerMiddleware } from '@loadwise/gateway-plugin';
import { listen, refusedPort, type TestServer } from '../kit/http';
import { quietLogger } from '../kit/gateway';

jest.setTimeout(30_000);

interface Echo extends TestServer {
  wss: WebSocketServer;
  /** Connections the backend holds now. */
  open(): number;
}

async function echoBackend(): Promise<Echo> {
  const server = createServer((_req, res) => res.end('http'));
  const wss = new WebSocketServer({ server });
  wss.on('connection', (socket) => socket.on('message', (d) => socket.send(`echo ${String(d)}`)));
  const s = await listen(server);
  return {
    ...s,
    wss,
    open: () => wss.clients.size,
    close: async () => {
      for (const c of wss.clients) c.terminate();
      wss.close();
      await s.close();
    },
  };
}

async function gateway(url: string): Promise<TestServer & { lb: LoadBalancerMiddleware }> {
  const lb = loadBalance({
    backends: [{ id: 'b', url }],
    healthCheck: false,
    overload: false,
    retry: false,
    logger: quietLogger,
  });
  const app = express();
  app.use(lb);
  const server = createServer(app);
  server.on('upgrade', routeUpgrades(app));
  const s = await listen(server);
  return {
    ...s,
    lb,
    close: async () => {
      await s.close();
      await lb.close({ graceMs: 0 });
    },
  };
}

/** An open client WebSocket through the gateway, echo checked. */
async function openSocket(port: number): Promise<WebSocket> {
  const ws = new WebSocket(`ws://127.0.0.1:${port}/ws`);
  await new Promise<void>((resolve, reject) => {
    ws.once('open', () => resolve());
    ws.once('error', reject);
  });
  const reply = new Promise<string>((resolve) => ws.once('message', (d) => resolve(String(d))));
  ws.send('hi');
  expect(await reply).toBe('echo hi');
  return ws;
}

const closed = (ws: WebSocket): Promise<void> =>
  ws.readyState === WebSocket.CLOSED
    ? Promise.resolve()
    : new Promise((resolve) => ws.once('close', () => resolve()));

const servers: TestServer[] = [];
afterEach(async () => {
  for (const s of servers.splice(0).reverse()) await s.close();
});

describe('WebSockets at shutdown', () => {
  it('lb.close() waits for an open WebSocket within its grace: it ends when the socket does', async () => {
    const backend = await echoBackend();
    const gw = await gateway(backend.url);
    servers.push(backend, gw);
    const ws = await openSocket(gw.port);
    let resolved = false;
    const closing = gw.lb.close({ graceMs: 60_000 }).then(() => (resolved = true));
    // New upgrades are refused at once, coded.
    const refused = new WebSocket(`ws://127.0.0.1:${gw.port}/ws`);
    refused.on('error', () => {}); // terminate() below, before any open
    const status = await new Promise<[number, unknown]>((resolve) =>
      refused.once('unexpected-response', (_req, res) => {
        res.resume();
        resolve([res.statusCode ?? 0, res.headers['x-loadwise-error']]);
      }),
    );
    refused.terminate();
    expect(status).toEqual([503, 'LW_GW_DRAINING']);
    expect(resolved).toBe(false);
    ws.close();
    await closing;
    expect(resolved).toBe(true);
  });

  it('cuts the WebSockets still open when the grace ends, the backend side too', async () => {
    const backend = await echoBackend();
    const gw = await gateway(backend.url);
    servers.push(backend, gw);
    const sockets = [await openSocket(gw.port), await openSocket(gw.port)];
    expect(backend.open()).toBe(2);
    await gw.lb.close({ graceMs: 100 });
    await Promise.all(sockets.map(closed));
    // The backend sees its connections end (a closing handshake is not owed: they were cut).
    await new Promise<void>((resolve) => {
      const check = (): void => (backend.open() === 0 ? resolve() : void setImmediate(check));
      check();
    });
  });
});

describe('answers on an upgrade socket', () => {
  it('a backend that cannot be reached: 502 with its code, not a hang-up', async () => {
    const gw = await gateway(`http://127.0.0.1:${await refusedPort()}`);
    servers.push(gw);
    const ws = new WebSocket(`ws://127.0.0.1:${(gw.server.address() as AddressInfo).port}/ws`);
    const answer = await new Promise<[number, unknown]>((resolve, reject) => {
      ws.once('unexpected-response', (_req, res) => {
        res.resume();
        resolve([res.statusCode ?? 0, res.headers['x-loadwise-error']]);
      });
      ws.once('error', reject);
    });
    ws.on('error', () => {});
    ws.terminate();
    expect(answer).toEqual([502, 'LW_GW_UPSTREAM_FAILED']);
  });
});
