/**
 * connect-timeout in front of the balancer, as Express's docs suggest it: on its
 * timeout it sets `req.timedout` and passes a 503 to next(err), and Express's
 * final handler writes that answer once the request's body has ended. The
 * balancer leaves the answer to the app from then on:
 * - a body that stalled: the balancer's 408 came first, and the final
 *   handler's write threw ERR_HTTP_HEADERS_SENT outside any handler (the
 *   process exited); also when a socket timeout, not connect-timeout's timer,
 *   set its responder off;
 * - a body that ended after the timeout: the POST went to a backend for a
 *   client answered 503 on the same event;
 * - a WebSocket routed through the app (routeUpgrades): the timeout's 503
 *   closed it, however busy it was.
 */
import { once } from 'node:events';
import { connect } from 'node:net';
import timeout from 'connect-timeout';
import type { Express } from 'express';
import WebSocket from 'ws';
import {
  routeUpgrades,
  type LoadBalanceOptions,
  type LoadBalancerMiddleware,
} from '@loadwise/gateway-plugin';
import { expressGateway } from '../kit/gateway';
import { eventually } from '../kit/fleet';
import { startBackend, type TestServer } from '../kit/http';
import { wsEchoBackend } from '../kit/ws-server';

const servers: Array<{ close(): Promise<void> }> = [];
afterEach(async () => {
  for (const s of servers.splice(0).reverse()) await s.close();
});

/**
 * `app.use(timeout(ms, timeoutOptions))` then the balancer (mounted at `/`), WebSockets
 * through the app. Not for paths under `/no-timeout` (warming the pool up, a slow request
 * ahead of the one under test), whatever their time.
 */
async function gateway(
  url: string,
  ms: number,
  opts: Partial<LoadBalanceOptions> = {},
  timeoutOptions: timeout.TimeoutOptions = {},
  before: (app: Express) => void = () => undefined,
): Promise<TestServer & { lb: LoadBalancerMiddleware }> {
  const gw = await expressGateway(url, opts, (app, lb, server) => {
    const withTimeout = timeout(ms, timeoutOptions);
    app.use((req, res, next) =>
      req.url.startsWith('/no-timeout') ? next() : withTimeout(req, res, next),
    );
    before(app);
    app.use(lb);
    server.on('upgrade', routeUpgrades(app));
  });
  servers.push(gw);
  return gw;
}

/** A backend that records each request's method and path, and answers `slowPath` after `ms`. */
async function recordingBackend(slowPath: string, ms: number) {
  const seen: string[] = [];
  const backend = await startBackend('b', (req, res) => {
    seen.push(`${req.method} ${req.url}`);
    setTimeout(() => res.end('ok'), req.url === slowPath ? ms : 0);
  });
  servers.push(backend);
  return { backend, seen };
}

/** A raw connection to `port`, closed after the test; `received()` is what came back. */
function rawClient(port: number) {
  const socket = connect(port, '127.0.0.1');
  servers.push({ close: async () => void socket.destroy() });
  let received = '';
  socket.setEncoding('latin1');
  socket.on('data', (d: string) => (received += d));
  return { socket, received: () => received };
}

/** A POST's head and the first bytes of its body on a raw socket; collects what comes back. */
function startPost(port: number, path: string) {
  const socket = connect(port, '127.0.0.1');
  let received = '';
  socket.setEncoding('latin1');
  socket.on('data', (d: string) => (received += d));
  socket.on('error', () => undefined);
  socket.write(`POST ${path} HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\n{"a`);
  return { socket, received: () => received, closed: once(socket, 'close') };
}

it("a body that stalls past the app's timeout: the connection closes, no answer of the balancer's, no crash", async () => {
  const backend = await startBackend('b');
  servers.push(backend);
  const gw = await gateway(backend.url, 100, { clientBodyTimeoutMs: 400 });
  const post = startPost(gw.port, '/stall');
  // Before: the balancer's 408 at 400 ms, then the final handler's deferred write threw
  // ERR_HTTP_HEADERS_SENT (an uncaught exception: this test process ended).
  await post.closed;
  expect(post.received()).toBe('');
  await eventually(() => gw.lb.balancer.snapshot().inFlight === 0, 5_000, 'the flow ended');
});

it("a body that stalls past a socket timeout the app's timeout answers: the connection closes, no answer of the balancer's, no crash", async () => {
  const backend = await startBackend('b');
  servers.push(backend);
  // connect-timeout's own timer is far off; the request's socket times out first, which
  // emits 'timeout' on the unfinished request: connect-timeout's responder passes its 503
  // on, without setting req.timedout.
  const gw = await gateway(backend.url, 60_000, { clientBodyTimeoutMs: 500 }, {}, (app) =>
    app.use((req, _res, next) => {
      req.setTimeout(150);
      next();
    }),
  );
  const post = startPost(gw.port, '/stall');
  // Before: the balancer's 408 at 500 ms, then the final handler's deferred write threw
  // ERR_HTTP_HEADERS_SENT (an uncaught exception: this test process ended).
  await post.closed;
  expect(post.received()).toBe('');
  await eventually(() => gw.lb.balancer.snapshot().inFlight === 0, 5_000, 'the flow ended');
});

it("a body that ends after the app's timeout is not sent to a backend: the client has the app's 503", async () => {
  const seen: string[] = [];
  const backend = await startBackend('b', (req, res) => {
    seen.push(`${req.method} ${req.url}`);
    res.end('ok');
  });
  servers.push(backend);
  const gw = await gateway(backend.url, 400);
  // A pooled connection to the backend, so that a dispatch would reach it at once.
  const warm = await fetch(`${gw.url}/no-timeout/warm`);
  expect(await warm.text()).toBe('ok');
  const post = startPost(gw.port, '/orders');
  await new Promise((r) => setTimeout(r, 700));
  post.socket.write('":1234}');
  await eventually(() => post.received().includes('\r\n\r\n'), 5_000, 'an answer');
  expect(post.received()).toMatch(/^HTTP\/1\.1 503 /);
  post.socket.destroy();
  // Before: the backend got the POST the client was told had failed.
  await new Promise((r) => setTimeout(r, 200));
  expect(seen).toEqual(['GET /no-timeout/warm']);
  await eventually(() => gw.lb.balancer.snapshot().inFlight === 0, 5_000, 'the flow ended');
});

it("a WebSocket routed through the app outlives the app's timeout", async () => {
  const ws = await wsEchoBackend((m) => `echo ${String(m)}`);
  servers.push(ws);
  const gw = await gateway(ws.url, 200);
  const client = new WebSocket(`ws://127.0.0.1:${gw.port}/chat`);
  servers.push({ close: async () => void client.terminate() });
  await once(client, 'open');
  const echo = async (text: string): Promise<string> => {
    const reply = once(client, 'message');
    client.send(text);
    return String((await reply)[0]);
  };
  expect(await echo('one')).toBe('echo one');
  // Before: closed (1006) at 200 ms, the app's timeout, by routeUpgrades' final handler.
  await new Promise((r) => setTimeout(r, 500));
  expect(client.readyState).toBe(WebSocket.OPEN);
  expect(await echo('two')).toBe('echo two');
});

it('with respond: false (nobody answers for the balancer), beside a listener of the app, a request past the timeout is proxied as before', async () => {
  const backend = await startBackend('b', (_req, res) => void setTimeout(() => res.end('ok'), 400));
  servers.push(backend);
  const gw = await gateway(backend.url, 150, {}, { respond: false }, (app) =>
    // The app's own 'timeout' listener, which answers nothing: only logs.
    app.use((req, _res, next) => {
      req.setTimeout(120_000, () => undefined);
      next();
    }),
  );
  // The fix before this one left every such request unanswered for good (with any
  // 'timeout' listener on the request, taken for connect-timeout's responder).
  const r = await fetch(`${gw.url}/slow`);
  expect([r.status, await r.text()]).toEqual([200, 'ok']);
});

it('a pipelined request the app answered 503 while it waited its turn is not sent to a backend', async () => {
  const { backend, seen } = await recordingBackend('/no-timeout/first', 500);
  const gw = await gateway(backend.url, 200);
  const { socket, received } = rawClient(gw.port);
  socket.write(
    'GET /no-timeout/first HTTP/1.1\r\nHost: a\r\n\r\n' +
      'POST /second HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nhi',
  );
  await eventually(() => (received().match(/HTTP\/1\.1 /g) ?? []).length === 2, 5_000, 'answers');
  expect(received().match(/HTTP\/1\.1 \d+/g)).toEqual(['HTTP/1.1 200', 'HTTP/1.1 503']);
  await new Promise((r) => setTimeout(r, 200));
  // Before: the POST reached the backend after its 503 (Express had written it into the
  // response that had no socket yet).
  expect(seen).toEqual(['GET /no-timeout/first']);
});

it('a request the app answered 503 while it waited in the saturation queue is not sent to a backend', async () => {
  const { backend, seen } = await recordingBackend('/no-timeout/busy', 600);
  const gw = await gateway(backend.url, 200, { saturation: { maxInFlightPerBackend: 1 } });
  const busy = fetch(`${gw.url}/no-timeout/busy`);
  await eventually(() => seen.length === 1, 5_000, 'the backend busy');
  // Past requestBuffering's 64 KiB: queued with the rest of its body still to come, which
  // comes after the slot freed (600 ms), so the final handler still waits for it then.
  const { socket, received } = rawClient(gw.port);
  socket.write(
    `POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: 100000\r\n\r\n${'x'.repeat(70_000)}`,
  );
  expect(await (await busy).text()).toBe('ok');
  await new Promise((r) => setTimeout(r, 200));
  socket.write('y'.repeat(30_000));
  await eventually(() => received().includes('\r\n\r\n'), 5_000, 'an answer');
  expect(received()).toMatch(/^HTTP\/1\.1 503 /);
  await new Promise((r) => setTimeout(r, 200));
  // Before: dispatched out of the queue once the slot freed, after the client's 503.
  expect(seen).toEqual(['GET /no-timeout/busy']);
  await eventually(() => gw.lb.balancer.snapshot().inFlight === 0, 5_000, 'the flows ended');
});
