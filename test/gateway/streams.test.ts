/**
 * The stream lane (docs/gateway.md, "Streams"): an answer of no stated length
 * still running `streams.afterMs` after its head leaves the request bounds
 * (saturation.maxInFlightPerBackend, the pool's maxSockets,
 * maxInFlightPerClient) and the strategy's load, under bounds of its own.
 * Real backends, real sockets; no broker.
 */
import { createServer, request, type IncomingMessage, type ServerResponse } from 'node:http';
import { connect, type Socket } from 'node:net';
import type { LoadBalanceOptions } from '@loadwise/gateway-plugin';
import { internals } from '@loadwise/gateway-plugin/internals';
import { startLocalGateway, type TestGateway } from '../kit/gateway';
import { listen, send, startBackend, type TestServer } from '../kit/http';
import { until } from '../kit/raw-http';

jest.setTimeout(30_000);

/** A client of an event stream: resolves once the first event is in. */
interface StreamClient {
  first: Promise<string>;
  /** Resolves when the client's connection ends (the gateway cut it or the stream ended). */
  ended: Promise<string>;
  close(): void;
}

function openStream(url: string): StreamClient {
  let text = '';
  let gotFirst: (s: string) => void;
  let gotEnd: (s: string) => void;
  const first = new Promise<string>((r) => (gotFirst = r));
  const ended = new Promise<string>((r) => (gotEnd = r));
  const req = request(`${url}/events`, { agent: false }, (res) => {
    res.setEncoding('utf8');
    res.on('data', (c: string) => {
      text += c;
      if (text.includes('\n\n')) gotFirst(text);
    });
    res.on('close', () => gotEnd(text));
  });
  req.on('error', () => gotEnd(text));
  req.end();
  return { first, ended, close: () => req.destroy() };
}

let backend: TestServer | undefined;
let gw: TestGateway | undefined;
/** The backend's open event streams: ended by end(), or at close. */
const streams: ServerResponse[] = [];

/** `/events`: an event stream (one event, then held open); anything else: JSON at once. */
async function streamingBackend(
  opts: { length?: boolean; type?: string } = {},
): Promise<TestServer> {
  return startBackend('b', (req: IncomingMessage, res: ServerResponse) => {
    if (req.url === '/events') {
      const head: Record<string, string> = {
        'content-type': opts.type ?? 'text/event-stream; charset=utf-8',
      };
      // A download that said its length and trickles: a reply, never a stream.
      if (opts.length) head['content-length'] = '1000';
      res.writeHead(200, head);
      res.write('data: hello\n\n');
      streams.push(res);
      return;
    }
    res.setHeader('content-type', 'application/json');
    res.end('{"ok":true}');
  });
}

async function gateway(extra: Partial<LoadBalanceOptions>): Promise<TestGateway> {
  return startLocalGateway({
    backends: [{ id: 'b', url: backend!.url }],
    streams: { afterMs: 50 },
    ...extra,
  });
}

afterEach(async () => {
  for (const s of streams.splice(0)) s.destroy();
  await gw?.close();
  gw = undefined;
  await backend?.close();
  backend = undefined;
});

describe('long streamed answers leave the request bounds', () => {
  it('open event streams do not take the backend slots other requests need', async () => {
    backend = await streamingBackend();
    gw = await gateway({
      agent: { maxSockets: 2 },
      maxInFlightPerClient: false,
      saturation: { queueTimeoutMs: 1_000 },
    });
    const clients = [openStream(gw.url), openStream(gw.url)];
    for (const c of clients) expect(await c.first).toContain('data: hello');
    await until(() => gw!.snapshot().openStreams === 2);
    // Before: both slots of the backend held for good, every other request waited
    // queueTimeoutMs for 503 LW_GW_SATURATED.
    const replies = await Promise.all([send(`${gw.url}/a`), send(`${gw.url}/b`)]);
    expect(replies.map((r) => r.status)).toEqual([200, 200]);
    expect(gw.snapshot().inFlight).toBe(0);
    expect(gw.backend('b').inFlight).toBe(0);
    // Their time to the head is the backend's latency, not how long they stay open.
    expect(gw.backend('b').latencyMs).not.toBeNull();
    for (const c of clients) c.close();
    await until(() => gw!.snapshot().openStreams === 0);
  });

  it('streams from one address do not use up its request places', async () => {
    backend = await streamingBackend();
    gw = await gateway({ maxInFlightPerClient: 2 });
    const clients = [openStream(gw.url), openStream(gw.url)];
    for (const c of clients) await c.first;
    await until(() => gw!.snapshot().openStreams === 2);
    // Before: 429 LW_GW_CLIENT_LIMIT for every request of that address while they ran.
    const reply = await send(`${gw.url}/x`);
    expect(reply.status).toBe(200);
    expect(internals(gw.lb).flow.clients?.clients).toBe(0);
    for (const c of clients) c.close();
    await until(() => gw!.snapshot().openStreams === 0);
  });

  it('a stream whose request body ends after streams.afterMs enters the lane once it is in', async () => {
    // Answers at once, reading the body as it comes.
    backend = await listen(
      createServer((req, res) => {
        req.resume();
        if (req.url !== '/events') return void res.end('{"ok":true}');
        res.writeHead(200, { 'content-type': 'text/event-stream' });
        res.write('data: hello\n\n');
        streams.push(res);
      }),
    );
    gw = await gateway({ maxInFlightPerClient: 2 });
    const sockets: Socket[] = [];
    const firstEvents: Promise<void>[] = [];
    for (let k = 0; k < 2; k++) {
      const socket = connect(gw.port, '127.0.0.1');
      sockets.push(socket);
      socket.on('error', () => {});
      let text = '';
      firstEvents.push(
        new Promise((resolve) =>
          socket.on('data', (chunk: Buffer) => {
            if ((text += chunk.toString('latin1')).includes('data: hello')) resolve();
          }),
        ),
      );
      // More than requestBuffering's 64 KiB: dispatched, the rest of the body still to come.
      socket.write('POST /events HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n');
      socket.write(Buffer.alloc(70_000, 1));
    }
    await Promise.all(firstEvents);
    // Past afterMs with the body still coming: not yet a stream.
    await new Promise((resolve) => setTimeout(resolve, 200));
    expect(gw.snapshot().openStreams).toBe(0);
    for (const socket of sockets) socket.write(Buffer.alloc(30_000, 1));
    // Before: they stayed requests for as long as they ran, the address's two places held,
    // and its next request got 429 LW_GW_CLIENT_LIMIT.
    await until(() => gw!.snapshot().openStreams === 2);
    expect(gw.snapshot().inFlight).toBe(0);
    expect((await send(`${gw.url}/x`)).status).toBe(200);
    for (const socket of sockets) socket.destroy();
    await until(() => gw!.snapshot().openStreams === 0);
  });

  it('past streams.maxPerClient a stream stays a request; places come back as streams end', async () => {
    backend = await streamingBackend();
    gw = await gateway({ maxInFlightPerClient: 3, streams: { afterMs: 50, maxPerClient: 1 } });
    const clients = [openStream(gw.url), openStream(gw.url)];
    for (const c of clients) await c.first;
    await until(() => gw!.snapshot().openStreams === 1 && gw!.snapshot().inFlight === 1);
    // The stream left in the request bounds holds one of the address's three places.
    expect(internals(gw.lb).flow.clients?.count('127.0.0.1')).toBe(1);
    // The backend ends both streams: nothing is held any more.
    for (const s of streams.splice(0)) s.end();
    await Promise.all(clients.map((c) => c.ended));
    await until(
      () =>
        gw!.snapshot().openStreams === 0 &&
        gw!.snapshot().inFlight === 0 &&
        internals(gw!.lb).flow.clients?.clients === 0 &&
        internals(gw!.lb).flow.active === 0,
    );
    expect(gw.backend('b').failuresTotal).toBe(0);
    const pool = internals(gw.lb).registry.get('b')!.agent;
    expect(pool.maxSockets).toBe(256);
  });

  it('a quiet stream in the lane is cut after requestTimeoutMs, not held against the backend', async () => {
    backend = await streamingBackend();
    gw = await gateway({ requestTimeoutMs: 400, outlier: { consecutiveFailures: 1 } });
    const client = openStream(gw.url);
    await client.first;
    await until(() => gw!.snapshot().openStreams === 1);
    // Cut by the gateway: the client's connection ends with the one event it got.
    expect(await client.ended).toBe('data: hello\n\n');
    await until(() => gw!.snapshot().openStreams === 0);
    expect([gw.backend('b').state, gw.backend('b').ejections]).toEqual(['healthy', 0]);
    expect((await send(`${gw.url}/x`)).status).toBe(200);
  });

  it('streams.contentTypes names the answers that are streams', async () => {
    backend = await streamingBackend({ type: 'application/x-ndjson' });
    gw = await gateway({
      maxInFlightPerClient: 1,
      streams: { afterMs: 50, contentTypes: ['application/x-ndjson'] },
    });
    const client = openStream(gw.url);
    await client.first;
    await until(() => gw!.snapshot().openStreams === 1);
    expect((await send(`${gw.url}/x`)).status).toBe(200);
    client.close();
  });

  it.each([
    ['an answer that said its length is a reply, however long it runs', { length: true }, {}],
    ['streams: false keeps every stream a request', {}, { streams: false as const }],
    // Server-side rendering or an export: chunks while the backend works. Let out after a
    // second, twelve such answers ran on a backend bounded to two.
    ['a chunked answer that is no event stream stays a request', { type: 'text/html' }, {}],
  ])('%s', async (_name, answer, options) => {
    backend = await streamingBackend(answer);
    gw = await gateway({ maxInFlightPerClient: 1, ...options });
    const client = openStream(gw.url);
    await client.first;
    // Well past afterMs, it still holds its request place and its backend slot.
    await new Promise((r) => setTimeout(r, 200));
    expect([gw.snapshot().openStreams, gw.snapshot().inFlight]).toEqual([0, 1]);
    expect((await send(`${gw.url}/x`)).status).toBe(429);
    client.close();
  });
});
