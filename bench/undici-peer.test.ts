/**
 * The Express + undici peer (bench/procs/gateway-undici.ts) must be a proxy,
 * not a shortcut: through it, a GET and a POST with a body (with a length, and
 * chunked) get the backend's status, end-to-end headers and body byte for
 * byte, round robin over the backends, with hop-by-hop headers dropped both
 * ways; a backend that does not answer gives a 502. Real HTTP servers on port
 * 0 and the real gateway process (the built bench/dist, as bench/smoke.test.ts).
 */
import { createHash, randomBytes } from 'node:crypto';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { forkProc, type Proc } from './lib/procs';

interface Answer {
  status: number;
  headers: http.IncomingHttpHeaders;
  body: Buffer;
  /** The request went on a kept-alive connection of `agent`. */
  reused: boolean;
}

function send(
  url: string,
  opts: { method?: string; headers?: http.OutgoingHttpHeaders; body?: Buffer[] } = {},
  agent: http.Agent | false = false,
): Promise<Answer> {
  return new Promise((resolve, reject) => {
    const req = http.request(url, { method: opts.method ?? 'GET', headers: opts.headers, agent });
    req.on('response', (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () =>
        resolve({
          status: res.statusCode ?? 0,
          headers: res.headers,
          body: Buffer.concat(chunks),
          reused: req.reusedSocket,
        }),
      );
      res.on('error', reject);
    });
    req.on('error', reject);
    for (const chunk of opts.body ?? []) req.write(chunk);
    req.end();
  });
}

/** What a backend saw of each request. */
interface Seen {
  backend: string;
  method: string;
  url: string;
  headers: http.IncomingHttpHeaders;
  body: Buffer;
}

function startBackend(id: string, seen: Seen[]): Promise<http.Server> {
  const server = http.createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const body = Buffer.concat(chunks);
      seen.push({ backend: id, method: req.method!, url: req.url!, headers: req.headers, body });
      res.setHeader('x-backend-id', id);
      res.setHeader('set-cookie', ['a=1', 'b=2']);
      res.setHeader('x-body-sha256', createHash('sha256').update(body).digest('hex'));
      // Hop-by-hop: meant for the gateway's connection, not for the client.
      // A value the gateway's own Keep-Alive (65 s, bench/procs/gateway-diag.ts) never has.
      res.setHeader('keep-alive', 'timeout=61');
      res.setHeader('connection', 'keep-alive, x-private');
      res.setHeader('x-private', 'for the next hop only');
      if (req.method === 'POST') {
        // Echo, reversed, in two writes and chunked: the body is streamed back.
        res.writeHead(201, { 'content-type': 'application/octet-stream' });
        const reversed = Buffer.from(body).reverse();
        res.write(reversed.subarray(0, 1000));
        res.end(reversed.subarray(1000));
      } else {
        res.setHeader('content-type', 'text/plain');
        res.end(`${id} ${req.method} ${req.url}`);
      }
    });
  });
  server.keepAliveTimeout = 65_000;
  return new Promise((resolve) => server.listen(0, '127.0.0.1', () => resolve(server)));
}

const urlOf = (s: http.Server): string => `http://127.0.0.1:${(s.address() as AddressInfo).port}`;

/** The headers a client should see: the backend's, minus those that describe one connection. */
function endToEnd(h: http.IncomingHttpHeaders): http.IncomingHttpHeaders {
  const out = { ...h };
  for (const k of ['date', 'connection', 'keep-alive', 'transfer-encoding', 'x-private'])
    delete out[k];
  return out;
}

async function startGateway(backends: string[]): Promise<{ proc: Proc; url: string }> {
  const proc = forkProc('undici-test', 'gateway-undici.js', {
    backends: backends.map((url, i) => ({ id: `b${i + 1}`, url })),
  });
  const { port } = await proc.waitFor<{ port: number }>('ready', 20_000);
  return { proc, url: `http://127.0.0.1:${port}` };
}

describe('Express + undici peer', () => {
  const seen: Seen[] = [];
  let b1: http.Server;
  let b2: http.Server;
  let gw: { proc: Proc; url: string };

  beforeAll(async () => {
    b1 = await startBackend('b1', seen);
    b2 = await startBackend('b2', seen);
    gw = await startGateway([urlOf(b1), urlOf(b2)]);
  });

  afterAll(async () => {
    await gw?.proc.stop();
    for (const s of [b1, b2]) {
      s?.closeAllConnections();
      await new Promise((r) => s?.close(r));
    }
  });

  beforeEach(() => {
    seen.length = 0;
  });

  it('answers a GET as the backend does, round robin', async () => {
    const direct = await send(`${urlOf(b1)}/x/y?q=1`);
    seen.length = 0;
    const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
    const got: Answer[] = [];
    for (let k = 0; k < 4; k++) got.push(await send(`${gw.url}/x/y?q=1`, {}, agent));
    agent.destroy();

    expect(seen.map((s) => s.backend)).toEqual(['b1', 'b2', 'b1', 'b2']);
    // The client's connection to the gateway is kept alive across answers.
    expect(got.map((g) => g.reused)).toEqual([false, true, true, true]);
    expect(got[0]!.status).toBe(200);
    expect(got[0]!.body.equals(direct.body)).toBe(true);
    expect(endToEnd(got[0]!.headers)).toEqual(endToEnd(direct.headers));
    expect(got[1]!.body.toString()).toBe('b2 GET /x/y?q=1');
    // Hop-by-hop headers of the backend's answer stay with the gateway.
    expect(got[0]!.headers['x-private']).toBeUndefined();
    expect(got[0]!.headers['keep-alive']).not.toBe('timeout=61');
    // A GET has no body, and none is invented on the way.
    expect(seen[0]!.headers['transfer-encoding']).toBeUndefined();
    expect(seen[0]!.headers['content-length']).toBeUndefined();
    expect(seen[0]!.body.length).toBe(0);
  });

  it.each([
    ['with a content-length', true],
    ['chunked', false],
  ])('streams a POST body %s to the backend and its answer back', async (_label, withLength) => {
    const body = randomBytes(200_000);
    const headers: http.OutgoingHttpHeaders = {
      'content-type': 'application/octet-stream',
      'x-request-id': 'r-1',
      connection: 'keep-alive, x-hop',
      'x-hop': 'for the gateway only',
      ...(withLength ? { 'content-length': body.length } : {}),
    };
    const parts = [body.subarray(0, 50_000), body.subarray(50_000)];
    const got = await send(`${gw.url}/upload`, { method: 'POST', headers, body: parts });
    const viaGateway = seen.pop()!;
    // The same request straight to the backend the gateway picked.
    const backend = viaGateway.backend === 'b1' ? b1 : b2;
    const direct = await send(`${urlOf(backend)}/upload`, { method: 'POST', headers, body: parts });
    const viaDirect = seen.pop()!;

    expect(got.status).toBe(201);
    expect(got.body.equals(direct.body)).toBe(true);
    expect(got.body.equals(Buffer.from(body).reverse())).toBe(true);
    expect(endToEnd(got.headers)).toEqual(endToEnd(direct.headers));
    expect(viaGateway.body.equals(body)).toBe(true);
    expect(viaGateway.method).toBe('POST');
    expect(viaGateway.url).toBe('/upload');
    expect(viaGateway.headers['x-request-id']).toBe('r-1');
    // Host passes as the client sent it (http-proxy-middleware's default too).
    expect(viaDirect.headers.host).toBe(new URL(urlOf(backend)).host);
    expect(viaGateway.headers.host).toBe(new URL(gw.url).host);
    expect(viaGateway.headers['x-hop']).toBeUndefined();
    if (withLength) expect(viaGateway.headers['content-length']).toBe(String(body.length));
  });

  it('answers 502 when the backend does not answer', async () => {
    const closed = await startBackend('gone', seen);
    const url = urlOf(closed);
    await new Promise((r) => closed.close(r));
    const lone = await startGateway([url]);
    try {
      const got = await send(`${lone.url}/`);
      expect(got.status).toBe(502);
    } finally {
      await lone.proc.stop();
    }
  });
});
