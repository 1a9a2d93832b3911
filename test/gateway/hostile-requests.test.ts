/**
 * One request must not kill, fool or starve the gateway. Every case sends the
 * exact bytes over a raw socket (raw-http.ts) to a real Express gateway in
 * front of a real backend that records every request line its HTTP parser
 * reads: a smuggled request shows up there as a second line.
 */
import { createServer, request, type IncomingMessage } from 'node:http';
import { createServer as createNetServer } from 'node:net';
import express from 'express';
import { loadBalance, routeUpgrades, type LoadBalanceOptions } from '@loadwise/gateway-plugin';
import { listen, startBackend, type TestServer } from '../kit/http';
import {
  counterValue,
  openSlow,
  rawExchange,
  until,
  type RawExchange,
  type SlowClient,
} from '../kit/raw-http';
import { internals } from '@loadwise/gateway-plugin/internals';
import { heldBeforeBalancer } from '../kit/gateway';

// Real processes and sockets on a shared machine: jest's 5 s default (the
// project's testTimeout is not applied per project) is too tight for a fork.
jest.setTimeout(30_000);

interface Seen {
  line: string;
  headers: IncomingMessage['headers'];
  body: string;
  aborted: boolean;
}

/**
 * A backend that records each request its parser reads and answers
 * `{ line, bytes }` once the body is in; `hold`: requests it never answers.
 */
async function recordingBackend(
  opts: { hold?: (line: string) => boolean } = {},
): Promise<TestServer & { seen: Seen[] }> {
  const seen: Seen[] = [];
  const server = createServer((req, res) => {
    const entry: Seen = {
      line: `${req.method} ${req.url}`,
      headers: req.headers,
      body: '',
      aborted: false,
    };
    seen.push(entry);
    req.setEncoding('latin1');
    req.on('data', (c: string) => (entry.body += c));
    req.on('close', () => {
      if (!req.complete) entry.aborted = true;
    });
    req.on('end', () => {
      if (opts.hold?.(entry.line)) return;
      res.setHeader('content-type', 'application/json');
      res.end(JSON.stringify({ line: entry.line, bytes: entry.body.length }));
    });
  });
  return Object.assign(await listen(server), { seen });
}

interface Gw extends TestServer {
  lb: ReturnType<typeof loadBalance>;
  warnings: string[];
  metric(name: string, code?: string): Promise<number>;
}

async function gateway(
  opts: Partial<LoadBalanceOptions> & Pick<LoadBalanceOptions, 'backends'>,
  setup: (app: express.Express, lb: ReturnType<typeof loadBalance>) => void = (app, lb) =>
    app.use('/api', lb),
  server: { insecureHTTPParser?: boolean; upgrades?: boolean } = {},
): Promise<Gw> {
  const warnings: string[] = [];
  const lb = loadBalance({
    overload: false,
    healthCheck: false,
    logger: {
      info: () => {},
      warn: (m, msg) => warnings.push(msg ?? String(m)),
      error: (m, msg) => warnings.push(msg ?? String(m)),
    },
    ...opts,
  });
  const app = express();
  setup(app, lb);
  const srv = await listen(createServer({ insecureHTTPParser: server.insecureHTTPParser }, app));
  if (server.upgrades) srv.server.on('upgrade', routeUpgrades(app));
  return {
    ...srv,
    lb,
    warnings,
    close: async () => {
      await srv.close();
      await lb.close();
    },
    metric: async (name, code) =>
      counterValue(await lb.balancer.metricsRegistry.metrics(), name, code),
  };
}

const SMUGGLED = 'GET /admin/SMUGGLED HTTP/1.1\r\nHost: a\r\n\r\n';

/** A raw TCP backend answering each request's path with the bytes `answers` gives (node:http would tidy them). */
async function rawBackend(
  answers: Record<string, string>,
): Promise<TestServer & { lines: string[] }> {
  const lines: string[] = [];
  const raw = createNetServer((s) => {
    s.on('error', () => {});
    s.on('data', (d: Buffer) => {
      const line = /^(\S+ \S+)/.exec(d.toString('latin1'))?.[1] ?? '';
      lines.push(line);
      s.write(answers[line.split(' ')[1] ?? ''] ?? 'HTTP/1.1 404 No\r\nContent-Length: 0\r\n\r\n');
    });
  });
  const server = Object.assign(await listen(raw as unknown as Parameters<typeof listen>[0]), {
    lines,
  });
  others.push(server);
  return server;
}

let backend: TestServer & { seen: Seen[] };
let gw: Gw | undefined;
beforeEach(async () => {
  backend = await recordingBackend();
});
/** Other servers a test opened: closed after it, whether it passed or not. */
const others: TestServer[] = [];
afterEach(async () => {
  await gw?.close();
  gw = undefined;
  await backend.close();
  for (const s of others.splice(0)) await s.close();
});

describe('a request that made Node throw', () => {
  it("answers curl -H 'Trailer: X-T' instead of dying, and forwards no Trailer", async () => {
    gw = await gateway({ backends: [{ id: 'b', url: backend.url }] });
    const curl = `GET /api/ HTTP/1.1\r\nHost: 127.0.0.1:${gw.port}\r\nUser-Agent: curl/8.5.0\r\nAccept: */*\r\nTrailer: X-T\r\n\r\n`;
    const r = await rawExchange(gw.port, curl, { responses: 1 });
    expect(r.responses[0]?.status).toBe(200);
    expect(backend.seen.map((s) => s.line)).toEqual(['GET /']);
    expect(backend.seen[0]?.headers.trailer).toBeUndefined();
    // The same with a body framed by Content-Length, and chunked with a real trailer.
    const post = `POST /api/up HTTP/1.1\r\nHost: a\r\nTrailer: X-T\r\nContent-Length: 3\r\n\r\nabc`;
    const chunked =
      'POST /api/up HTTP/1.1\r\nHost: a\r\nTrailer: X-T\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\nX-T: 1\r\n\r\n';
    for (const req of [post, chunked]) {
      const p = await rawExchange(gw.port, req, { responses: 1 });
      expect(p.responses[0]?.status).toBe(200);
      expect(JSON.parse(p.responses[0]!.body)).toEqual({ line: 'POST /up', bytes: 3 });
    }
  });

  it('turns any throw while the request is prepared or sent into a coded, counted answer', async () => {
    gw = await gateway({ backends: [{ id: 'b', url: backend.url }] }, (app, lb) => {
      app.use((req, _res, next) => {
        // What a buggy middleware can leave for http.request() or the body write:
        if (req.url === '/bad-value') req.headers['x-note'] = 'line\nbreak';
        if (req.url === '/undefined-value') req.headers['x-user'] = undefined;
        if (req.url === '/throwing') {
          Object.defineProperty(req.headers, 'x-lazy', {
            enumerable: true,
            get: () => {
              throw new Error('getter blew up');
            },
          });
        }
        if (req.url === '/short-length') req.headers['content-length'] = '2';
        next();
      });
      app.use(lb);
    });
    const cases: Array<[string, number, string]> = [
      ['GET /bad-value HTTP/1.1\r\nHost: a\r\n\r\n', 400, 'LW_GW_BAD_REQUEST'],
      ['GET /throwing HTTP/1.1\r\nHost: a\r\n\r\n', 502, 'LW_GW_PROXY_ERROR'],
      // No client can send an undefined value: the app's bug, not the client's.
      ['GET /undefined-value HTTP/1.1\r\nHost: a\r\n\r\n', 502, 'LW_GW_PROXY_ERROR'],
      // The body is longer than the Content-Length a middleware left: the
      // extra bytes must not reach the backend as a request of their own.
      [
        `POST /short-length HTTP/1.1\r\nHost: a\r\nContent-Length: 41\r\n\r\n${SMUGGLED}`,
        502,
        'LW_GW_PROXY_ERROR',
      ],
    ];
    for (const [bytes, status, code] of cases) {
      const r = await rawExchange(gw.port, bytes, { responses: 1 });
      expect([r.responses[0]?.status, r.responses[0]?.headers['x-loadwise-error']]).toEqual([
        status,
        code,
      ]);
    }
    expect(await gw.metric('rejected_requests_total', 'LW_GW_BAD_REQUEST')).toBe(1);
    expect(await gw.metric('rejected_requests_total', 'LW_GW_PROXY_ERROR')).toBe(3);
    expect(backend.seen.map((s) => s.line)).not.toContain('GET /admin/SMUGGLED');
    // Not the backend's fault: no error counted against it, not ejected.
    expect(await gw.metric('backend_errors_total')).toBe(0);
    expect(gw.lb.balancer.snapshot().backends[0]?.inFlight).toBe(0);
    expect(gw.warnings.some((w) => w.includes('LW_GW_PROXY_ERROR'))).toBe(true);
    // Still serving.
    const ok = await rawExchange(gw.port, 'GET /fine HTTP/1.1\r\nHost: a\r\n\r\n', {
      responses: 1,
    });
    expect(ok.responses[0]?.status).toBe(200);
  });
});

describe('a backend answer Node cannot relay', () => {
  it('answers 502 for a status outside 100-599 or a bare 101, and drops a Trailer header on an unchunked body', async () => {
    const answers: Record<string, string> = {
      '/099': 'HTTP/1.1 099 Weird\r\nContent-Length: 2\r\n\r\nok',
      '/000': 'HTTP/1.1 000 Zero\r\nContent-Length: 2\r\n\r\nok',
      // RFC 9110 §15 defines 100-599; Node's client parses any three digits and its server
      // writes them back. Relayed, a 600 or 999 reached clients that treat it as anything.
      '/600': 'HTTP/1.1 600 Odd\r\nContent-Length: 2\r\n\r\nok',
      '/999': 'HTTP/1.1 999 Odd\r\nContent-Length: 2\r\n\r\nok',
      // A 101 without Upgrade to a request that asked for none (an app answering the status
      // a client names): Node's client takes it as the final answer, and relayed keep-alive
      // the client, or a proxy in front that tunnels on any 101, and the gateway disagreed
      // on what the connection now carries (WebSocket smuggling past a front proxy's rules).
      '/101': 'HTTP/1.1 101 Switching Protocols\r\n\r\n',
      '/trailer': 'HTTP/1.1 200 OK\r\nTrailer: X-T\r\nContent-Length: 2\r\n\r\nok',
    };
    // A raw TCP backend: node:http would refuse to write these heads.
    const raw = createNetServer((s) => {
      s.on('error', () => {});
      s.once('data', (d: Buffer) => {
        const path = /^GET (\S+)/.exec(d.toString('latin1'))?.[1] ?? '';
        s.end(answers[path] ?? 'HTTP/1.1 404 No\r\nContent-Length: 0\r\n\r\n');
      });
    });
    const rawBackend = await listen(raw as unknown as Parameters<typeof listen>[0]);
    gw = await gateway({ backends: [{ id: 'b', url: rawBackend.url }], retry: false }, (app, lb) =>
      app.use(lb),
    );
    const get = (path: string): Promise<RawExchange> =>
      rawExchange(gw!.port, `GET ${path} HTTP/1.1\r\nHost: a\r\n\r\n`, { responses: 1 });
    for (const path of ['/099', '/000', '/600', '/999', '/101']) {
      const r = await get(path);
      expect([path, r.responses[0]?.status, r.responses[0]?.headers['x-loadwise-error']]).toEqual([
        path,
        502,
        'LW_GW_UPSTREAM_FAILED',
      ]);
    }
    const t = await get('/trailer');
    expect([t.responses[0]?.status, t.responses[0]?.body, t.responses[0]?.headers.trailer]).toEqual(
      [200, 'ok', undefined],
    );
    // Those were the backend's failures: counted against it.
    expect(await gw.lb.balancer.metricsRegistry.metrics()).toMatch(
      /^loadwise_backend_errors_total\{backend="b",kind="5xx"\} 5$/m,
    );
    expect(await gw.metric('backend_errors_total')).toBe(5);
    await rawBackend.close();
  });
});

describe('a bare 101 with failOn5xx off', () => {
  it('is a 502 that is not held against the backend, as a 5xx is not', async () => {
    // An app that answers the status a client names (`/status/101`): with failOn5xx off,
    // a dozen such requests ejected a healthy backend (a re-review).
    const raw = createNetServer((s) => {
      s.on('error', () => {});
      s.once('data', () => s.end('HTTP/1.1 101 Switching Protocols\r\n\r\n'));
    });
    const rawBackend = await listen(raw as unknown as Parameters<typeof listen>[0]);
    gw = await gateway(
      {
        backends: [{ id: 'b', url: rawBackend.url }],
        retry: false,
        outlier: { failOn5xx: false, consecutiveFailures: 3 },
      },
      (app, lb) => app.use(lb),
    );
    for (let i = 0; i < 6; i++) {
      const r = await rawExchange(gw.port, 'GET /status/101 HTTP/1.1\r\nHost: a\r\n\r\n', {
        responses: 1,
      });
      expect(r.responses[0]?.status).toBe(502);
    }
    expect(gw.lb.balancer.snapshot().backends[0]!.state).toBe('healthy');
    await rawBackend.close();
  });
});

describe('a garbled answer with retries on', () => {
  it('is retried on another backend, and with none left answered 502, not 503 "no backend"', async () => {
    // A head Node's parser refuses (a header line without a colon): HPE_INVALID_HEADER_TOKEN.
    const garbled = 'HTTP/1.1 200 OK\r\nContent-Length: 2\r\nNo colon here\r\n\r\nok';
    const one = await rawBackend({ '/x': garbled });
    gw = await gateway({ backends: [{ id: 'one', url: one.url }] }, (app, lb) => app.use(lb));
    const get = (): Promise<RawExchange> =>
      rawExchange(gw!.port, 'GET /x HTTP/1.1\r\nHost: a\r\n\r\n', { responses: 1 });
    const alone = await get();
    expect([alone.responses[0]?.status, alone.responses[0]?.headers['x-loadwise-error']]).toEqual([
      502,
      'LW_GW_UPSTREAM_FAILED',
    ]);
    expect(one.lines).toEqual(['GET /x']);
    await gw.close();
    // Two backends that garble: the retry goes to the other one, then 502.
    const two = await rawBackend({ '/x': garbled });
    gw = await gateway(
      {
        backends: [
          { id: 'one', url: one.url },
          { id: 'two', url: two.url },
        ],
      },
      (app, lb) => app.use(lb),
    );
    const both = await get();
    expect([both.responses[0]?.status, both.responses[0]?.headers['x-loadwise-error']]).toEqual([
      502,
      'LW_GW_UPSTREAM_FAILED',
    ]);
    expect([one.lines, two.lines]).toEqual([['GET /x', 'GET /x'], ['GET /x']]);
    expect(await gw.metric('backend_errors_total')).toBe(2);
  });
});

describe("an answer whose head is over Node's limit", () => {
  it('is answered 502 at once: not retried on the others, no backend charged', async () => {
    // A redirect that echoes the URL: a client sizes its head (6 KiB of ':' is 18 KiB encoded).
    const redirecting = async (): Promise<TestServer & { hits: () => number }> => {
      let hits = 0;
      const server = createServer((req, res) => {
        hits++;
        res.writeHead(302, { location: `/login?next=${encodeURIComponent(req.url!)}` }).end();
      });
      const s = await listen(server);
      others.push(s);
      return Object.assign(s, { hits: () => hits });
    };
    const fleet = [await redirecting(), await redirecting(), await redirecting()];
    gw = await gateway(
      {
        backends: fleet.map((b, i) => ({ id: `b${i}`, url: b.url })),
        outlier: { consecutiveFailures: 3 },
      },
      (app, lb) => app.use(lb),
    );
    for (let i = 0; i < 6; i++) {
      const r = await rawExchange(
        gw.port,
        `GET /${':'.repeat(6_000)} HTTP/1.1\r\nHost: a\r\n\r\n`,
        { responses: 1 },
      );
      expect([r.responses[0]?.status, r.responses[0]?.headers['x-loadwise-error']]).toEqual([
        502,
        'LW_GW_UPSTREAM_FAILED',
      ]);
    }
    // One attempt each; retried, every request reached all three, and b0 was ejected.
    expect(fleet.reduce((n, b) => n + b.hits(), 0)).toBe(6);
    const snap = gw.lb.balancer.snapshot().backends;
    expect(snap.map((b) => [b.id, b.state, b.failuresTotal])).toEqual([
      ['b0', 'healthy', 0],
      ['b1', 'healthy', 0],
      ['b2', 'healthy', 0],
    ]);
    const ok = await rawExchange(gw.port, 'GET /short HTTP/1.1\r\nHost: a\r\n\r\n', {
      responses: 1,
    });
    expect(ok.responses[0]?.status).toBe(302);
  });

  it("to a short request is the backend's failure: charged, timed, it stops drawing traffic", async () => {
    // 17 KB of Location whatever was asked: the backend chose that size.
    const huge = createServer((_req, res) => {
      res.writeHead(302, { location: `/${'x'.repeat(17_000)}` }).end();
    });
    const bad = await listen(huge);
    const good = await startBackend('good');
    others.push(bad, good);
    gw = await gateway(
      {
        backends: [
          { id: 'bad', url: bad.url },
          { id: 'good', url: good.url },
        ],
        outlier: { consecutiveFailures: 3 },
        retry: false,
      },
      (app, lb) => app.use(lb),
    );
    let failed = 0;
    for (let i = 0; i < 40; i++) {
      const r = await rawExchange(gw.port, 'GET /short HTTP/1.1\r\nHost: a\r\n\r\n', {
        responses: 1,
      });
      if (r.responses[0]?.status === 502) failed++;
    }
    // Before: never charged nor timed, it looked idle, kept most picks, each one a 502.
    const charged = gw.lb.balancer.snapshot().backends.find((b) => b.id === 'bad')!;
    expect(charged.failuresTotal).toBeGreaterThanOrEqual(1);
    expect(charged.latencyMs).not.toBeNull();
    expect([charged.requestsTotal, failed]).toEqual([charged.failuresTotal, charged.failuresTotal]);
    expect(failed).toBeLessThanOrEqual(5);
  });
});

describe('what a backend says about its own connection', () => {
  it('never reaches the client: Keep-Alive, Connection and what it names, Upgrade, TE, Proxy-Authenticate', async () => {
    const hop = (connection: string): string =>
      `HTTP/1.1 200 OK\r\nContent-Length: 2\r\nKeep-Alive: timeout=65\r\nConnection: ${connection}\r\nX-Secret: 1\r\nUpgrade: h2c\r\nTE: trailers\r\nProxy-Authenticate: Basic\r\nX-Kept: 1\r\n\r\nok`;
    const raw = await rawBackend({ '/named': hop('x-secret, keep-alive'), '/close': hop('close') });
    gw = await gateway({ backends: [{ id: 'b', url: raw.url }] }, (app, lb) => app.use(lb));
    const r = await rawExchange(
      gw.port,
      'GET /named HTTP/1.1\r\nHost: a\r\n\r\nGET /close HTTP/1.1\r\nHost: a\r\n\r\n',
      { responses: 2 },
    );
    const [named, close] = r.responses;
    expect([named?.status, named?.body, named?.headers['x-kept']]).toEqual([200, 'ok', '1']);
    expect(named?.headers['x-secret']).toBeUndefined();
    for (const h of [named!.headers, close!.headers]) {
      expect([h.te, h['proxy-authenticate']]).toEqual([undefined, undefined]);
      expect([h['keep-alive'], h.upgrade, h.connection]).toEqual([
        undefined,
        undefined,
        'keep-alive',
      ]);
    }
    // The backend closing its connection does not close the client's.
    expect(close?.headers['x-secret']).toBe('1');
    expect(r.closed).toBe(false);
  });

  it('relays a complete answer followed by stray bytes (HEAD, 204) and does not blame the backend', async () => {
    const raw = await rawBackend({
      '/head': 'HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: 1\r\n\r\nhello',
      '/204': 'HTTP/1.1 204 No Content\r\nX-A: 2\r\n\r\nstray',
    });
    gw = await gateway({ backends: [{ id: 'b', url: raw.url }], retry: false }, (app, lb) =>
      app.use(lb),
    );
    const head = await rawExchange(gw.port, 'HEAD /head HTTP/1.1\r\nHost: a\r\n\r\n', {
      responses: 1,
      bodiless: [0],
    });
    expect([head.responses[0]?.status, head.responses[0]?.headers['x-a']]).toEqual([200, '1']);
    const noContent = await rawExchange(gw.port, 'GET /204 HTTP/1.1\r\nHost: a\r\n\r\n', {
      responses: 1,
    });
    expect([noContent.responses[0]?.status, noContent.responses[0]?.headers['x-a']]).toEqual([
      204,
      '2',
    ]);
    expect(await gw.metric('backend_errors_total')).toBe(0);
    expect(gw.warnings.join('\n')).toMatch(/sent bytes after a complete answer to HEAD \/head/);
  });
});

describe('a backend that switches protocols unasked', () => {
  it('fails the attempt at once (502, the backend blamed), instead of a 504 after requestTimeoutMs', async () => {
    const raw = await rawBackend({
      '/ws':
        'HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n',
    });
    gw = await gateway(
      { backends: [{ id: 'b', url: raw.url }], retry: false, requestTimeoutMs: 60_000 },
      (app, lb) => app.use(lb),
    );
    const r = await rawExchange(gw.port, 'GET /ws HTTP/1.1\r\nHost: a\r\n\r\n', {
      responses: 1,
      guardMs: 5_000,
    });
    expect([r.responses[0]?.status, r.responses[0]?.headers['x-loadwise-error']]).toEqual([
      502,
      'LW_GW_UPSTREAM_FAILED',
    ]);
    expect(await gw.metric('backend_errors_total')).toBe(1);
  });
});

describe('framing forwarded', () => {
  it('in the one spelling every parser reads, whatever spelling the client used', async () => {
    // Streamed (a body read before dispatch goes with its Content-Length, whatever its framing).
    gw = await gateway({ backends: [{ id: 'b', url: backend.url }], requestBuffering: false });
    for (const bytes of [
      'POST /api/x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: CHUNKED\r\n\r\n3\r\nabc\r\n0\r\n\r\n',
      'POST /api/x HTTP/1.1\r\nHost: a\r\nContent-Length: 0003\r\n\r\nabc',
    ]) {
      const r = await rawExchange(gw.port, bytes, { responses: 1 });
      expect(r.responses[0]?.status).toBe(200);
    }
    expect(
      backend.seen.map((s) => [
        s.headers['transfer-encoding'],
        s.headers['content-length'],
        s.body,
      ]),
    ).toEqual([
      ['chunked', undefined, 'abc'],
      [undefined, '3', 'abc'],
    ]);
  });
});

describe('pipelining', () => {
  it('answers the requests before a refused one, then closes: none is lost', async () => {
    gw = await gateway({ backends: [{ id: 'b', url: backend.url }] });
    const r = await rawExchange(
      gw.port,
      'POST /api/order HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\n{}' +
        'GET /api/x HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n' +
        'GET /api/after HTTP/1.1\r\nHost: a\r\n\r\n',
      { guardMs: 5_000 },
    );
    expect(r.responses.map((x) => [x.status, x.headers['x-loadwise-error']])).toEqual([
      [200, undefined],
      [400, 'LW_GW_BAD_REQUEST'],
    ]);
    expect(JSON.parse(r.responses[0]!.body)).toEqual({ line: 'POST /order', bytes: 2 });
    expect(r.closed).toBe(true);
    expect(backend.seen.map((s) => s.line)).toEqual(['POST /order']);
  });
});

describe('pipelined requests, one at a time', () => {
  it('dispatches each once the answer before it is done: a GET never overtakes the POST before it', async () => {
    // Node hands over every pipelined request at once; the small POST, read for retries,
    // was overtaken by the GET behind it, which read the state from before the write
    // (RFC 9112 §9.3.2: only safe methods may be processed in parallel). nginx serialises.
    const order: string[] = [];
    const slow = await listen(
      createServer((req, res) => {
        const what = `${req.method} ${req.url}`;
        order.push(`start ${what}`);
        req.resume();
        req.on('end', () =>
          setTimeout(
            () => {
              order.push(`end ${what}`);
              res.end(what);
            },
            req.method === 'GET' ? 0 : 150,
          ),
        );
      }),
    );
    others.push(slow);
    gw = await gateway({ backends: [{ id: 'b', url: slow.url }] });
    const r = await rawExchange(
      gw.port,
      'POST /api/create HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello' +
        'GET /api/read HTTP/1.1\r\nHost: a\r\n\r\n' +
        'DELETE /api/item HTTP/1.1\r\nHost: a\r\n\r\n' +
        'GET /api/item HTTP/1.1\r\nHost: a\r\n\r\n',
      { responses: 4 },
    );
    expect(r.responses.map((x) => [x.status, x.body])).toEqual([
      [200, 'POST /create'],
      [200, 'GET /read'],
      [200, 'DELETE /item'],
      [200, 'GET /item'],
    ]);
    expect(order).toEqual([
      'start POST /create',
      'end POST /create',
      'start GET /read',
      'end GET /read',
      'start DELETE /item',
      'end DELETE /item',
      'start GET /item',
      'end GET /item',
    ]);
  });
});

describe('Host', () => {
  it.each([
    'example.com/admin?x=',
    'example.com/admin#',
    'example.com\\admin',
    'a@evil.example',
    'a b',
    'a%2fb',
    'a..b',
    '..',
    '',
  ])(
    'refuses Host %j with 400 and forwards nothing (a backend builds its URL from Host)',
    async (host) => {
      // `Host: example.com/admin?x=` with `GET /public` reached /admin at a backend building
      // `http://${host}${req.url}`, past the app's guard on /admin, and X-Forwarded-Host
      // carried it too (RFC 9112 §3.2: 400 for an invalid Host).
      gw = await gateway({ backends: [{ id: 'b', url: backend.url }] }, undefined, {
        upgrades: true,
      });
      const r = await rawExchange(
        gw.port,
        `GET /api/public HTTP/1.1\r\nHost: ${host}\r\n\r\nGET /api/after HTTP/1.1\r\nHost: a\r\n\r\n`,
      );
      expect([r.responses.length, r.responses[0]?.status, r.closed]).toEqual([1, 400, true]);
      expect(r.responses[0]?.headers['x-loadwise-error']).toBe('LW_GW_BAD_REQUEST');
      // An upgrade that is not a WebSocket's (h2c) is served as a request: refused the same,
      // and said for its Host (the line named a body it did not have).
      const h2c = await rawExchange(
        gw.port,
        `GET /api/h2 HTTP/1.1\r\nHost: ${host}\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n`,
        { guardMs: 5_000 },
      );
      expect(h2c.responses[0]?.headers['x-loadwise-error']).toBe('LW_GW_BAD_REQUEST');
      expect(gw.warnings).toContainEqual(
        expect.stringContaining('an upgrade to "h2c": Host is not a host name'),
      );
      const upgrade = await rawExchange(
        gw.port,
        `GET /api/ws HTTP/1.1\r\nHost: ${host}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n`,
        { guardMs: 5_000 },
      );
      expect(upgrade.responses[0]?.headers['x-loadwise-error']).toBe('LW_GW_BAD_REQUEST');
      expect(backend.seen).toEqual([]);
    },
  );

  it('forwards a host name, an address or an IPv6 literal with a port; without Host (HTTP/1.0), no X-Forwarded-Host', async () => {
    gw = await gateway({ backends: [{ id: 'b', url: backend.url }] });
    const hosts = [
      'example.com',
      'Example.COM.:8080',
      '[::1]:8080',
      '127.0.0.1',
      'my_host-1',
      'a:',
    ];
    for (const host of hosts) {
      const r = await rawExchange(gw.port, `GET /api/x HTTP/1.1\r\nHost: ${host}\r\n\r\n`, {
        responses: 1,
      });
      expect([host, r.responses[0]?.status]).toEqual([host, 200]);
    }
    expect(backend.seen.map((s) => [s.headers.host, s.headers['x-forwarded-host']])).toEqual(
      hosts.map((h) => [h, h]),
    );
    const r = await rawExchange(gw.port, 'GET /api/old HTTP/1.0\r\n\r\n');
    expect(r.responses[0]?.status).toBe(200);
    // It was sent empty. (Node's client names the backend in Host, as nginx's $proxy_host.)
    expect(backend.seen.at(-1)!.headers).not.toHaveProperty('x-forwarded-host');
  });
});

describe('request smuggling', () => {
  it('keeps Content-Length when Connection names it: the backend parses one request', async () => {
    gw = await gateway({ backends: [{ id: 'b', url: `${backend.url}/base` }] });
    for (const method of ['GET', 'DELETE', 'OPTIONS']) {
      const bytes = `${method} /api/x HTTP/1.1\r\nHost: a\r\nConnection: content-length\r\nContent-Length: 41\r\n\r\n${SMUGGLED}`;
      const r = await rawExchange(gw.port, bytes, { responses: 1 });
      expect(r.responses[0]?.status).toBe(200);
    }
    expect(backend.seen.map((s) => s.line)).toEqual([
      'GET /base/x',
      'DELETE /base/x',
      'OPTIONS /base/x',
    ]);
    expect(backend.seen.every((s) => s.body === SMUGGLED)).toBe(true);
  });

  it('keeps a chunked DELETE/OPTIONS body framed (http-proxy gives it Content-Length: 0)', async () => {
    gw = await gateway({ backends: [{ id: 'b', url: `${backend.url}/base` }] });
    const size = Buffer.byteLength(SMUGGLED).toString(16);
    for (const method of ['DELETE', 'OPTIONS']) {
      const bytes = `${method} /api/x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n${size}\r\n${SMUGGLED}\r\n0\r\n\r\n`;
      const r = await rawExchange(gw.port, bytes, { responses: 1 });
      expect(r.responses[0]?.status).toBe(200);
    }
    expect(backend.seen.map((s) => s.line)).toEqual(['DELETE /base/x', 'OPTIONS /base/x']);
    expect(backend.seen.map((s) => s.body)).toEqual([SMUGGLED, SMUGGLED]);
  });

  it('never lets Connection strip what the app checked; drops TE, proxy credentials, the status token; sets X-Real-IP', async () => {
    gw = await gateway({ backends: [{ id: 'b', url: backend.url }] }, (app, lb) => {
      app.use((req, res, next) =>
        req.headers.authorization === 'Bearer ok' ? next() : res.status(401).end(),
      );
      app.use(lb);
    });
    const bytes =
      'GET /private HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer ok\r\n' +
      'Connection: authorization, host, keep-alive, x-client-note\r\nX-Client-Note: mine\r\n' +
      'Keep-Alive: timeout=1\r\nProxy-Connection: keep-alive\r\nTE: trailers\r\nUpgrade: h2c\r\n' +
      'Proxy-Authorization: Basic dTpw\r\nX-Real-IP: 6.6.6.6\r\n' +
      // A near miss of the status path (`/_lb/status/`) is proxied: its token must not be.
      'X-Loadwise-Token: status-secret\r\n\r\n';
    const r = await rawExchange(gw.port, bytes, { responses: 1 });
    expect(r.responses[0]?.status).toBe(200);
    const h = backend.seen[0]!.headers;
    expect(h).toMatchObject({
      authorization: 'Bearer ok',
      host: 'a',
      'x-client-note': 'mine',
      'x-real-ip': '127.0.0.1',
      'x-forwarded-for': '127.0.0.1',
      connection: 'keep-alive', // the gateway's own pool
    });
    for (const gone of [
      'te',
      'keep-alive',
      'proxy-connection',
      'upgrade',
      'proxy-authorization',
      'x-loadwise-token',
    ])
      expect([gone, h[gone]]).toEqual([gone, undefined]);
  });

  it('refuses TRACE (405), which would echo a credential a hook adds, then serves the next request', async () => {
    gw = await gateway(
      {
        backends: [{ id: 'b', url: backend.url }],
        on: { proxyReq: (proxyReq) => proxyReq.setHeader('x-internal-auth', 'gateway-secret') },
      },
      (app, lb) => app.use(lb),
      { upgrades: true },
    );
    const r = await rawExchange(
      gw.port,
      'TRACE /echo HTTP/1.1\r\nHost: a\r\n\r\nGET /after HTTP/1.1\r\nHost: a\r\n\r\n',
      { responses: 2 },
    );
    expect(r.responses.map((x) => [x.status, x.headers['x-loadwise-error']])).toEqual([
      [405, 'LW_GW_METHOD_NOT_ALLOWED'],
      [200, undefined],
    ]);
    expect(r.responses[0]!.body).not.toContain('gateway-secret');
    // An upgrade by TRACE is refused the same way, its socket answered and closed.
    const up = await rawExchange(
      gw.port,
      'TRACE /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n',
      { guardMs: 5_000 },
    );
    expect([
      up.responses[0]?.status,
      up.responses[0]?.headers['x-loadwise-error'],
      up.closed,
    ]).toEqual([405, 'LW_GW_METHOD_NOT_ALLOWED', true]);
    // Only the request after the TRACE reached the backend, with the hook's header.
    expect(backend.seen.map((x) => [x.line, x.headers['x-internal-auth']])).toEqual([
      ['GET /after', 'gateway-secret'],
    ]);
    expect(await gw.metric('rejected_requests_total', 'LW_GW_METHOD_NOT_ALLOWED')).toBe(2);
  });

  it('refuses framing it cannot forward safely with 400 and closes the connection', async () => {
    // insecureHTTPParser: Node's lenient parser lets TE with CL through; the gateway must not.
    gw = await gateway({ backends: [{ id: 'b', url: backend.url }] }, undefined, {
      insecureHTTPParser: true,
    });
    const cases = [
      'POST /api/x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n',
      'POST /api/x HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n',
      'POST /api/x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n',
      'GET /api/x HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n',
    ];
    for (const bytes of cases) {
      const r = await rawExchange(gw.port, bytes + 'GET /api/after HTTP/1.1\r\nHost: a\r\n\r\n');
      expect([r.responses.length, r.responses[0]?.status, r.closed]).toEqual([1, 400, true]);
      expect(r.responses[0]?.headers['x-loadwise-error']).toBe('LW_GW_BAD_REQUEST');
    }
    expect(backend.seen).toEqual([]);
    expect(await gw.metric('rejected_requests_total', 'LW_GW_BAD_REQUEST')).toBe(cases.length);
  });

  it('refuses Transfer-Encoding on HTTP/1.0 (400, closed), which strict Node reads as chunked', async () => {
    // A proxy in front that reads 1.0 framing sees one request (its body ends with the
    // connection); Node read two, and the backend got the second.
    gw = await gateway({ backends: [{ id: 'b', url: backend.url }] });
    const r = await rawExchange(
      gw.port,
      'POST /api/first HTTP/1.0\r\nHost: a\r\nConnection: keep-alive\r\nTransfer-Encoding: chunked\r\n\r\n' +
        '3\r\nabc\r\n0\r\n\r\nGET /api/second HTTP/1.1\r\nHost: a\r\n\r\n',
    );
    expect([r.responses.length, r.responses[0]?.status, r.closed]).toEqual([1, 400, true]);
    expect(r.responses[0]?.headers['x-loadwise-error']).toBe('LW_GW_BAD_REQUEST');
    expect(backend.seen).toEqual([]);
  });
});

describe('Connection: close from the client', () => {
  it('is honoured: the answer says close and the gateway closes, while its backend pool stays open', async () => {
    gw = await gateway({ backends: [{ id: 'b', url: backend.url }] });
    for (const bytes of [
      'GET /api/x HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n',
      'GET /api/y HTTP/1.0\r\nHost: a\r\n\r\n',
    ]) {
      // No response count: resolves when the gateway closes (a hang fails at guardMs).
      const r = await rawExchange(gw.port, bytes, { guardMs: 5_000 });
      expect(r.closed).toBe(true);
      expect(r.responses).toHaveLength(1);
      expect(r.responses[0]!.status).toBe(200);
      expect(r.responses[0]!.headers.connection).toBe('close');
    }
    // The client's hop-by-hop header never reaches the backend: its pooled connection stays.
    expect(backend.seen.map((s) => s.headers.connection)).toEqual(['keep-alive', 'keep-alive']);
    // Control: a keep-alive client's connection stays open after its answer.
    const open = await rawExchange(gw.port, 'GET /api/z HTTP/1.1\r\nHost: a\r\n\r\n', {
      responses: 1,
    });
    expect(open.closed).toBe(false);
    expect(open.responses[0]!.headers.connection).toBe('keep-alive');
  });
});

describe('paths', () => {
  const escapes = [
    '/api/..\\..\\secret',
    '/api/../../secret',
    '/api/%2e%2e/%2E%2E/secret',
    '/api/..%2F..%2Fsecret',
    '/api/.%2e%5csecret',
    '/api/..;/secret',
    '/api/./admin',
  ];

  it.each([false, true])(
    'refuses dot-segments before the base path is joined (forwardMountPath %s)',
    async (forwardMountPath) => {
      gw = await gateway({ backends: [{ id: 'b', url: `${backend.url}/base` }], forwardMountPath });
      for (const path of escapes) {
        const r = await rawExchange(gw.port, `GET ${path} HTTP/1.1\r\nHost: a\r\n\r\n`, {
          responses: 1,
        });
        expect([path, r.responses[0]?.status, r.responses[0]?.headers['x-loadwise-error']]).toEqual(
          [path, 400, 'LW_GW_BAD_PATH'],
        );
      }
      expect(backend.seen).toEqual([]);
      const ok = await rawExchange(
        gw.port,
        'GET /api/a/b.txt?next=../x HTTP/1.1\r\nHost: a\r\n\r\n',
        {
          responses: 1,
        },
      );
      expect(ok.responses[0]?.status).toBe(200);
      expect(backend.seen.map((s) => s.line)).toEqual([
        forwardMountPath ? 'GET /base/api/a/b.txt?next=../x' : 'GET /base/a/b.txt?next=../x',
      ]);
    },
  );
});

describe('paths http-proxy would rewrite', () => {
  it('refuses // and \\, which the app matched as they came and the backend would get merged', async () => {
    gw = await gateway({ backends: [{ id: 'b', url: `${backend.url}/base` }] }, (app, lb) => {
      app.use('/api/admin', (_req, res) => void res.status(403).end());
      app.use('/api', lb);
    });
    for (const [path, status] of [
      ['/api/admin/users', 403],
      ['/api//admin/users', 400],
      ['/api/\\admin/users', 400],
      ['/api/x//', 400],
    ] as const) {
      const r = await rawExchange(gw.port, `GET ${path} HTTP/1.1\r\nHost: a\r\n\r\n`, {
        responses: 1,
      });
      expect([path, r.responses[0]?.status]).toEqual([path, status]);
    }
    expect(backend.seen).toEqual([]);
    expect(await gw.metric('rejected_requests_total', 'LW_GW_BAD_PATH')).toBe(3);
  });

  it("refuses an absolute-form target whose authority url.parse reads as path, and 'http:/'", async () => {
    gw = await gateway({ backends: [{ id: 'b', url: `${backend.url}/base` }] }, (app, lb) =>
      app.use(lb),
    );
    for (const [target, status] of [
      // The host ends at `%` for url.parse: the rest reached the backend as /base/%2e%2e%2fsecret.
      ['http://x%2e%2e%2fsecret', 400],
      ['http://x%2f..%2f..%2fsecret', 400],
      // Checked as /y, forwarded as /:abc/y.
      ['http://x:abc/y', 400],
      // http-proxy's urlJoin makes it /go/http://evil.example/x.
      ['/go/http:/evil.example/x', 400],
      ['http://x:8080/a?q=%2e%2e', 200],
    ] as const) {
      // An absolute-form target's host is Host's (request-checks.ts otherHost).
      const host = target.startsWith('http://x:8080') ? 'x:8080' : 'a';
      const r = await rawExchange(gw.port, `GET ${target} HTTP/1.1\r\nHost: ${host}\r\n\r\n`, {
        responses: 1,
      });
      expect([target, r.responses[0]?.status, r.responses[0]?.headers['x-loadwise-error']]).toEqual(
        [target, status, status === 400 ? 'LW_GW_BAD_PATH' : undefined],
      );
    }
    expect(backend.seen.map((s) => s.line)).toEqual(['GET /base/a?q=%2e%2e']);
  });

  it('checks an upgrade as a request: a bad path or a target that is not one gets 400 at once', async () => {
    gw = await gateway(
      { backends: [{ id: 'b', url: `${backend.url}/base` }] },
      (app, lb) => app.use('/api', lb),
      { upgrades: true },
    );
    const upgrade = 'Connection: Upgrade\r\nUpgrade: websocket\r\n\r\n';
    for (const [target, code] of [
      ['/api/x/../../secret', 'LW_GW_BAD_PATH'],
      ['/api/..\\..\\secret', 'LW_GW_BAD_PATH'],
      ['/api//admin', 'LW_GW_BAD_PATH'],
      // Another host than Host (request-checks.ts otherHost), as a plain request.
      ['http://admin.internal/api/x', 'LW_GW_BAD_PATH'],
    ] as const) {
      const r = await rawExchange(gw.port, `GET ${target} HTTP/1.1\r\nHost: a\r\n${upgrade}`, {
        guardMs: 5_000,
      });
      expect([target, r.responses[0]?.status, r.responses[0]?.headers['x-loadwise-error']]).toEqual(
        [target, 400, code],
      );
      expect(r.closed).toBe(true);
    }
    const twoHosts = await rawExchange(
      gw.port,
      `GET /api/ws HTTP/1.1\r\nHost: a\r\nHost: b\r\n${upgrade}`,
      { guardMs: 5_000 },
    );
    expect(twoHosts.responses[0]?.headers['x-loadwise-error']).toBe('LW_GW_BAD_REQUEST');
    expect(backend.seen).toEqual([]);
  });

  it('answers an upgrade of `*` with 400 instead of holding its socket', async () => {
    gw = await gateway({ backends: [{ id: 'b', url: backend.url }] }, (app, lb) => app.use(lb), {
      upgrades: true,
    });
    const r = await rawExchange(
      gw.port,
      'GET * HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n',
      { guardMs: 5_000 },
    );
    expect([r.responses[0]?.status, r.responses[0]?.headers['x-loadwise-error'], r.closed]).toEqual(
      [400, 'LW_GW_BAD_PATH', true],
    );
  });
});

describe('upgrades to a backend that serves only HTTP (the README mounts lb for every upgrade)', () => {
  /** A backend with no 'upgrade' listener: Node serves an upgrade as a plain request. */
  async function httpOnlyBackend(hold = false): Promise<
    TestServer & {
      seen: Array<{ line: string; port: number; headers: IncomingMessage['headers'] }>;
      closedSockets: () => number;
    }
  > {
    const seen: Array<{ line: string; port: number; headers: IncomingMessage['headers'] }> = [];
    const state = { closedSockets: 0 };
    const server = createServer((req, res) => {
      seen.push({
        line: `${req.method} ${req.url}`,
        port: req.socket.remotePort!,
        headers: req.headers,
      });
      if (hold) return;
      res.setHeader('content-type', 'text/plain');
      res.end('plain');
    });
    server.on('connection', (sock) => sock.once('close', () => state.closedSockets++));
    const srv = await listen(server);
    const out = Object.assign(srv, { seen, closedSockets: () => state.closedSockets });
    others.push(out);
    return out;
  }
  const upgradeHead = 'Connection: Upgrade\r\nUpgrade: websocket\r\n';

  it('refuses an upgrade with a body (400): http-proxy would send the head only, and smuggle', async () => {
    const http = await httpOnlyBackend();
    gw = await gateway({ backends: [{ id: 'h', url: http.url }] }, (app, lb) => app.use(lb), {
      upgrades: true,
    });
    const r = await rawExchange(
      gw.port,
      `GET /health HTTP/1.1\r\nHost: a\r\n${upgradeHead}Content-Length: 20\r\n\r\n`,
      { guardMs: 5_000 },
    );
    expect([r.responses[0]?.status, r.responses[0]?.headers['x-loadwise-error'], r.closed]).toEqual(
      [400, 'LW_GW_BAD_REQUEST', true],
    );
    expect(http.seen).toEqual([]);
  });

  it('never gives the connection of an upgrade answered without 101 back to the pool', async () => {
    const http = await httpOnlyBackend();
    gw = await gateway({ backends: [{ id: 'h', url: http.url }] }, (app, lb) => app.use(lb), {
      upgrades: true,
    });
    const up = await rawExchange(gw.port, `GET /ws HTTP/1.1\r\nHost: a\r\n${upgradeHead}\r\n`, {
      responses: 1,
    });
    expect(up.responses[0]?.status).toBe(200);
    // At once: on the old code the next request reused that connection (the pool is LIFO).
    const plain = await rawExchange(gw.port, 'GET /next HTTP/1.1\r\nHost: a\r\n\r\n', {
      responses: 1,
    });
    expect(plain.responses[0]?.status).toBe(200);
    expect(http.seen.map((x) => x.line)).toEqual(['GET /ws', 'GET /next']);
    expect(http.seen[1]!.port).not.toBe(http.seen[0]!.port);
    await until(() => http.closedSockets() === 1);
  });

  it('drops Trailer and TE from an upgrade: a client cannot make it throw and charge the backend', async () => {
    const http = await httpOnlyBackend();
    gw = await gateway({ backends: [{ id: 'h', url: http.url }] }, (app, lb) => app.use(lb), {
      upgrades: true,
    });
    for (let i = 0; i < 6; i++) {
      const r = await rawExchange(
        gw.port,
        `GET /ws HTTP/1.1\r\nHost: a\r\n${upgradeHead}Trailer: x\r\nTE: trailers\r\n\r\n`,
        { guardMs: 5_000 },
      );
      expect(r.responses[0]?.status).toBe(200);
    }
    expect(http.seen).toHaveLength(6);
    expect(
      http.seen.every((x) => x.headers.trailer === undefined && x.headers.te === undefined),
    ).toBe(true);
    expect(await gw.metric('backend_errors_total')).toBe(0);
    expect(gw.lb.balancer.snapshot().backends[0]!.state).toBe('healthy');
  });

  it('relays a chunked answer to an upgrade framed by the close, not as chunked bare bytes', async () => {
    // A raw backend: a chunked 404 with its own connection headers and a reason phrase of its own.
    const raw = await rawBackend({
      '/ws':
        'HTTP/1.1 404 Gone Fishing\r\nTransfer-Encoding: chunked\r\nConnection: keep-alive, x-hop\r\n' +
        'Keep-Alive: timeout=5\r\nX-Hop: 1\r\nX-Kept: 1\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n',
    });
    gw = await gateway({ backends: [{ id: 'r', url: raw.url }] }, (app, lb) => app.use(lb), {
      upgrades: true,
    });
    const r = await rawExchange(gw.port, `GET /ws HTTP/1.1\r\nHost: a\r\n${upgradeHead}\r\n`, {
      guardMs: 5_000,
    });
    const head = r.raw.slice(0, r.raw.indexOf('\r\n\r\n')).toLowerCase();
    expect(r.raw.startsWith('HTTP/1.1 404 Not Found\r\n')).toBe(true);
    expect(head).not.toContain('transfer-encoding');
    expect(head).not.toContain('keep-alive');
    expect(head).not.toContain('x-hop');
    expect(head).toContain('connection: close');
    expect(head).toContain('x-kept: 1');
    // The body as the backend meant it, ended by the close.
    expect(r.raw.slice(r.raw.indexOf('\r\n\r\n') + 4)).toBe('hello world');
    expect(r.closed).toBe(true);
  });

  it('bounds the wait for the answer to an upgrade: 504 after requestTimeoutMs, backend connection closed', async () => {
    const held = await httpOnlyBackend(true);
    gw = await gateway(
      { backends: [{ id: 'h', url: held.url }], requestTimeoutMs: 300 },
      (app, lb) => app.use(lb),
      { upgrades: true },
    );
    const r = await rawExchange(gw.port, `GET /ws HTTP/1.1\r\nHost: a\r\n${upgradeHead}\r\n`, {
      guardMs: 5_000,
    });
    expect([r.responses[0]?.status, r.responses[0]?.headers['x-loadwise-error'], r.closed]).toEqual(
      [504, 'LW_GW_UPSTREAM_TIMEOUT', true],
    );
    expect(held.seen).toHaveLength(1);
    // Nothing is left holding a socket of the backend's pool.
    await until(() => held.closedSockets() === 1);
  });
});

describe('slow clients', () => {
  /**
   * A body too slow or silent was answered 408 and its connection closed; a streamed one's
   * backend request was aborted, a held one never reached the backend; the backend is not
   * charged, and nothing is left in flight.
   */
  async function expectBodyTimedOut(r: RawExchange, how: string): Promise<void> {
    expect([r.responses[0]?.status, r.responses[0]?.headers['x-loadwise-error'], r.closed]).toEqual(
      [408, 'LW_GW_BODY_TIMEOUT', true],
    );
    if (how === 'streamed') await until(() => backend.seen[0]?.aborted === true);
    else expect(backend.seen).toHaveLength(0);
    expect(await gw!.metric('backend_errors_total')).toBe(0);
    expect(await gw!.metric('rejected_requests_total', 'LW_GW_BODY_TIMEOUT')).toBe(1);
    const b = gw!.lb.balancer.snapshot().backends[0]!;
    expect([b.inFlight, b.state]).toEqual([0, 'healthy']);
  }

  it.each([
    // Streamed (over retry.maxBodyBytes): the backend has the request, and it is aborted.
    ['streamed', 100_000],
    // Held in memory to be sent again if need be: the backend never sees it.
    ['held', 10],
  ])('answers a stalled %s body 408 without blaming the backend', async (how, length) => {
    gw = await gateway({
      backends: [{ id: 'b', url: backend.url }],
      clientBodyTimeoutMs: 200,
      // Streamed from dispatch only without reading before it (requestBuffering).
      ...(how === 'streamed' && { requestBuffering: false as const }),
    });
    const r = await rawExchange(
      gw.port,
      `POST /api/upload HTTP/1.1\r\nHost: a\r\nContent-Length: ${length}\r\n\r\nabc`,
    );
    await expectBodyTimedOut(r, how);
  });

  it.each([
    ['streamed', 100_000],
    ['held', 10_000],
  ])(
    'answers a %s body trickling under clientBodyMinRate 408, though it is never silent',
    async (how, length) => {
      // Five addresses sending such bodies held a backend's whole pool until the server's
      // requestTimeout: the per-client bound caps one address, the silence timeout never fired.
      gw = await gateway({
        backends: [{ id: 'b', url: backend.url }],
        // Small figures, so that it runs in a second: 1,000 B/s after 300 ms of reading.
        clientBodyMinRate: { bytesPerSec: 1_000, graceMs: 300 },
        ...(how === 'streamed' && { requestBuffering: false as const }),
      });
      const c = await openSlow(
        gw.port,
        `POST /api/upload HTTP/1.1\r\nHost: a\r\nContent-Length: ${length}\r\n\r\nx`,
      );
      // One byte every 50 ms: never silent for clientBodyTimeoutMs (10 s).
      const drip = setInterval(() => c.socket.write('x'), 50);
      try {
        await until(() => c.responses().length === 1);
      } finally {
        clearInterval(drip);
      }
      await expectBodyTimedOut(await c.closed, how);
    },
  );

  it('lets a full-duplex stream the backend answered talk under the rate, silence still timed', async () => {
    // A chat over chunked HTTP/1.1: the backend answers at once and acknowledges each message.
    // At 20 bytes every 60 ms, under the 1,000 B/s minimum, it was cut past the grace with its
    // answer half sent (the client saw a reset); the backend answered, no slot waits on it.
    const duplex = await listen(
      createServer((req, res) => {
        res.writeHead(200, { 'content-type': 'application/x-ndjson' });
        let n = 0;
        req.on('data', () => res.write(`${++n}\n`));
        req.on('end', () => res.end('end\n'));
      }),
    );
    others.push(duplex);
    gw = await gateway({
      backends: [{ id: 'd', url: duplex.url }],
      clientBodyMinRate: { bytesPerSec: 1_000, graceMs: 300 },
      // Streamed from dispatch, as a full-duplex route must be (docs/gateway.md).
      requestBuffering: false,
    });
    const body = await new Promise<string>((resolve, reject) => {
      const req = request({
        port: gw!.port,
        host: '127.0.0.1',
        method: 'POST',
        path: '/api/chat',
        headers: { 'transfer-encoding': 'chunked' },
      });
      let sent = 0;
      let timer: NodeJS.Timeout | undefined;
      const next = (): void => {
        if (++sent > 15) return void req.end(); // 900 ms of talk: three graces
        req.write('{"msg":"hello 1234"}');
        timer = setTimeout(next, 60);
      };
      req.on('response', (res) => {
        let text = '';
        res.setEncoding('utf8');
        res.on('data', (d: string) => (text += d));
        res.on('end', () => resolve(text));
        res.on('error', reject);
      });
      req.on('error', (err) => {
        clearTimeout(timer);
        reject(err);
      });
      req.flushHeaders();
      next();
    });
    expect(body.trim().split('\n').at(-1)).toBe('end');
    expect(body.trim().split('\n')).toHaveLength(16);
    expect(await gw.metric('rejected_requests_total', 'LW_GW_BODY_TIMEOUT')).toBe(0);
  });

  it('does not count against a fast upload the time its backend takes nothing (backpressure)', async () => {
    // The backend's socket takes nothing for 1.5 s: corked, so Node's buffer (not the
    // kernel's megabytes) fills and the upload pauses after its first chunk. Counted, that
    // time puts the whole body under the minimum (1 MiB in 1.5 s, under 2 MB/s); it is the
    // backend's, not the client's, whose bytes are all waiting to be read.
    let uncork: NodeJS.Timeout | undefined;
    gw = await gateway({
      backends: [{ id: 'b', url: backend.url }],
      clientBodyMinRate: { bytesPerSec: 2_000_000, graceMs: 300 },
      on: {
        proxyReq: (proxyReq) => {
          proxyReq.cork();
          uncork = setTimeout(() => proxyReq.uncork(), 1_500);
        },
      },
    });
    const size = 1 << 20;
    const c = await openSlow(
      gw.port,
      `POST /api/upload HTTP/1.1\r\nHost: a\r\nContent-Length: ${size}\r\n\r\n`,
    );
    try {
      c.socket.write(Buffer.alloc(size, 'u'));
      await until(() => c.responses().length === 1);
    } finally {
      clearTimeout(uncork);
      c.socket.destroy();
    }
    const [res] = c.responses();
    expect(res?.status).toBe(200);
    expect(JSON.parse(res!.body)).toEqual({ line: 'POST /upload', bytes: size });
    expect(await gw.metric('rejected_requests_total', 'LW_GW_BODY_TIMEOUT')).toBe(0);
  });

  it('does not time the backend out while a slow but live client is still uploading', async () => {
    gw = await gateway({ backends: [{ id: 'b', url: backend.url }], requestTimeoutMs: 150 });
    const c = await openSlow(
      gw.port,
      'POST /api/upload HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\n',
    );
    for (const byte of 'abcde') {
      await new Promise((r) => setTimeout(r, 80)); // 400 ms in all: longer than requestTimeoutMs
      c.socket.write(byte);
    }
    await until(() => c.responses().length === 1);
    c.socket.destroy();
    const [res] = c.responses();
    expect(res?.status).toBe(200);
    expect(JSON.parse(res!.body)).toEqual({ line: 'POST /upload', bytes: 5 });
    expect(await gw.metric('backend_errors_total')).toBe(0);
  });

  it('bounds the requests one client address holds; other clients are served', async () => {
    const held = await recordingBackend({ hold: (line) => line.startsWith('POST') });
    gw = await gateway({
      backends: [{ id: 'b', url: held.url }],
      maxInFlightPerClient: 5,
      requestBuffering: false,
    });
    const slow: SlowClient[] = [];
    // Over retry.maxBodyBytes, not read before dispatch: streamed to the backend as it
    // comes, so it holds a slot there.
    const upload = 'POST /api/upload HTTP/1.1\r\nHost: a\r\nContent-Length: 100000\r\n\r\nx';
    for (let i = 0; i < 20; i++) slow.push(await openSlow(gw.port, upload, '127.0.0.2'));
    await until(() => held.seen.length === 5);
    for (const c of slow.slice(5)) {
      const r = await c.closed; // a refused upload's connection is closed, its body unread
      expect([r.responses[0]?.status, r.responses[0]?.headers['x-loadwise-error']]).toEqual([
        429,
        'LW_GW_CLIENT_LIMIT',
      ]);
      expect(r.responses[0]?.headers['retry-after']).toBe('1');
    }
    expect(held.seen).toHaveLength(5);
    const get = 'GET /api/x HTTP/1.1\r\nHost: a\r\n\r\n';
    // The same address is still at its bound; another one is served.
    const same = await rawExchange(gw.port, get, { responses: 1, localAddress: '127.0.0.2' });
    expect(same.responses[0]?.status).toBe(429);
    const other = await rawExchange(gw.port, get, { responses: 1 });
    expect(other.responses[0]?.status).toBe(200);
    expect(await gw.metric('rejected_requests_total', 'LW_GW_CLIENT_LIMIT')).toBe(16);
    // Slots come back when the requests end.
    for (const c of slow) c.socket.destroy();
    await until(() => internals(gw!.lb).flow.clients?.clients === 0);
    const again = await rawExchange(gw.port, get, { responses: 1, localAddress: '127.0.0.2' });
    expect(again.responses[0]?.status).toBe(200);
    await held.close();
  });
});

describe('a client that leaves takes nothing with it', () => {
  /** Requests in flight, client slots and the backend's in-flight count: all back to 0. */
  async function nothingHeld(g: Gw): Promise<void> {
    const b = internals(g.lb);
    await until(
      () =>
        b.flow.active === 0 &&
        (b.flow.clients?.clients ?? 0) === 0 &&
        b.snapshot().backends.every((x) => x.inFlight === 0),
    );
  }

  it('pipelined requests behind a running one, the connection then closed', async () => {
    const held = await recordingBackend({ hold: (line) => line === 'GET /1' });
    others.push(held);
    gw = await gateway({ backends: [{ id: 'b', url: held.url }], maxInFlightPerClient: 4 });
    const slow = await openSlow(
      gw.port,
      ['/api/1', '/api/2', '/api/3'].map((p) => `GET ${p} HTTP/1.1\r\nHost: a\r\n\r\n`).join(''),
    );
    // The first is at the backend; the two behind it are admitted, and wait for its answer.
    await until(() => held.seen.length === 1 && internals(gw!.lb).flow.active === 3);
    slow.socket.destroy();
    // Node never emits 'close' on the two waiting answers: their flows ended anyway.
    await nothingHeld(gw);
  });

  it('leaving while an async middleware before the balancer runs', async () => {
    // An auth or session lookup that takes a while.
    const held = heldBeforeBalancer();
    gw = await gateway(
      { backends: [{ id: 'b', url: backend.url }], maxInFlightPerClient: 4 },
      held.mount,
    );
    const slow = await openSlow(gw.port, 'GET /late HTTP/1.1\r\nHost: a\r\n\r\n');
    await held.reached;
    slow.socket.destroy();
    // The server has seen the connection close before the middleware lets the request go.
    await held.clientGone;
    held.letGo();
    await held.balancerRan;
    await nothingHeld(gw);
    expect(backend.seen.map((s) => s.line)).not.toContain('GET /late');
  });

  it('a queued request with a header Node refuses gets 400, the process lives, the queue moves on', async () => {
    const held = await recordingBackend({ hold: (line) => line === 'GET /slow' });
    others.push(held);
    gw = await gateway(
      {
        backends: [{ id: 'b', url: held.url }],
        saturation: { maxInFlightPerBackend: 1 },
      },
      (app, lb) => {
        app.use((req, _res, next) => {
          // A user name from a verified token, say: not a valid header value byte string.
          if (req.url === '/bad') req.headers['x-user'] = '\u0141ukasz';
          next();
        });
        app.use(lb);
      },
    );
    const slow = await openSlow(gw.port, 'GET /slow HTTP/1.1\r\nHost: a\r\n\r\n');
    await until(() => held.seen.length === 1);
    // Waits in the queue: the backend's one place is taken.
    const bad = rawExchange(gw.port, 'GET /bad HTTP/1.1\r\nHost: a\r\n\r\n', { responses: 1 });
    await until(() => internals(gw!.lb).queue.length === 1);
    // The place frees: the waiter's attempt throws, ends at once, and drains the queue
    // again from inside the drain (which recursed until the stack overflowed).
    slow.socket.destroy();
    const r = await bad;
    expect([r.responses[0]?.status, r.responses[0]?.headers['x-loadwise-error']]).toEqual([
      400,
      'LW_GW_BAD_REQUEST',
    ]);
    await nothingHeld(gw);
  });

  it('a client gone before the head is no success of the backend, nor a failure', async () => {
    const held = await recordingBackend({ hold: () => true });
    others.push(held);
    gw = await gateway({ backends: [{ id: 'b', url: held.url }] });
    const slow = await openSlow(gw.port, 'GET /api/x HTTP/1.1\r\nHost: a\r\n\r\n');
    await until(() => held.seen.length === 1);
    slow.socket.destroy();
    await nothingHeld(gw);
    const b = internals(gw.lb).registry.get('b')!;
    // A timed "answer" would have let the active checker skip this backend's path check.
    expect(b.lastAnsweredAtMs).toBeUndefined();
    expect(await gw.metric('backend_errors_total')).toBe(0);
  });
});

describe('the connection after the answer', () => {
  it("says close on the answer that reaches the server's maxRequestsPerSocket", async () => {
    gw = await gateway({ backends: [{ id: 'b', url: backend.url }] });
    gw.server.maxRequestsPerSocket = 2;
    const get = (p: string): string => `GET /api/${p} HTTP/1.1\r\nHost: a\r\n\r\n`;
    const r = await rawExchange(gw.port, get('1'), { then: [get('2'), get('3')] });
    // Two answers, the second with `Connection: close`, then the close: no third request
    // on this connection, and so no bare 503 from Node.
    expect(r.responses.map((x) => [x.status, x.headers.connection])).toEqual([
      [200, 'keep-alive'],
      [200, 'close'],
    ]);
    expect(r.closed).toBe(true);
  });

  it('drops the forwarding headers it does not set from an untrusted client', async () => {
    gw = await gateway({ backends: [{ id: 'b', url: backend.url }] });
    const spoofed = [
      'X-Forwarded-Ssl: on',
      'X-Forwarded-Scheme: https',
      'X-Forwarded-Prefix: /admin',
      'Front-End-Https: on',
      'X-Original-URL: /admin',
    ];
    const r = await rawExchange(
      gw.port,
      `GET /api/x HTTP/1.1\r\nHost: a\r\n${spoofed.join('\r\n')}\r\n\r\n`,
      { responses: 1 },
    );
    expect(r.responses[0]?.status).toBe(200);
    const h = backend.seen.at(-1)!.headers;
    for (const line of spoofed) {
      const name = line.split(':')[0]!.toLowerCase();
      expect([name, h[name]]).toEqual([name, undefined]);
    }
    expect(h['x-forwarded-proto']).toBe('http');
  });
});

describe('a request the pool queues for a socket', () => {
  it('gets its hook and its body before the head goes: a place freed by a client that left', async () => {
    const held = await recordingBackend({ hold: (line) => line === 'GET /slow' });
    others.push(held);
    // One socket and one place: the queued PUT is dispatched the moment the GET's client
    // leaves, while the pool still counts the GET's socket, so the pool queues the PUT.
    gw = await gateway({
      backends: [{ id: 'b', url: held.url }],
      agent: { maxSockets: 1 },
      retry: false,
      on: { proxyReq: (proxyReq) => proxyReq.setHeader('x-hooked', '1') },
    });
    const slow = await openSlow(gw.port, 'GET /api/slow HTTP/1.1\r\nHost: a\r\n\r\n');
    await until(() => held.seen.length === 1);
    const put = rawExchange(
      gw.port,
      'PUT /api/x HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello',
      {
        responses: 1,
      },
    );
    await until(() => internals(gw!.lb).queue.length === 1);
    slow.socket.destroy();
    const r = await put;
    expect([r.responses[0]?.status, r.responses[0]?.headers['x-loadwise-error']]).toEqual([
      200,
      undefined,
    ]);
    expect(JSON.parse(r.responses[0]!.body)).toEqual({ line: 'PUT /x', bytes: 5 });
    expect(held.seen[1]?.headers['x-hooked']).toBe('1');
  });
});
