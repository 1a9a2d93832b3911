/**
 * The middleware of a real gateway around the balancer: what runs before it
 * still reads the request as the client sent it once the balancer has
 * proxied it (Express derives req.ip, req.protocol and req.secure from the
 * headers whenever they are asked for, and morgan and express-session ask at
 * the answer's end); and compression() mounted before it neither holds back
 * an event stream's events nor the dashboard's.
 */
import { createServer, request, type IncomingMessage, type ServerResponse } from 'node:http';
import { connect } from 'node:net';
import { createGunzip } from 'node:zlib';
import compression from 'compression';
import express from 'express';
import { listen, send, type TestServer } from '../kit/http';
import { rawExchange } from '../kit/raw-http';
import { startLocalGateway, type TestGateway } from '../kit/gateway';
import { internals } from '@loadwise/gateway-plugin/internals';

/** What the backend was sent: its headers. */
function echoHeaders(): Promise<TestServer> {
  return listen(
    createServer((req, res) => {
      req.resume();
      req.on('end', () => {
        res.setHeader('content-type', 'application/json');
        res.end(JSON.stringify(req.headers));
      });
    }),
  );
}

describe("the app's view of a proxied request", () => {
  let backend: TestServer;
  let gw: TestGateway;
  /** What a middleware before the balancer read once the answer was out. */
  let seen: { headers: IncomingMessage['headers']; ip: string; protocol: string } | undefined;
  beforeAll(async () => {
    backend = await echoHeaders();
    gw = await startLocalGateway({ backends: [{ id: 'b', url: backend.url }] }, (app, lb) => {
      // A TLS-terminating proxy in front, as Express is told of it.
      app.set('trust proxy', 1);
      app.use((req, res, next) => {
        res.on('finish', () => {
          seen = { headers: { ...req.headers }, ip: req.ip ?? '', protocol: req.protocol };
        });
        next();
      });
      app.use(express.json());
      app.use(lb);
    });
  });
  afterAll(async () => {
    await gw.close();
    await backend.close();
  });

  it('keeps req.headers as the client sent them; the backend gets the gateway its own', async () => {
    seen = undefined;
    const body = JSON.stringify({ n: 1 });
    const clientHeaders = {
      'content-type': 'application/json',
      'x-forwarded-for': '203.0.113.7',
      'x-forwarded-proto': 'https',
      'x-real-ip': '198.51.100.1',
      connection: 'keep-alive',
      'keep-alive': 'timeout=5',
      'content-length': String(body.length + 3),
    };
    const r = await send(`${gw.url}/login`, {
      method: 'POST',
      headers: clientHeaders,
      body: `${body}   `,
    });
    expect(r.status).toBe(200);
    const sent = JSON.parse(r.body) as Record<string, string>;
    // The backend's: trustForwarded is 0, so the gateway's own view replaces the client's;
    // hop-by-hop headers gone; the body parsed and sent again with its own length.
    expect(sent['x-forwarded-for']).toBe('127.0.0.1');
    expect(sent['x-forwarded-proto']).toBe('http');
    expect(sent['x-real-ip']).toBe('127.0.0.1');
    expect(sent['keep-alive']).toBeUndefined();
    expect(sent['content-length']).toBe(String(body.length));
    expect(sent['x-loadwise-via']).toBeDefined();
    // The app's: as the client sent them, read after the answer went out.
    await waitFor(() => seen !== undefined);
    for (const [name, value] of Object.entries(clientHeaders))
      expect(seen!.headers[name]).toBe(value);
    expect(seen!.headers['x-loadwise-via']).toBeUndefined();
    expect(seen!.ip).toBe('203.0.113.7');
    expect(seen!.protocol).toBe('https');
  });
});

describe('what hooks and early errors see', () => {
  let backend: TestServer;
  let gw: TestGateway;
  let seen: Record<string, unknown> = {};
  beforeAll(async () => {
    backend = await echoHeaders();
    gw = await startLocalGateway(
      {
        backends: [{ id: 'b', url: backend.url }],
        on: {
          // A usual hook: the client's address, as the gateway forwards it, to a header of
          // the backend's own.
          proxyReq: (proxyReq, req) => {
            proxyReq.setHeader('x-client-ip', String(req.headers['x-real-ip']));
          },
        },
      },
      (app, lb) => {
        app.set('trust proxy', 1);
        app.use((req, res, next) => {
          if (req.url === '/bad') req.headers['x-note'] = 'line\nbreak';
          // Read where express-session decides its secure cookie: at writeHead.
          const writeHead = res.writeHead;
          res.writeHead = function (this: typeof res, ...args: unknown[]) {
            seen = { forwardedFor: req.headers['x-forwarded-for'], protocol: req.protocol };
            return (writeHead as (...a: unknown[]) => typeof res).apply(this, args);
          } as typeof res.writeHead;
          next();
        });
        app.use(lb);
      },
    );
  });
  afterAll(async () => {
    await gw.close();
    await backend.close();
  });

  it('on.proxyReq reads the headers the backend is sent, not a forged X-Real-IP', async () => {
    for (const headers of [{}, { 'x-real-ip': '6.6.6.6' }] as Record<string, string>[]) {
      const r = await send(`${gw.url}/x`, { headers });
      expect(r.status).toBe(200);
      expect((JSON.parse(r.body) as Record<string, string>)['x-client-ip']).toBe('127.0.0.1');
    }
  });

  it('an answer given while the backend request is made leaves the app its headers', async () => {
    const headers = { 'x-forwarded-for': '203.0.113.9', 'x-forwarded-proto': 'https' };
    seen = {};
    // Node refuses the header value while making the backend request: 400, written inside it.
    const r = await send(`${gw.url}/bad`, { headers });
    expect(r.status).toBe(400);
    await waitFor(() => seen['protocol'] !== undefined);
    expect(seen).toEqual({ forwardedFor: '203.0.113.9', protocol: 'https' });
  });
});

describe('compression() before the balancer', () => {
  let backend: TestServer;
  let gw: TestGateway;
  /** The backend's open event streams: each ends when the test says, or after 5 s. */
  const open = new Set<ServerResponse>();
  beforeAll(async () => {
    backend = await listen(
      createServer((req, res) => {
        req.resume();
        if (req.url === '/export') {
          // A chunked export written row by row, as a CSV export or streamed JSON is.
          // A few rows per read from the database cursor.
          res.writeHead(200, { 'content-type': 'text/csv' });
          void (async () => {
            for (let i = 0; i < 3000; i++) {
              res.write(`${i},name-${i},value-${i % 7}\n`);
              if (i % 5 === 0) await new Promise((r) => setImmediate(r));
            }
            res.end();
          })();
          return;
        }
        if (req.url === '/empty') return void res.writeHead(204).end();
        if (req.url === '/page') {
          const page = '<p>worth compressing</p>\n'.repeat(200);
          res.writeHead(200, { 'content-type': 'text/html', 'content-length': page.length });
          return void res.end(page);
        }
        res.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-cache' });
        res.write('data: first\n\n');
        open.add(res);
        const cap = setTimeout(() => res.end('data: last\n\n'), 5_000);
        res.on('close', () => {
          clearTimeout(cap);
          open.delete(res);
        });
      }),
    );
    gw = await startLocalGateway(
      {
        backends: [{ id: 'b', url: backend.url }],
        dashboard: { token: 'dash-0123456789abcdef', intervalMs: 250 },
      },
      (app, lb) => {
        app.use(compression());
        app.use(lb);
      },
    );
  });
  afterAll(async () => {
    for (const res of open) res.end();
    await gw.close();
    await backend.close();
  });

  it("relays an event stream's events while the stream is open", async () => {
    const got = await gunzipUntil(`${gw.url}/events`, 'data: first');
    // Before the fix every event waited in zlib for the stream's end (5 s here).
    expect(got.text).toContain('data: first');
    expect(got.text).not.toContain('data: last');
    expect(got.headers['content-encoding']).toBe('gzip');
    expect(open.size).toBe(1);
    got.close();
  });

  it('tells an HTTP/1.0 keep-alive client the truth when compression drops the length', async () => {
    // compression replaces the backend's Content-Length by gzip, and an HTTP/1.0 answer
    // without a length ends with its connection.
    const req = (gzip: boolean): string =>
      `GET /page HTTP/1.0\r\nHost: a\r\nConnection: keep-alive\r\n${gzip ? 'Accept-Encoding: gzip\r\n' : ''}\r\n`;
    const plain = await rawExchange(gw.port, req(false), { responses: 1 });
    expect(plain.responses[0]!.headers['content-length']).toBeDefined();
    expect(plain.responses[0]!.headers['connection']).toBe('keep-alive');
    const gz = await rawExchange(gw.port, req(true));
    const head = gz.responses[0]!.headers;
    expect(head['content-encoding']).toBe('gzip');
    expect(head['content-length']).toBeUndefined();
    expect(head['connection']).toBe('close');
    expect(gz.closed).toBe(true);
  });

  it('keeps a chunked export compressed: not a flush per row', async () => {
    const plain = (await send(`${gw.url}/export`, { headers: { 'accept-encoding': 'identity' } }))
      .body.length;
    const got = await gunzipUntil(`${gw.url}/export`, '2999,name-2999');
    // Flushed after each read from the backend, the gzip came out larger than the text
    // (171 KB for 135 KB); compressed whole it is about a fifth.
    expect(got.wire).toBeLessThan(plain / 3);
    got.close();
  });

  it('keeps an HTTP/1.0 keep-alive connection after a bodiless answer', async () => {
    for (const [method, path] of [
      ['HEAD', '/page'],
      ['GET', '/empty'],
    ]) {
      const r = await rawExchange(
        gw.port,
        `${method} ${path} HTTP/1.0\r\nHost: a\r\nConnection: keep-alive\r\nAccept-Encoding: gzip\r\n\r\n`,
        { responses: 1, ...(method === 'HEAD' ? { bodiless: [0] } : {}) },
      );
      expect(r.responses[0]!.headers['connection']).toBe('keep-alive');
    }
  });

  it('streams the dashboard, which compression leaves alone (no-transform)', async () => {
    const got = await gunzipUntil(
      `${gw.url}/_lb/dashboard/events?token=dash-0123456789abcdef`,
      'event: init',
    );
    expect(got.headers['cache-control']).toBe('no-store, no-transform');
    expect(got.text).toContain('event: init');
    got.close();
  });
});

/** GETs `url` asking for gzip, decoding when it is; resolves once the text holds `mark`. */
function gunzipUntil(
  url: string,
  mark: string,
): Promise<{ text: string; wire: number; headers: IncomingMessage['headers']; close(): void }> {
  return new Promise((resolve, reject) => {
    const req = request(url, { agent: false, headers: { 'accept-encoding': 'gzip' } }, (res) => {
      let wire = 0;
      res.on('data', (d: Buffer) => (wire += d.length));
      const body = res.headers['content-encoding'] === 'gzip' ? res.pipe(createGunzip()) : res;
      let text = '';
      body.setEncoding('utf8');
      body.on('data', (chunk: string) => {
        text += chunk;
        if (text.includes(mark)) {
          body.removeAllListeners('data');
          resolve({ text, wire, headers: res.headers, close: () => req.destroy() });
        }
      });
      body.on('error', () => {});
      body.on('end', () => reject(new Error(`the answer ended without ${mark}: ${text}`)));
    });
    req.on('error', reject);
    req.end();
  });
}

async function waitFor(cond: () => boolean): Promise<void> {
  for (let i = 0; i < 200 && !cond(); i++) await new Promise((r) => setTimeout(r, 10));
}

describe('a request a middleware before the balancer already handled', () => {
  let backend: TestServer;
  let gw: TestGateway;
  /** Resolved once the middleware has called next() into the balancer after answering. */
  let nextCalled: Promise<void> = Promise.resolve();
  beforeAll(async () => {
    backend = await echoHeaders();
    gw = await startLocalGateway(
      {
        backends: [{ id: 'b', url: backend.url }],
        maxInFlightPerClient: 1,
        clientBodyTimeoutMs: 3_000,
      },
      (app, lb) => {
        app.use((req, res, next) => {
          if (req.url === '/answered') {
            // A timeout middleware's 503 while an async step still ran, which then goes on.
            nextCalled = new Promise((resolve) => {
              res.once('close', () => {
                next();
                resolve();
              });
            });
            return void res.status(503).end('timed out');
          }
          if (req.url === '/paused') {
            // The pause pattern: hold the body while an async check runs, then go on.
            req.pause();
            return void setImmediate(next);
          }
          if (req.url === '/closing') res.setHeader('connection', 'close');
          next();
        });
        app.use(lb);
      },
    );
  });
  afterAll(async () => {
    await gw.close();
    await backend.close();
  });

  it('an answer already given: the balancer takes no client slot and forwards nothing', async () => {
    // A keep-alive client that keeps its connection open.
    const socket = connect({ port: gw.port, host: '127.0.0.1' });
    try {
      socket.write('GET /answered HTTP/1.1\r\nHost: x\r\n\r\n');
      let got = '';
      await new Promise<void>((resolve) =>
        socket.on('data', (d: Buffer) => {
          got += d.toString('latin1');
          if (got.includes('timed out')) resolve();
        }),
      );
      expect(got).toMatch(/^HTTP\/1\.1 503/);
      await nextCalled;
      // Before: the balancer took the client's only slot and held it until that connection
      // closed; every other request from the address got 429.
      expect(internals(gw.lb).flow.active).toBe(0);
      expect((await send(`${gw.url}/after`)).status).toBe(200);
    } finally {
      socket.destroy();
    }
  });

  it('reads a small body a middleware paused (it was never read: 408)', async () => {
    const body = 'x'.repeat(100);
    const reply = await send(`${gw.url}/paused`, {
      method: 'POST',
      headers: { 'content-type': 'text/plain', 'content-length': String(body.length) },
      body,
    });
    expect(reply.status).toBe(200);
    expect(reply.json()['content-length']).toBe('100');
  });

  it("keeps the app's Connection: close on a proxied answer, and closes", async () => {
    const ex = await rawExchange(gw.port, 'GET /closing HTTP/1.1\r\nHost: x\r\n\r\n', {
      guardMs: 5_000,
    });
    expect(ex.responses[0]?.status).toBe(200);
    expect(ex.responses[0]?.headers.connection).toBe('close');
    expect(ex.closed).toBe(true);
  });
});
