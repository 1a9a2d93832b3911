/**
 * The idle-close race: a backend closes a keep-alive connection as the gateway
 * hands it the next request (Go's IdleTimeout, HAProxy's and nginx's
 * keep-alive timeouts send no Keep-Alive hint to say when). Modelled
 * deterministically: the backend answers one request per connection and
 * resets the connection when another arrives on it, before reading it. A
 * request that may go again goes again, once, on a new connection; the
 * backend is not charged.
 */
import { createServer, type Server } from 'node:http';
import type { Socket } from 'node:net';
import { WebSocketServer } from 'ws';
import { counter, startLocalGateway, type TestGateway } from '../kit/gateway';
import { listen, send, type TestServer } from '../kit/http';
import { wsExchange } from '../kit/ws-client';

interface ResettingBackend extends TestServer {
  /** Requests answered, and connections reset with a request on them. */
  answered: number;
  resets: number;
}

/** Answers the first request of each connection (WebSocket upgrades too); resets it at the next. */
async function resettingBackend(): Promise<ResettingBackend> {
  const served = new WeakSet<Socket>();
  const state = { answered: 0, resets: 0 };
  const reset = (socket: Socket): boolean => {
    if (!served.has(socket)) return false;
    state.resets++;
    socket.resetAndDestroy();
    return true;
  };
  const server: Server = createServer((req, res) => {
    if (reset(req.socket)) return;
    served.add(req.socket);
    state.answered++;
    req.resume();
    res.end('ok');
  });
  const wss = new WebSocketServer({ noServer: true });
  server.on('upgrade', (req, socket: Socket, head) => {
    if (reset(socket)) return;
    state.answered++;
    wss.handleUpgrade(req, socket, head, (ws) =>
      ws.on('message', (d) => ws.send(`echo ${String(d)}`)),
    );
  });
  const s = await listen(server);
  return Object.assign(state, {
    ...s,
    close: async () => {
      for (const c of wss.clients) c.terminate();
      wss.close();
      await s.close();
    },
  });
}

describe('a pooled connection the backend closed as it was reused', () => {
  let b: ResettingBackend;
  let gw: TestGateway | undefined;
  beforeEach(async () => {
    b = await resettingBackend();
    gw = await startLocalGateway({ backends: [{ id: 'b', url: b.url }] });
  });
  afterEach(async () => {
    await gw?.close();
    gw = undefined;
    await b.close();
  });

  it('sends an idempotent request again on a new connection, without charging the backend', async () => {
    // Before: every request after the first found the closed connection, and with one
    // backend got 503 LW_GW_NO_BACKEND, each counted towards the backend's ejection.
    for (let i = 0; i < 6; i++) {
      const r = await send(`${gw!.url}/${i}`);
      expect([i, r.status, r.headers['x-loadwise-error']]).toEqual([i, 200, undefined]);
    }
    expect([b.answered, b.resets]).toEqual([6, 5]);
    expect(gw!.backend('b')).toMatchObject({ failuresTotal: 0, ejections: 0, state: 'healthy' });
    expect(await counter(gw!, 'retries_total', { backend: 'b' })).toBe(5);
  });

  it("closes the pool's other idle connections: the request sent again gets a new one", async () => {
    // Three connections in the pool, idle together: the backend resets the next request on
    // each. Before this, the request sent again was handed the next of them (LIFO), reset
    // too, and answered 503.
    await Promise.all([0, 1, 2].map(() => send(`${gw!.url}/warm`)));
    const opened = b.answered;
    expect(opened).toBeGreaterThanOrEqual(2);
    for (let i = 0; i < 3; i++) {
      const r = await send(`${gw!.url}/${i}`);
      expect([i, r.status, r.headers['x-loadwise-error']]).toEqual([i, 200, undefined]);
    }
    expect(b.resets).toBe(3);
    expect(gw!.backend('b')).toMatchObject({ failuresTotal: 0, ejections: 0 });
  });

  it('is a retry: none with retry.maxRetries 0', async () => {
    await gw!.close();
    gw = await startLocalGateway({
      backends: [{ id: 'b', url: b.url }],
      retry: { maxRetries: 0 },
    });
    expect((await send(`${gw.url}/`)).status).toBe(200);
    const r = await send(`${gw.url}/`);
    expect([r.status, r.headers['x-loadwise-error']]).toEqual([502, 'LW_GW_UPSTREAM_FAILED']);
    expect([b.answered, b.resets]).toEqual([1, 1]);
  });

  it('does not send a POST again: the backend may have read it', async () => {
    expect((await send(`${gw!.url}/`)).status).toBe(200);
    const r = await send(`${gw!.url}/`, { method: 'POST', body: 'x' });
    expect([r.status, r.headers['x-loadwise-error']]).toEqual([502, 'LW_GW_UPSTREAM_FAILED']);
    expect([b.answered, b.resets]).toEqual([1, 1]);
  });

  it('sends a WebSocket upgrade again on a new connection', async () => {
    expect((await send(`${gw!.url}/`)).status).toBe(200);
    // The upgrade is handed the pooled connection the GET left. Before: 502.
    expect(await wsExchange(`ws://127.0.0.1:${gw!.port}/`)).toEqual({ echo: 'echo ping' });
    expect([b.answered, b.resets]).toEqual([2, 1]);
    expect(gw!.backend('b')).toMatchObject({ failuresTotal: 0, ejections: 0 });
  });
});
