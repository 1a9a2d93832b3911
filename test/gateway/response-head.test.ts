/**
 * The backend's status line and headers as the client gets them. The gateway
 * writes them in one writeHead call when the response has no header yet
 * (response-head.ts), and merges them header by header when a middleware set
 * some first (Express's X-Powered-By, CORS, security headers): both paths
 * must give the same answer. Raw bytes on both sides, so nothing tidies them.
 */
import http, { type ServerResponse } from 'node:http';
import express from 'express';
import { startBackend, type TestServer } from '../kit/http';
import { startLocalGateway, type TestGateway } from '../kit/gateway';
import { rawExchange } from '../kit/raw-http';

/** The head's lines after the status line, lower-cased names, in order. */
function headLines(raw: string): { status: string; lines: string[] } {
  const head = raw.slice(0, raw.indexOf('\r\n\r\n'));
  const [status, ...rest] = head.split('\r\n');
  return { status: status!, lines: rest.map((l) => l.replace(/^[^:]+/, (n) => n.toLowerCase())) };
}

const named = (lines: string[], name: string): string[] =>
  lines.filter((l) => l.startsWith(`${name}:`)).map((l) => l.slice(name.length + 1).trim());

/** Ends the `/held` answer's body: the test calls it once the client has the head. */
let release: (() => void) | undefined;

function answer(res: ServerResponse, url: string): void {
  if (url === '/held') {
    // The head now, the body later: an event stream, a long poll.
    res.writeHead(200, { 'content-type': 'text/event-stream' });
    res.flushHeaders();
    // Without a client that releases it (the head never came), the body ends anyway.
    const fallback = setTimeout(() => release?.(), 3_000);
    release = () => {
      release = undefined;
      clearTimeout(fallback);
      res.end('data: x\n\n');
    };
    return;
  }
  if (url === '/made') {
    // Two Set-Cookie lines, a reason phrase of its own, and a forged decision header.
    res.writeHead(201, 'Made It', [
      'Content-Type',
      'text/plain',
      'Set-Cookie',
      'a=1; Path=/',
      'Set-Cookie',
      'b=2; Path=/',
      'X-Loadwise-Decision',
      'backend=forged',
      'X-Custom',
      'kept',
    ]);
    return void res.end('made');
  }
  if (url === '/stream') {
    // No Content-Length: chunked to an HTTP/1.1 client.
    res.setHeader('content-type', 'text/plain');
    res.write('part 1, ');
    return void setTimeout(() => res.end('part 2'), 20);
  }
  if (url === '/empty') {
    res.statusCode = 204;
    return void res.end();
  }
  res.end('ok');
}

/**
 * res.writeHead wrapped as on-headers before 1.1.0 did it (morgan, compression,
 * express-session and response-time in many lockfiles use it): headers given as an array
 * are read as [name, value] pairs, so a flat [name, value, name, value] array became
 * headers named after the first two letters of each string.
 */
function wrapWriteHeadAsOldOnHeaders(res: ServerResponse): void {
  const writeHead = res.writeHead as (status: number, message?: string) => ServerResponse;
  res.writeHead = function (this: ServerResponse, status: number, ...rest: unknown[]) {
    const headers = rest[rest.length - 1];
    if (Array.isArray(headers)) for (const [n, v] of headers as string[]) this.setHeader(n!, v!);
    else if (headers !== null && typeof headers === 'object')
      for (const [n, v] of Object.entries(headers)) this.setHeader(n, v as string);
    return writeHead.call(this, status, typeof rest[0] === 'string' ? rest[0] : undefined);
  } as typeof res.writeHead;
}

describe.each([
  ['no header set before the balancer (one writeHead)', 'none'],
  ['headers set by middleware first (merged one by one)', 'preset'],
  ['writeHead wrapped by a middleware (as on-headers before 1.1.0)', 'wrapped'],
] as const)('response head: %s', (_name, before) => {
  const presetHeaders = before === 'preset';
  let backend: TestServer;
  let gw: TestGateway;
  beforeAll(async () => {
    backend = await startBackend('b1', (req, res) => answer(res, req.url ?? '/'));
    gw = await startLocalGateway(
      { backends: [{ id: 'b1', url: backend.url }], decisionHeader: true },
      (app: express.Express, lb) => {
        if (presetHeaders) {
          app.use((_req, res, next) => {
            res.setHeader('x-frame-options', 'DENY');
            res.setHeader('content-type', 'application/octet-stream');
            next();
          });
        } else app.disable('x-powered-by');
        if (before === 'wrapped') {
          app.use((_req, res, next) => {
            wrapWriteHeadAsOldOnHeaders(res);
            next();
          });
        }
        app.use(lb);
      },
    );
  });
  afterAll(async () => {
    await gw.close();
    await backend.close();
  });

  it("keeps the backend's status, reason phrase, repeated headers and values", async () => {
    const ex = await rawExchange(gw.port, 'GET /made HTTP/1.1\r\nHost: x\r\n\r\n', {
      responses: 1,
    });
    const { status, lines } = headLines(ex.raw);
    expect(status).toBe('HTTP/1.1 201 Made It');
    expect(named(lines, 'set-cookie')).toEqual(['a=1; Path=/', 'b=2; Path=/']);
    expect(named(lines, 'x-custom')).toEqual(['kept']);
    // The backend's value replaces a middleware's of the same name.
    expect(named(lines, 'content-type')).toEqual(['text/plain']);
    expect(named(lines, 'connection')).toEqual(['keep-alive']);
    // The gateway's decision header, once: a backend cannot forge it.
    expect(named(lines, 'x-loadwise-decision')).toHaveLength(1);
    expect(named(lines, 'x-loadwise-decision')[0]).toMatch(/b1/);
    expect(named(lines, 'x-frame-options')).toEqual(presetHeaders ? ['DENY'] : []);
    expect(named(lines, 'x-powered-by')).toEqual(presetHeaders ? ['Express'] : []);
    expect(ex.responses[0]!.body).toBe('made');
  });

  it('relays a head the backend sends ahead of its body at once, not with the first body byte', async () => {
    const got = await new Promise<{ headBeforeBody: boolean; type?: string; body: string }>(
      (resolve, reject) => {
        http
          .get({ host: '127.0.0.1', port: gw.port, path: '/held', agent: false }, (res) => {
            // The head is here: only now may the backend send its body.
            const headBeforeBody = release !== undefined;
            release?.();
            let body = '';
            res.setEncoding('utf8');
            res.on('data', (d: string) => (body += d));
            res.on('end', () =>
              resolve({ headBeforeBody, type: res.headers['content-type'], body }),
            );
          })
          .on('error', reject);
      },
    );
    expect(got).toEqual({ headBeforeBody: true, type: 'text/event-stream', body: 'data: x\n\n' });
  });

  it('streams a body without Content-Length chunked to HTTP/1.1 and unframed to HTTP/1.0', async () => {
    const v11 = await rawExchange(gw.port, 'GET /stream HTTP/1.1\r\nHost: x\r\n\r\n', {
      responses: 1,
    });
    expect(named(headLines(v11.raw).lines, 'transfer-encoding')).toEqual(['chunked']);
    expect(v11.responses[0]!.body).toBe('part 1, part 2');
    // HTTP/1.0 has no chunked coding: the body ends with the connection.
    const v10 = await rawExchange(gw.port, 'GET /stream HTTP/1.0\r\n\r\n');
    const { lines } = headLines(v10.raw);
    expect(named(lines, 'transfer-encoding')).toEqual([]);
    expect(named(lines, 'connection')).toEqual(['close']);
    expect(v10.closed).toBe(true);
    expect(v10.raw.endsWith('part 1, part 2')).toBe(true);
  });

  it('keeps an HTTP/1.0 keep-alive connection open for the next request', async () => {
    const ex = await rawExchange(gw.port, 'GET /plain HTTP/1.0\r\nConnection: keep-alive\r\n\r\n', {
      responses: 2,
      then: ['GET /plain HTTP/1.0\r\nConnection: keep-alive\r\n\r\n'],
    });
    expect(ex.responses.map((r) => [r.status, r.body])).toEqual([
      [200, 'ok'],
      [200, 'ok'],
    ]);
    expect(named(headLines(ex.raw).lines, 'connection')).toEqual(['keep-alive']);
  });

  it('tells an HTTP/1.0 keep-alive client the truth: close when the body ends with the connection, never its own tokens', async () => {
    // The answer has no Content-Length: the body can only end with the connection.
    const unframed = await rawExchange(
      gw.port,
      'GET /stream HTTP/1.0\r\nConnection: keep-alive, Content-Length\r\n\r\n',
    );
    expect(named(headLines(unframed.raw).lines, 'connection')).toEqual(['close']);
    expect(unframed.closed).toBe(true);
    expect(unframed.raw.endsWith('part 1, part 2')).toBe(true);
    // A framed answer keeps the connection, and says plain keep-alive.
    const framed = await rawExchange(
      gw.port,
      'GET /plain HTTP/1.0\r\nConnection: keep-alive, Content-Length\r\n\r\n',
      { responses: 1 },
    );
    expect(named(headLines(framed.raw).lines, 'connection')).toEqual(['keep-alive']);
  });

  it('answers a HEAD and a 204 without a body, and the connection carries on', async () => {
    const ex = await rawExchange(gw.port, 'HEAD /plain HTTP/1.1\r\nHost: x\r\n\r\n', {
      responses: 2,
      bodiless: [0],
      then: ['GET /empty HTTP/1.1\r\nHost: x\r\n\r\n'],
    });
    expect(ex.responses.map((r) => [r.status, r.body])).toEqual([
      [200, ''],
      [204, ''],
    ]);
    expect(ex.closed).toBe(false);
  });
});

describe('response head: headers a middleware set merged with the same names from the backend', () => {
  let backend: TestServer;
  let gw: TestGateway;
  beforeAll(async () => {
    backend = await startBackend('b1', (_req, res) => {
      res.writeHead(200, [
        'Set-Cookie',
        'pref=1; Path=/',
        'Set-Cookie',
        'theme=dark; Path=/',
        'Vary',
        'Accept-Encoding, origin',
        'Content-Type',
        'text/plain',
      ]);
      res.end('ok');
    });
    gw = await startLocalGateway(
      { backends: [{ id: 'b1', url: backend.url }] },
      (app: express.Express, lb) => {
        // A CORS middleware reflecting the origin, which must vary on it.
        app.use((req, res, next) => {
          res.setHeader('access-control-allow-origin', req.headers.origin ?? '*');
          res.append('vary', 'Origin');
          if (req.url === '/star') res.append('vary', '*');
          next();
        });
        // An auth middleware rotating its session cookie before handing over.
        app.use((_req, res, next) => {
          res.append('set-cookie', 'session=rotated; HttpOnly; Path=/');
          res.setHeader('content-type', 'application/octet-stream');
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

  it("adds the backend's Set-Cookie lines to the app's and joins both Vary lists", async () => {
    const ex = await rawExchange(
      gw.port,
      'GET /x HTTP/1.1\r\nHost: x\r\nOrigin: https://a.example\r\n\r\n',
      { responses: 1 },
    );
    const { lines } = headLines(ex.raw);
    expect(named(lines, 'set-cookie')).toEqual([
      'session=rotated; HttpOnly; Path=/',
      'pref=1; Path=/',
      'theme=dark; Path=/',
    ]);
    expect(named(lines, 'vary')).toEqual(['Origin, Accept-Encoding']);
    expect(named(lines, 'access-control-allow-origin')).toEqual(['https://a.example']);
    // Any other header: the backend's replaces the app's.
    expect(named(lines, 'content-type')).toEqual(['text/plain']);
  });

  it('answers Vary: * alone when either side says it', async () => {
    const ex = await rawExchange(gw.port, 'GET /star HTTP/1.1\r\nHost: x\r\n\r\n', {
      responses: 1,
    });
    expect(named(headLines(ex.raw).lines, 'vary')).toEqual(['*']);
  });
});
