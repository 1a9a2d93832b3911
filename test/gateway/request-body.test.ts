/**
 * Request bodies in a real Express gateway: a body parsed by a middleware
 * before the balancer reaches the backend re-serialized with a correct
 * Content-Length (no hang until the request timeout); a body that is gone
 * fails fast with a coded 500 that never counts against a backend; the
 * `on: { proxyReq, proxyRes }` hooks run on each attempt; a small body of an
 * idempotent request is held in memory so a refused attempt is retried with
 * it, a large one is not.
 */
import { createHash } from 'node:crypto';
import { Agent, createServer, request, type IncomingMessage } from 'node:http';
import { brotliCompressSync, deflateSync, gzipSync } from 'node:zlib';
import express from 'express';
import { fixRequestBody, responseInterceptor } from 'http-proxy-middleware';
import type { LoadBalanceOptions } from '@loadwise/gateway-plugin';
import { listen, refusedPort, send, startBackend, type TestServer } from '../kit/http';
import { counter, startLocalGateway, type TestGateway } from '../kit/gateway';
import { rawExchange } from '../kit/raw-http';

interface Echo {
  id: string;
  method: string;
  url: string;
  headers: Record<string, string>;
  body: string;
}

/** A request that hangs would end in 504 after this; every test here must answer sooner. */
const TIMEOUT_MS = 3000;

describe('request bodies', () => {
  let a: TestServer;
  let deadUrl: string;
  let gw: TestGateway | undefined;
  beforeAll(async () => {
    a = await startBackend('a');
    deadUrl = `http://127.0.0.1:${await refusedPort()}`;
  });
  afterEach(async () => {
    await gw?.close();
    gw = undefined;
  });
  afterAll(() => a.close());

  /** A refusing backend and a good one, offered in turn: every other first attempt fails. */
  const deadThenA = (extra: Partial<LoadBalanceOptions> = {}): Promise<TestGateway> =>
    startLocalGateway({
      backends: [
        { id: 'dead', url: deadUrl },
        { id: 'a', url: a.url },
      ],
      strategy: 'round-robin',
      outlier: { consecutiveFailures: 100 },
      ...extra,
    });

  it.each([
    {
      parser: 'express.json()',
      mount: (app: express.Express) => app.use(express.json()),
      contentType: 'application/json',
      body: JSON.stringify({ name: 'Ada', tags: ['x', 'y'], nested: { n: 1 } }),
      expected: (b: string) =>
        expect(JSON.parse(b)).toEqual({ name: 'Ada', tags: ['x', 'y'], nested: { n: 1 } }),
    },
    {
      parser: 'express.json({ strict: false }), a top-level number',
      mount: (app: express.Express) => app.use(express.json({ strict: false })),
      contentType: 'application/json',
      body: '42',
      expected: (b: string) => expect(b).toBe('42'),
    },
    {
      parser: 'express.urlencoded({ extended: true })',
      mount: (app: express.Express) => app.use(express.urlencoded({ extended: true })),
      contentType: 'application/x-www-form-urlencoded',
      // A list of values goes as a repeated key, which every parser reads back as the list
      // (qs included); a list of objects keeps the indices its fields need.
      body: 'name=Ada+L&list[0]=a&list[1]=b&o[k]=v%26w&tag=x&tag=y&rows[0][n]=1&rows[1][n]=2',
      expected: (b: string) =>
        expect([...new URLSearchParams(b)]).toEqual([
          ['name', 'Ada L'],
          ['list', 'a'],
          ['list', 'b'],
          ['o[k]', 'v&w'],
          ['tag', 'x'],
          ['tag', 'y'],
          ['rows[0][n]', '1'],
          ['rows[1][n]', '2'],
        ]),
    },
    {
      parser: 'express.urlencoded({ extended: false })',
      mount: (app: express.Express) => app.use(express.urlencoded({ extended: false })),
      contentType: 'application/x-www-form-urlencoded',
      body: 'tag=a&tag=b&list[]=1&list[]=2',
      expected: (b: string) =>
        expect([...new URLSearchParams(b)]).toEqual([
          ['tag', 'a'],
          ['tag', 'b'],
          ['list[]', '1'],
          ['list[]', '2'],
        ]),
    },
    {
      parser: 'express.text()',
      mount: (app: express.Express) => app.use(express.text()),
      contentType: 'text/plain; charset=utf-8',
      body: 'héllo wörld',
      expected: (b: string) => expect(b).toBe('héllo wörld'),
    },
  ])(
    'forwards a body parsed by $parser before the balancer',
    async ({ mount, contentType, body, expected }) => {
      gw = await startLocalGateway(
        { backends: [{ id: 'a', url: a.url }], requestTimeoutMs: TIMEOUT_MS },
        (app, lb) => {
          mount(app);
          app.use(lb);
        },
      );
      const started = Date.now();
      const r = await send(`${gw.url}/items`, {
        method: 'POST',
        headers: { 'content-type': contentType },
        body,
      });
      expect(r.status).toBe(200);
      expect(Date.now() - started).toBeLessThan(TIMEOUT_MS);
      const echo = r.json<Echo>();
      expected(echo.body);
      expect(Number(echo.headers['content-length'])).toBe(Buffer.byteLength(echo.body));
    },
  );

  it('forwards a raw Buffer body and an inflated gzip JSON body without Content-Encoding', async () => {
    gw = await startLocalGateway(
      { backends: [{ id: 'a', url: a.url }], requestTimeoutMs: TIMEOUT_MS },
      (app, lb) => {
        app.use('/raw', express.raw({ type: 'application/octet-stream' }), lb);
        app.use('/json', express.json(), lb);
      },
    );
    const raw = await send(`${gw.url}/raw/blob`, {
      method: 'POST',
      headers: { 'content-type': 'application/octet-stream' },
      body: 'binary\u0000bytes',
    });
    expect(raw.status).toBe(200);
    expect(raw.json<Echo>().body).toBe('binary\u0000bytes');
    expect(raw.json<Echo>().headers['content-length']).toBe(String('binary\u0000bytes'.length));

    const zipped = gzipSync(JSON.stringify({ big: 'x'.repeat(100) }));
    const json = await new Promise<Echo>((resolve, reject) => {
      const req = request(
        `${gw!.url}/json/z`,
        {
          method: 'POST',
          agent: false,
          headers: { 'content-type': 'application/json', 'content-encoding': 'gzip' },
        },
        (res: IncomingMessage) => {
          let b = '';
          res.setEncoding('utf8');
          res.on('data', (c: string) => (b += c));
          res.on('end', () => resolve(JSON.parse(b) as Echo));
        },
      );
      req.on('error', reject);
      req.end(zipped);
    });
    expect(JSON.parse(json.body)).toEqual({ big: 'x'.repeat(100) });
    expect(json.headers['content-encoding']).toBeUndefined();
    // The inflated JSON's length, not the gzip bytes' the client announced.
    expect(json.headers['content-length']).toBe(String(Buffer.byteLength(json.body)));
  });

  it('answers 500 LW_GW_BODY_CONSUMED at once when a middleware ate the body, and no backend is charged', async () => {
    const warnings: string[] = [];
    gw = await startLocalGateway(
      {
        backends: [{ id: 'a', url: a.url }],
        requestTimeoutMs: TIMEOUT_MS,
        logger: {
          info: () => {},
          warn: (m, msg) => warnings.push(msg ?? String(m)),
          error: () => {},
        },
      },
      (app, lb) => {
        // A signature check that reads the stream and keeps nothing.
        app.use((req, _res, next) => {
          req.on('end', () => next());
          req.resume();
        });
        app.use(lb);
      },
    );
    const started = Date.now();
    const r = await send(`${gw.url}/upload`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: '{"a":1}',
    });
    expect(Date.now() - started).toBeLessThan(TIMEOUT_MS);
    expect(r.status).toBe(500);
    expect(r.headers['x-loadwise-error']).toBe('LW_GW_BODY_CONSUMED');
    expect(r.json<{ error: { message: string } }>().error.message).toMatch(/req\.body is not set/);
    expect(warnings.join('\n')).toMatch(/POST \/upload: the request body was read by a middleware/);
    expect(await counter(gw, 'rejected_requests_total', { code: 'LW_GW_BODY_CONSUMED' })).toBe(1);
    const b = gw.lb.balancer.snapshot().backends[0]!;
    expect([b.requestsTotal, b.failuresTotal, b.state]).toEqual([0, 0, 'healthy']);
  });

  it("answers 500 LW_GW_BODY_CONSUMED when a middleware set the body stream's encoding and left it unread", async () => {
    gw = await startLocalGateway(
      { backends: [{ id: 'a', url: a.url }], requestTimeoutMs: TIMEOUT_MS },
      (app, lb) => {
        // A hand-written reader that reads JSON only, as text; other bodies it leaves.
        app.use((req, _res, next) => {
          req.setEncoding('utf8');
          next();
        });
        app.use(lb);
      },
    );
    // Buffered for a retry (the default) and streamed: the same answer, the backend untouched
    // (buffered, the reader's TypeError ended the process; streamed, the backend got the bytes
    // decoded as UTF-8).
    for (const path of ['/small', '/large']) {
      const body = Buffer.from([0x68, 0xff, 0xfe, 0x69]);
      const r = await send(`${gw.url}${path}`, {
        method: 'POST',
        headers: { 'content-type': 'application/octet-stream' },
        body: path === '/small' ? body : Buffer.concat([body, Buffer.alloc(2 * 1024 * 1024)]),
      });
      expect(r.status).toBe(500);
      expect(r.headers['x-loadwise-error']).toBe('LW_GW_BODY_CONSUMED');
      expect(r.json<{ error: { message: string } }>().error.message).toMatch(
        /setEncoding\('utf8'\)/,
      );
    }
    // The body is still on the connection: on a keep-alive one, the answer closes it (it read
    // a 200 MB upload through to the end, and a request behind it waited for that).
    const head =
      'POST /kept HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\n' +
      'Content-Length: 4\r\n\r\n';
    const ex = await rawExchange(
      gw.port,
      Buffer.concat([Buffer.from(head), Buffer.from([0x68, 0xff, 0xfe, 0x69])]),
    );
    expect(ex.responses.map((x) => [x.status, x.headers['connection']])).toEqual([[500, 'close']]);
    expect(ex.closed).toBe(true);
    // A request without a body is not the encoding's business.
    expect((await send(`${gw.url}/get`)).status).toBe(200);
    const b = gw.lb.balancer.snapshot().backends[0]!;
    expect([b.requestsTotal, b.failuresTotal]).toEqual([1, 0]);
  });

  it('answers 500 LW_GW_BODY_CONSUMED, never next(err), for a req.body JSON.stringify refuses', async () => {
    const handed: unknown[] = [];
    gw = await startLocalGateway(
      { backends: [{ id: 'a', url: a.url }], requestTimeoutMs: TIMEOUT_MS },
      (app, lb) => {
        // A bigint-aware JSON parser (json-bigint with useNativeBigInt keeps 64-bit ids).
        app.use('/big', express.json(), (req, _res, next) => {
          req.body = { id: 12345678901234567890n };
          next();
        });
        app.use('/loop', express.json(), (req, _res, next) => {
          const o: Record<string, unknown> = {};
          o.self = o;
          req.body = o;
          next();
        });
        app.use(lb);
        app.use((err: unknown, _req: express.Request, res: express.Response, _next: unknown) => {
          handed.push(err);
          res.status(599).end();
        });
      },
    );
    for (const [path, why] of [
      ['/big', /BigInt/],
      ['/loop', /circular/i],
    ] as const) {
      const r = await send(`${gw.url}${path}`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: '{"id":12345678901234567890}',
      });
      expect(r.status).toBe(500);
      expect(r.headers['x-loadwise-error']).toBe('LW_GW_BODY_CONSUMED');
      expect(r.json<{ error: { message: string } }>().error.message).toMatch(why);
    }
    expect(handed).toEqual([]);
    expect(gw.lb.balancer.snapshot().backends[0]!.requestsTotal).toBe(0);
  });

  it('runs on.proxyReq and on.proxyRes on the attempt; a leftover fixRequestBody does not double the body', async () => {
    gw = await startLocalGateway(
      {
        backends: [{ id: 'a', url: a.url }],
        requestTimeoutMs: TIMEOUT_MS,
        on: {
          proxyReq: (proxyReq, req, res) => {
            proxyReq.setHeader('x-user', 'ada');
            fixRequestBody(proxyReq, req);
            res.setHeader('x-seen-by-hook', req.method ?? '');
          },
          proxyRes: (proxyRes) => {
            proxyRes.headers['x-from-hook'] = String(proxyRes.statusCode);
          },
        },
      },
      (app, lb) => app.use(express.json(), lb),
    );
    const r = await send(`${gw.url}/h`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: '{"k":"v"}',
    });
    expect(r.status).toBe(200);
    expect(r.headers['x-from-hook']).toBe('200');
    expect(r.headers['x-seen-by-hook']).toBe('POST');
    const echo = r.json<Echo>();
    expect(echo.headers['x-user']).toBe('ada');
    expect(echo.body).toBe('{"k":"v"}');
  });

  it('answers 500 LW_GW_HOOK_FAILED when a hook throws, without charging the backend', async () => {
    gw = await startLocalGateway({
      backends: [{ id: 'a', url: a.url }],
      on: {
        proxyReq: () => {
          throw new Error('hook bug');
        },
      },
    });
    const r = await send(`${gw.url}/x`);
    expect(r.status).toBe(500);
    expect(r.headers['x-loadwise-error']).toBe('LW_GW_HOOK_FAILED');
    const b = gw.lb.balancer.snapshot().backends[0]!;
    expect([b.failuresTotal, b.inFlight, b.state]).toEqual([0, 0, 'healthy']);
  });

  it("runs http-proxy-middleware's responseInterceptor with selfHandleResponse, and stays up", async () => {
    // Without the option the balancer wrote the head too, and the interceptor's own
    // headers, set on the backend's 'end', threw ERR_HTTP_HEADERS_SENT: the process ended.
    gw = await startLocalGateway({
      backends: [{ id: 'a', url: a.url }],
      selfHandleResponse: true,
      on: {
        proxyRes: responseInterceptor(async (body) => body.toString('utf8').toUpperCase()),
      },
    });
    const ex = await rawExchange(
      gw.port,
      'GET /one HTTP/1.1\r\nHost: gw\r\n\r\nGET /two HTTP/1.1\r\nHost: gw\r\n\r\n',
      { responses: 2 },
    );
    expect(ex.responses.map((r) => [r.status, JSON.parse(r.body).URL])).toEqual([
      [200, '/ONE'],
      [200, '/TWO'],
    ]);
    expect(ex.responses[0]!.headers['content-length']).toBe(String(ex.responses[0]!.body.length));
    const b = gw.lb.balancer.snapshot().backends[0]!;
    expect([b.requestsTotal, b.failuresTotal, b.inFlight]).toEqual([2, 0, 0]);
  });

  it('writes nothing of its own after a hook that wrote the head and piped the body', async () => {
    // The balancer's copy as well: the body twice, the second at the front of the
    // connection's next answer.
    gw = await startLocalGateway({
      backends: [{ id: 'a', url: a.url }],
      on: {
        proxyRes: (proxyRes, _req, res) => {
          res.writeHead(proxyRes.statusCode!, { 'content-type': 'application/json' });
          proxyRes.pipe(res);
        },
      },
    });
    const ex = await rawExchange(
      gw.port,
      'GET /one HTTP/1.1\r\nHost: gw\r\n\r\nGET /two HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n',
    );
    expect(ex.responses.map((r) => [r.status, (JSON.parse(r.body) as Echo).url])).toEqual([
      [200, '/one'],
      [200, '/two'],
    ]);
  });

  it('pipes the body after a hook that wrote only the head, as http-proxy-middleware does', async () => {
    gw = await startLocalGateway({
      backends: [{ id: 'a', url: a.url }],
      on: {
        proxyRes: (proxyRes, _req, res) => {
          res.writeHead(proxyRes.statusCode!, {
            'content-type': 'application/json',
            'x-from-hook': 'head',
          });
        },
      },
    });
    const r = await send(`${gw.url}/only-head`);
    expect([r.status, r.headers['x-from-hook'], r.json<Echo>().url]).toEqual([
      200,
      'head',
      '/only-head',
    ]);
  });

  it.each([
    ['an async proxyReq hook', {}],
    ['an async proxyRes hook that writes the answer', { selfHandleResponse: true }],
  ] as const)('answers 500 LW_GW_HOOK_FAILED when %s rejects, and stays up', async (_, extra) => {
    // The rejection was unhandled, which ends a Node 20 process.
    const fail = async (): Promise<void> => {
      throw new Error('hook bug');
    };
    gw = await startLocalGateway({
      backends: [{ id: 'a', url: a.url }],
      on: 'selfHandleResponse' in extra ? { proxyRes: fail } : { proxyReq: fail },
      ...extra,
    });
    for (const path of ['/x', '/y']) {
      const r = await send(`${gw.url}${path}`);
      expect([r.status, r.headers['x-loadwise-error']]).toEqual([500, 'LW_GW_HOOK_FAILED']);
    }
    const b = gw.lb.balancer.snapshot().backends[0]!;
    expect([b.failuresTotal, b.inFlight, b.state]).toEqual([0, 0, 'healthy']);
  });

  it('says so when an async proxyRes hook rejects after its small answer went out', async () => {
    // The head does not wait for a hook's promise (nor in http-proxy-middleware): too late to
    // answer 500, and the rejection was dropped without a line.
    const warnings: string[] = [];
    let rejected!: () => void;
    const done = new Promise<void>((r) => (rejected = r));
    gw = await startLocalGateway({
      backends: [{ id: 'a', url: a.url }],
      logger: {
        info: () => {},
        warn: (m: unknown) => void warnings.push(String(m)),
        error: () => {},
      },
      on: {
        proxyRes: async () => {
          await new Promise((r) => setTimeout(r, 30));
          setImmediate(rejected);
          throw new Error('late hook bug');
        },
      },
    });
    const r = await send(`${gw.url}/late`);
    expect(r.status).toBe(200);
    await done;
    expect(warnings).toEqual([
      'an on.proxyReq/on.proxyRes hook threw: Error: late hook bug once its attempt was over; nothing left to answer',
    ]);
  });

  it('answers a bodiless request whose head cannot be written (a hook set Trailer), and stays up', async () => {
    // Node writes a backend request's head on end(); a GET ends without the
    // body pump (request-flow.ts, endBodiless), so the throw lands there.
    gw = await startLocalGateway({
      backends: [{ id: 'a', url: a.url }],
      on: {
        proxyReq: (proxyReq) => {
          proxyReq.setHeader('trailer', 'x-t');
        },
      },
    });
    for (const method of ['GET', 'DELETE']) {
      const r = await send(`${gw.url}/t`, { method });
      expect(r.status).toBe(400);
      expect(r.headers['x-loadwise-error']).toBe('LW_GW_BAD_REQUEST');
    }
    const b = gw.lb.balancer.snapshot().backends[0]!;
    expect([b.failuresTotal, b.inFlight, b.state]).toEqual([0, 0, 'healthy']);
  });

  it('answers 500 LW_GW_HOOK_FAILED when on.proxyRes throws, and nothing of the response follows', async () => {
    gw = await startLocalGateway({
      backends: [{ id: 'a', url: a.url }],
      on: {
        proxyRes: () => {
          throw new Error('hook bug');
        },
      },
    });
    for (let i = 0; i < 3; i++) {
      const r = await send(`${gw.url}/x${i}`);
      expect(r.status).toBe(500);
      expect(r.json()).toMatchObject({ error: { code: 'LW_GW_HOOK_FAILED' } });
    }
    const b = gw.lb.balancer.snapshot().backends[0]!;
    expect([b.failuresTotal, b.inFlight, b.state]).toEqual([0, 0, 'healthy']);
  });

  it('lets on.proxyRes answer the client itself: its answer goes out, the backend body is not relayed', async () => {
    gw = await startLocalGateway({
      backends: [{ id: 'a', url: a.url }],
      // One connection to the backend: an answer left unread would hold it, and the next
      // request would wait for it.
      agent: { maxSockets: 1 },
      on: {
        proxyRes: (proxyRes, _req, res) => {
          if (proxyRes.statusCode === 200) res.writeHead(403).end('denied by hook');
        },
      },
    });
    for (let i = 0; i < 3; i++) {
      const r = await send(`${gw.url}/x${i}`);
      expect([r.status, r.body]).toEqual([403, 'denied by hook']);
    }
    const b = gw.lb.balancer.snapshot().backends[0]!;
    expect([b.failuresTotal, b.inFlight]).toEqual([0, 0]);
  });

  it("stops the backend's answer when the app answered first (a timeout middleware in front)", async () => {
    // The app's 503 ended the request while the backend's answer (here an endless stream)
    // was still to come: that connection stayed busy with it for good, and with the pool
    // full every later request waited for a 504.
    const streams: IncomingMessage[] = [];
    // The app answers only once the backend holds the request: on a loaded machine a fixed
    // delay could answer before the request got there, and then there is nothing to cut.
    let arrived: () => void = () => {};
    const stream = await listen(
      createServer((req, res) => {
        if (req.url === '/stream') {
          streams.push(req);
          arrived();
          setTimeout(() => res.writeHead(200).write('first'), 50);
        } else res.end('fast');
      }),
    );
    try {
      gw = await startLocalGateway(
        {
          backends: [{ id: 's', url: stream.url }],
          agent: { maxSockets: 1 },
          requestTimeoutMs: TIMEOUT_MS,
        },
        (app, lb) => {
          app.use((req, res, next) => {
            if (req.url === '/stream') {
              arrived = () => setTimeout(() => res.status(503).end('app timeout'), 20);
            }
            next();
          });
          app.use(lb);
        },
      );
      for (let i = 0; i < 2; i++) {
        const r = await send(`${gw.url}/stream`);
        expect([r.status, r.body]).toEqual([503, 'app timeout']);
        // The backend's request is cut: its connection is not held.
        const socket = streams[i]!.socket;
        if (!socket.destroyed) await new Promise((resolve) => socket.once('close', resolve));
      }
      const r = await send(`${gw.url}/fast`);
      expect([r.status, r.body]).toEqual([200, 'fast']);
      expect(gw.lb.balancer.snapshot().backends[0]!.failuresTotal).toBe(0);
    } finally {
      await gw?.close();
      gw = undefined;
      await stream.close();
    }
  });

  it('retries a PUT with a small body on another backend, body included', async () => {
    gw = await deadThenA();
    for (let i = 0; i < 4; i++) {
      const body = JSON.stringify({ i, pad: 'p'.repeat(1000) });
      const r = await send(`${gw.url}/doc/${i}`, {
        method: 'PUT',
        headers: { 'content-type': 'application/json' },
        body,
      });
      expect(r.status).toBe(200);
      expect(r.json<Echo>().body).toBe(body);
    }
    // Round robin offered 'dead' first half of the time: those attempts were retried.
    expect(
      gw.lb.balancer.snapshot().backends.find((b) => b.id === 'dead')!.failuresTotal,
    ).toBeGreaterThanOrEqual(2);
  });

  it('streams (and so does not retry) a body above retry.maxBodyBytes', async () => {
    gw = await deadThenA({ retry: { maxBodyBytes: 100 } });
    const statuses: number[] = [];
    for (let i = 0; i < 4; i++) {
      const r = await send(`${gw.url}/doc`, { method: 'PUT', body: 'b'.repeat(101) });
      statuses.push(r.status);
      // Its body went into the refused attempt; it reached no backend: 503 with Retry-After.
      if (r.status === 503) expect(r.headers['x-loadwise-error']).toBe('LW_GW_NO_BACKEND');
    }
    expect(statuses.sort()).toEqual([200, 200, 503, 503]);
  });
});

describe('a streamed upload the backend fails', () => {
  let backend: TestServer;
  let gw: TestGateway | undefined;
  beforeAll(async () => {
    // Resets its connection 64 KiB into an upload; answers anything else.
    backend = await listen(
      createServer((req, res) => {
        let n = 0;
        req.on('data', (c: Buffer) => {
          n += c.length;
          if (n > 65_536) req.socket.resetAndDestroy();
        });
        req.on('end', () => res.end('ok'));
      }),
    );
  });
  afterEach(async () => {
    await gw?.close();
    gw = undefined;
  });
  afterAll(() => backend.close());

  it('is answered 502 with Connection: close, so the keep-alive client reconnects for its next request', async () => {
    gw = await startLocalGateway({ backends: [{ id: 'b', url: backend.url }], retry: false });
    const agent = new Agent({ keepAlive: true, maxSockets: 1 });
    const exchange = (method: string, body?: Buffer) =>
      new Promise<{ status?: number; connection?: string; error?: string }>((resolve) => {
        const req = request(
          `${gw!.url}/upload`,
          { method, agent, headers: body ? { 'content-length': body.length } : {} },
          (res) => {
            res.resume();
            res.on('end', () =>
              resolve({ status: res.statusCode, connection: res.headers.connection }),
            );
          },
        );
        // Kept alive, the next request went to a connection the gateway no longer read.
        req.setTimeout(TIMEOUT_MS, () => req.destroy(new Error('no answer')));
        req.on('error', (e) => resolve({ error: e.message }));
        req.end(body);
      });
    try {
      const upload = await exchange('POST', Buffer.alloc(300 * 1024, 97));
      expect(upload).toEqual({ status: 502, connection: 'close' });
      expect(await exchange('GET')).toEqual({ status: 200, connection: 'keep-alive' });
    } finally {
      agent.destroy();
    }
  });
});

/**
 * The exact bytes and labels a backend receives behind body parsers, raw on
 * both sides: a body sent as it came must arrive byte for byte, with the
 * client's Content-Type and, while still encoded, its Content-Encoding.
 */
describe('request bodies, byte for byte', () => {
  let backend: TestServer;
  let gw: TestGateway;
  beforeAll(async () => {
    backend = await listen(
      createServer((req, res) => {
        const chunks: Buffer[] = [];
        req.on('data', (c: Buffer) => chunks.push(c));
        req.on('end', () => {
          res.setHeader('content-type', 'application/json');
          res.end(
            JSON.stringify({ headers: req.headers, hex: Buffer.concat(chunks).toString('hex') }),
          );
        });
      }),
    );
    gw = await startLocalGateway({ backends: [{ id: 'b', url: backend.url }] }, (app, lb) => {
      app.use('/raw', express.raw({ type: '*/*' }), lb);
      app.use('/json', express.json(), lb);
      app.use('/text', express.text({ type: 'text/*', defaultCharset: 'latin1' }), lb);
      // The usual way to keep a webhook's bytes for its signature.
      app.use(
        '/signed',
        express.json({
          verify: (req, _res, buf) => {
            (req as { rawBody?: Buffer }).rawBody = buf;
          },
        }),
        lb,
      );
      // A raw-body middleware that keeps the bytes as received (to check a signature) and
      // inflates nothing.
      app.use(
        '/kept',
        (req, _res, next) => {
          const chunks: Buffer[] = [];
          req.on('data', (c: Buffer) => chunks.push(c));
          req.on('end', () => {
            req.body = Buffer.concat(chunks);
            next();
          });
        },
        lb,
      );
    });
  });
  afterAll(async () => {
    await gw.close();
    await backend.close();
  });

  /** POSTs `body` with `headers` over a raw socket; what the backend received. */
  async function through(
    path: string,
    headers: Record<string, string>,
    body: Buffer,
  ): Promise<{ headers: Record<string, string>; bytes: Buffer }> {
    let head = `POST ${path} HTTP/1.1\r\nHost: x\r\nContent-Length: ${body.length}\r\n`;
    for (const [k, v] of Object.entries(headers)) head += `${k}: ${v}\r\n`;
    const ex = await rawExchange(gw.port, Buffer.concat([Buffer.from(`${head}\r\n`), body]), {
      responses: 1,
    });
    expect(ex.responses[0]!.status).toBe(200);
    const echo = JSON.parse(ex.responses[0]!.body) as {
      headers: Record<string, string>;
      hex: string;
    };
    return { headers: echo.headers, bytes: Buffer.from(echo.hex, 'hex') };
  }

  it("keeps a raw body's charset label: express.raw() decodes none", async () => {
    const latin1 = Buffer.from('café crème', 'latin1');
    const got = await through(
      '/raw/a',
      { 'Content-Type': 'text/plain; charset=iso-8859-1' },
      latin1,
    );
    expect(got.bytes).toEqual(latin1);
    expect(got.headers['content-type']).toBe('text/plain; charset=iso-8859-1');
    expect(got.headers['content-length']).toBe(String(latin1.length));
  });

  it('drops Content-Encoding of a body express.raw() inflated, keeps it on bytes still encoded', async () => {
    const json = Buffer.from('{"event":"paid"}');
    const zipped = gzipSync(json);
    const headers = { 'Content-Type': 'application/json', 'Content-Encoding': 'gzip' };
    const inflated = await through('/raw/a', headers, zipped);
    expect(inflated.bytes).toEqual(json);
    expect(inflated.headers['content-encoding']).toBeUndefined();
    const kept = await through('/kept/a', headers, zipped);
    expect(kept.bytes).toEqual(zipped);
    expect(kept.headers['content-encoding']).toBe('gzip');
    expect(kept.headers['content-length']).toBe(String(zipped.length));
    // deflate and br too: kept as they came, they went out without their label.
    for (const [coding, encoded] of [
      ['deflate', deflateSync(json)],
      ['br', brotliCompressSync(json)],
    ] as const) {
      const labels = { 'Content-Type': 'application/json', 'Content-Encoding': coding };
      const raw = await through('/raw/a', labels, encoded);
      expect([raw.bytes, raw.headers['content-encoding']]).toEqual([json, undefined]);
      const same = await through('/kept/a', labels, encoded);
      expect([same.bytes, same.headers['content-encoding']]).toEqual([encoded, coding]);
    }
  });

  it("drops the client's digests from bytes a parser decoded or rebuilt, keeps them on its own bytes", async () => {
    const json = Buffer.from('{"amount": 1.10}');
    const zipped = gzipSync(json);
    const digests = (bytes: Buffer): Record<string, string> => ({
      'Content-Digest': `sha-256=:${createHash('sha256').update(bytes).digest('base64')}:`,
      'Repr-Digest': `sha-256=:${createHash('sha256').update(bytes).digest('base64')}:`,
      Digest: `SHA-256=${createHash('sha256').update(bytes).digest('base64')}`,
      'Content-MD5': createHash('md5').update(bytes).digest('base64'),
    });
    const names = ['content-digest', 'repr-digest', 'digest', 'content-md5'];
    const present = (h: Record<string, string>): string[] => names.filter((n) => n in h);
    const type = { 'Content-Type': 'application/json' };
    // express.json() parsed it and the gateway wrote it again: {"amount":1.1}.
    const rebuilt = await through('/json/pay', { ...type, ...digests(json) }, json);
    expect(rebuilt.bytes.toString()).toBe('{"amount":1.1}');
    expect(present(rebuilt.headers)).toEqual([]);
    // express.raw() inflated the gzip the client's digests were computed over.
    const gz = { ...type, 'Content-Encoding': 'gzip', ...digests(zipped) };
    const inflated = await through('/raw/pay', gz, zipped);
    expect(inflated.bytes).toEqual(json);
    expect(present(inflated.headers)).toEqual([]);
    // The client's bytes, as they came: its digests still hold and go on.
    expect(present((await through('/kept/pay', gz, zipped)).headers)).toEqual(names);
    const plain = await through('/raw/pay', { ...type, ...digests(json) }, json);
    expect(plain.bytes).toEqual(json);
    expect(plain.headers['content-digest']).toBe(digests(json)['Content-Digest']);
    expect(present(plain.headers)).toEqual(names);
  });

  it('sends a .gz file uploaded with gzip compression as the file, without Content-Encoding', async () => {
    // express.raw() inflates the transfer's gzip; what is left, the file, starts with gzip's
    // magic number too. Kept as `Content-Encoding: gzip`, the backend inflated the file as well.
    const file = gzipSync(Buffer.from('a log line\n'.repeat(40)));
    const headers = { 'Content-Type': 'application/gzip', 'Content-Encoding': 'gzip' };
    const got = await through('/raw/upload', headers, gzipSync(file));
    expect(got.bytes).toEqual(file);
    expect(got.headers['content-encoding']).toBeUndefined();
    expect(got.headers['content-length']).toBe(String(file.length));
    // Bytes a middleware kept as they came are still the client's gzip, as before.
    const kept = await through('/kept/upload', headers, gzipSync(file));
    expect(kept.bytes).toEqual(gzipSync(file));
    expect(kept.headers['content-encoding']).toBe('gzip');
  });

  it('sends the bytes express.json({ verify }) kept in req.rawBody, numbers and all', async () => {
    const json = Buffer.from('{"id":12345678901234567890123,"n":9007199254740993,"price":1.10}');
    const got = await through(
      '/signed/hook',
      { 'Content-Type': 'application/json; charset=utf-8', 'Content-Encoding': 'gzip' },
      gzipSync(json),
    );
    expect(got.bytes).toEqual(json);
    expect(got.headers['content-type']).toBe('application/json; charset=utf-8');
    expect(got.headers['content-encoding']).toBeUndefined();
    expect(got.headers['content-length']).toBe(String(json.length));
  });

  it('labels a text body decoded and sent again as UTF-8, and only its charset parameter', async () => {
    const latin1 = Buffer.from('café', 'latin1');
    const utf8 = Buffer.from('café');
    // No charset named: the app's parser read latin-1, the backend must not guess.
    const bare = await through('/text/a', { 'Content-Type': 'text/plain' }, latin1);
    expect(bare.bytes).toEqual(utf8);
    expect(bare.headers['content-type']).toBe('text/plain; charset=utf-8');
    const type = 'text/plain; x-orig-charset=latin1; charset=iso-8859-1';
    const named = await through('/text/a', { 'Content-Type': type }, latin1);
    expect(named.bytes).toEqual(utf8);
    expect(named.headers['content-type']).toBe('text/plain; x-orig-charset=latin1; charset=utf-8');
  });
});
