/**
 * A WebSocket's life around the gateway's own: `lb.close()` waits for open
 * WebSockets within its grace and then cuts them, client and backend side,
 * so the shutdown recipe's process ends by itself; every answer the gateway
 * writes on an upgrade's socket is coded, a backend that cannot be reached
 * included; an open WebSocket is bounded (`webSockets`: idle timeout, per
 * client, in all). Real `ws` servers and clients, a real Express app with
 * `routeUpgrades(app)`.
 */
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import express from 'express';
import WebSocket, { WebSocketServer } from 'ws';
import {
  loadBalance,
  routeUpgrades,
  type LoadBalanceOptions,
  type LoadBalancerMiddleware,
} from '@loadwise/gateway-plugin';
import { listen, refusedPort, type TestServer } from '../kit/http';
import { quietLogger } from '../kit/gateway';
import { eventually } from '../kit/fleet';

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

async function gateway(
  url: string,
  extra: Partial<LoadBalanceOptions> = {},
): Promise<TestServer & { lb: LoadBalancerMiddleware }> {
  const lb = loadBalance({
    backends: [{ id: 'b', url }],
    healthCheck: false,
    overload: false,
    retry: false,
    logger: quietLogger,
    ...extra,
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

/** The refusal of an upgrade: status, error code, Retry-After. */
function refusal(port: number): Promise<[number, unknown, unknown]> {
  const ws = new WebSocket(`ws://127.0.0.1:${port}/ws`);
  ws.on('error', () => {});
  return new Promise((resolve, reject) => {
    ws.once('open', () => {
      ws.terminate();
      reject(new Error('the upgrade was not refused'));
    });
    ws.once('unexpected-response', (_req, res) => {
      res.resume();
      resolve([res.statusCode ?? 0, res.headers['x-loadwise-error'], res.headers['retry-after']]);
      ws.terminate();
    });
  });
}

/** A metric's value in the gateway's registry: the sample with these labels. */
async function metric(
  lb: LoadBalancerMiddleware,
  name: string,
  labels: Record<string, string> = {},
): Promise<number | undefined> {
  const m = await lb.balancer.metricsRegistry.getSingleMetric(name)?.get();
  const match = m?.values.find((v) =>
    Object.entries(labels).every(([k, want]) => (v.labels as Record<string, unknown>)[k] === want),
  );
  return match?.value;
}

describe('bounds on open WebSockets (webSockets)', () => {
  it('closes a WebSocket idle for idleTimeoutMs, both sides, and leaves a busy one open', async () => {
    const backend = await echoBackend();
    const gw = await gateway(backend.url, { webSockets: { idleTimeoutMs: 1_500 } });
    servers.push(backend, gw);
    const quiet = await openSocket(gw.port);
    const busy = await openSocket(gw.port);
    // The busy one sends every 100 ms, so it is never 1.5 s without a byte; the
    // backend's answers alone would keep it open too (a write is activity).
    let echoes = 0;
    busy.on('message', () => echoes++);
    const ticker = setInterval(() => busy.send('tick'), 100);
    try {
      await eventually(() => quiet.readyState === WebSocket.CLOSED, 10_000, 'the idle one closed');
      expect(busy.readyState).toBe(WebSocket.OPEN);
      expect(echoes).toBeGreaterThan(5);
      // The quiet one's backend connection went with it; the busy one's stays.
      await eventually(
        () => backend.open() === 1,
        5_000,
        'the backend side of the idle one closed',
      );
      expect(gw.lb.balancer.snapshot().openWebSockets).toBe(1);
      expect(await metric(gw.lb, 'loadwise_websocket_idle_closed_total')).toBe(1);
      expect(await metric(gw.lb, 'loadwise_websockets_open')).toBe(1);
    } finally {
      clearInterval(ticker);
    }
    busy.close();
    await closed(busy);
  });

  it('maxPerClient: one more from the same address gets 429, and a closed one frees its place', async () => {
    const backend = await echoBackend();
    const gw = await gateway(backend.url, { webSockets: { maxPerClient: 2 } });
    servers.push(backend, gw);
    const a = await openSocket(gw.port);
    const b = await openSocket(gw.port);
    expect(await refusal(gw.port)).toEqual([429, 'LW_GW_CLIENT_LIMIT', '1']);
    expect(backend.open()).toBe(2);
    a.close();
    await closed(a);
    await eventually(() => gw.lb.balancer.snapshot().openWebSockets === 1, 5_000, 'a released');
    const c = await openSocket(gw.port);
    for (const ws of [b, c]) ws.close();
    await Promise.all([closed(b), closed(c)]);
  });

  it('maxOpen: one more gets 503 LW_GW_OVERLOADED with Retry-After, counted as shed', async () => {
    const backend = await echoBackend();
    const gw = await gateway(backend.url, { webSockets: { maxOpen: 2, maxPerClient: false } });
    servers.push(backend, gw);
    const open = [await openSocket(gw.port), await openSocket(gw.port)];
    expect(await refusal(gw.port)).toEqual([503, 'LW_GW_OVERLOADED', '1']);
    expect(gw.lb.balancer.snapshot().openWebSockets).toBe(2);
    expect(await metric(gw.lb, 'loadwise_shed_total', { reason: 'overloaded' })).toBe(1);
    // Plain requests are not WebSockets: still served.
    const res = await fetch(`http://127.0.0.1:${gw.port}/plain`);
    expect([res.status, await res.text()]).toEqual([200, 'http']);
    for (const ws of open) ws.close();
    await Promise.all(open.map(closed));
  });
});
