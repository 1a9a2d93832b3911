/**
 * trustForwarded behind appending proxies (nginx `$proxy_add_x_forwarded_for`,
 * AWS ALB, Envoy): each appends the address it got the request from to
 * X-Forwarded-For, so only the entries on the right are theirs and the
 * left-most is whatever the client wrote. The gateway counts trusted proxies
 * from the right: the backend's X-Real-IP, the per-client bounds and affinity
 * by client address all see the real client, as the app's `req.ip` does.
 */
import { createServer, request, type IncomingMessage } from 'node:http';
import WebSocket from 'ws';
import { registerStrategy, type Endpoint, type LoadBalanceOptions } from '@loadwise/gateway-plugin';
import { listen, send, startBackend, type TestServer } from '../kit/http';
import { startLocalGateway, type TestGateway } from '../kit/gateway';
import { rawExchange, until } from '../kit/raw-http';
import { wsEchoBackend } from '../kit/ws-server';

/**
 * A front proxy as nginx with `proxy_set_header X-Forwarded-For
 * $proxy_add_x_forwarded_for`: it appends the address it got the request
 * from to the X-Forwarded-For the request brought, and sets no X-Real-IP
 * (an AWS ALB sets none).
 */
function appendingProxy(targetPort: number): Promise<TestServer> {
  const server = createServer((req, res) => {
    const from = req.socket.remoteAddress ?? '';
    const prev = req.headers['x-forwarded-for'];
    const headers = { ...req.headers, 'x-forwarded-for': prev ? `${prev}, ${from}` : from };
    const out = request(
      {
        host: '127.0.0.1',
        port: targetPort,
        method: req.method,
        path: req.url,
        headers,
        agent: false,
      },
      (back) => {
        res.writeHead(back.statusCode ?? 502, back.headers);
        back.pipe(res);
      },
    );
    out.on('error', () => res.destroy());
    req.pipe(out);
  });
  return listen(server);
}

/** The hash key of every pick: what affinity by client address hashes. */
const hashKeys: Array<string | undefined> = [];
registerStrategy('record-hash-key', () => {
  let endpoints: readonly Endpoint[] = [];
  return {
    name: 'record-hash-key',
    setEndpoints: (e) => (endpoints = e),
    pick(ctx) {
      hashKeys.push(ctx.hashKey);
      return endpoints[0] && { endpoint: endpoints[0] };
    },
  };
});

interface Seen {
  url: string;
  headers: IncomingMessage['headers'];
}

describe('trustForwarded behind appending proxies', () => {
  let backend: TestServer;
  /** Answers to the requests under /hold, which the backend holds until called. */
  const held: Array<() => void> = [];
  let gw: TestGateway | undefined;
  const fronts: TestServer[] = [];
  beforeAll(async () => {
    backend = await startBackend('b', (req, res) => {
      const answer = (): void => {
        res.setHeader('content-type', 'application/json');
        res.end(JSON.stringify({ url: req.url, headers: req.headers }));
      };
      if (req.url?.startsWith('/hold')) held.push(answer);
      else answer();
    });
  });
  afterEach(async () => {
    for (const f of fronts.splice(0)) await f.close();
    await gw?.close();
    gw = undefined;
    hashKeys.length = 0;
  });
  afterAll(() => backend.close());

  /** A gateway whose app trusts as many proxies (`trust proxy`), and records the app's `req.ip`. */
  async function gateway(
    hops: number,
    opts: Partial<LoadBalanceOptions> = {},
  ): Promise<{ gw: TestGateway; appIps: string[] }> {
    const appIps: string[] = [];
    gw = await startLocalGateway(
      { backends: [{ id: 'b', url: backend.url }], trustForwarded: hops, ...opts },
      (app, lb) => {
        app.set('trust proxy', hops);
        app.use((req, _res, next) => {
          appIps.push(req.ip ?? '');
          next();
        });
        app.use(lb);
      },
    );
    return { gw, appIps };
  }

  /** `count` appending proxies chained in front of `port`; returns the outermost. */
  async function chain(port: number, count: number): Promise<TestServer> {
    let next = port;
    let outer: TestServer | undefined;
    for (let i = 0; i < count; i++) {
      outer = await appendingProxy(next);
      fronts.push(outer);
      next = outer.port;
    }
    return outer!;
  }

  it('sends the real client as X-Real-IP, whatever it forged, as the app sees it', async () => {
    const { gw, appIps } = await gateway(1, {
      strategy: 'record-hash-key',
      affinity: { clientAddress: true },
    });
    const front = await chain(gw.port, 1);
    const r = await send(`${front.url}/who`, {
      headers: { 'x-forwarded-for': '6.6.6.6', 'x-real-ip': '6.6.6.6' },
      localAddress: '127.0.0.2',
    });
    expect(r.status).toBe(200);
    const h = r.json<Seen>().headers;
    expect(h['x-real-ip']).toBe('127.0.0.2');
    // Still appended to: the client's entry, the front proxy's, the gateway's.
    expect(h['x-forwarded-for']).toBe('6.6.6.6, 127.0.0.2, 127.0.0.1');
    // Express's `trust proxy` 1 names the same client.
    expect(appIps).toEqual(['127.0.0.2']);
    // Affinity by client address hashes it too, not the proxy's address the
    // gateway appended before the key was read.
    expect(hashKeys).toEqual(['127.0.0.2']);
  });

  it("never passes a client's X-Original-URL or X-Rewrite-URL, trusted or not; keeps the trusted proxy's other values", async () => {
    // The app denies /admin before the balancer; a backend that routes by X-Original-URL
    // (Symfony's IIS support, IIS URL Rewrite) would serve /admin for a request to /public.
    const { gw } = await gateway(1, { trustHeaders: ['X-Forwarded-Prefix'] });
    const front = await chain(gw.port, 1);
    const r = await send(`${front.url}/public`, {
      headers: {
        'x-original-url': '/admin',
        'x-rewrite-url': '/admin',
        'x-forwarded-prefix': '/shop',
        'x-forwarded-proto': 'https',
      },
    });
    const h = r.json<Seen>().headers;
    expect([h['x-original-url'], h['x-rewrite-url']]).toEqual([undefined, undefined]);
    // What a trusted proxy may have set stays, as documented.
    expect([h['x-forwarded-prefix'], h['x-forwarded-proto']]).toEqual(['/shop', 'https']);
  });

  it("keeps a trusted proxy's X-Forwarded-Host, -Proto, -Port and Forwarded only when they are sound", async () => {
    const { gw } = await gateway(1, { trustHeaders: ['forwarded'] });
    const front = await chain(gw.port, 1);
    const sound = {
      'x-forwarded-host': 'shop.example, edge.example:8443',
      'x-forwarded-proto': 'https',
      'x-forwarded-port': '443',
      forwarded: 'for=192.0.2.60;proto=https;host="shop.example", for="[2001:db8::7]:4711"',
    };
    const kept = (await send(`${front.url}/public`, { headers: sound })).json<Seen>().headers;
    expect(kept).toMatchObject(sound);
    // A front proxy that sets none of them (an AWS ALB sets no X-Forwarded-Host) passes
    // the client's: refused as Host, a backend building its URL from it served /admin.
    const r = await send(`${front.url}/public`, {
      headers: {
        'x-forwarded-host': 'shop.example/admin?x=',
        'x-forwarded-proto': 'https://evil',
        'x-forwarded-port': '443/admin',
        forwarded: 'for=6.6.6.6;host="shop.example/admin?x="',
      },
    });
    const h = r.json<Seen>().headers;
    expect(h['x-forwarded-host']).toBe(`127.0.0.1:${front.port}`);
    expect(h['x-forwarded-proto']).toBe('http');
    expect(h['x-forwarded-port']).toBe(String(gw.port));
    expect(h.forwarded).toBeUndefined();
  });

  it("drops a client's Forwarded behind trusted proxies unless trustHeaders names it", async () => {
    // An adversarial review: behind an appending proxy (nginx, an ALB: neither sets
    // Forwarded) the client's `for=10.0.0.1;host=attacker.example` reached the backend as
    // the only element, which Spring and Jetty read before X-Forwarded-*.
    const { gw } = await gateway(1);
    const front = await chain(gw.port, 1);
    const r = await send(`${front.url}/public`, {
      headers: { forwarded: 'for=10.0.0.1;host=attacker.example;proto=https' },
    });
    const h = r.json<Seen>().headers;
    expect(h.forwarded).toBeUndefined();
    expect(h['x-real-ip']).toBe('127.0.0.1');
  });

  const spellings = {
    'x-client-ip': '6.6.6.6',
    'client-ip': '6.6.6.6',
    'true-client-ip': '6.6.6.6',
    'cf-connecting-ip': '6.6.6.6',
    'fastly-client-ip': '6.6.6.6',
    'x-cluster-client-ip': '6.6.6.6',
    'x-forwarded-ssl': 'on',
    'x-forwarded-prefix': '/admin',
    'front-end-https': 'on',
  };

  it.each([0, 1])(
    "drops httpoxy's Proxy header and other client-address and scheme spellings (trusted proxies: %i)",
    async (hops) => {
      // An appending proxy (nginx, an AWS ALB) passes a client's True-Client-IP or
      // X-Forwarded-Ssl on untouched: trusting it for X-Forwarded-For vouches for neither.
      const { gw } = await gateway(hops);
      const front = hops > 0 ? await chain(gw.port, hops) : gw;
      const r = await send(`${front.url}/who`, {
        headers: { proxy: 'http://attacker.example:8080', ...spellings },
      });
      const h = r.json<Seen>().headers;
      expect(h.proxy).toBeUndefined();
      for (const name of Object.keys(spellings)) expect([name, h[name]]).toEqual([name, undefined]);
    },
  );

  it('keeps the spellings named in trustHeaders, from trusted proxies', async () => {
    // A CDN in front sets CF-Connecting-IP itself, overwriting any a client sent.
    const { gw } = await gateway(1, { trustHeaders: ['CF-Connecting-IP', 'x-forwarded-ssl'] });
    const front = await chain(gw.port, 1);
    const r = await send(`${front.url}/who`, { headers: spellings });
    const h = r.json<Seen>().headers;
    const kept = Object.keys(spellings).filter((name) => h[name] !== undefined);
    expect(kept).toEqual(['cf-connecting-ip', 'x-forwarded-ssl']);
  });

  it.each([0, 1])(
    'drops what a client spells with underscores of the headers it sets (trusted proxies: %i)',
    async (hops) => {
      // PHP-FPM, uWSGI and older gunicorn read X_Real_IP as X-Real-IP (HTTP_X_REAL_IP).
      const { gw } = await gateway(hops);
      const front = hops > 0 ? await chain(gw.port, hops) : gw;
      const r = await send(`${front.url}/who`, {
        headers: {
          x_real_ip: '10.0.0.1',
          x_forwarded_for: '10.0.0.1',
          x_forwarded_proto: 'https',
          x_forwarded_host: 'admin.internal',
          x_original_url: '/admin',
          x_forwarded_ssl: 'on',
          x_app_trace: 'kept',
        },
      });
      const h = r.json<Seen>().headers;
      expect(Object.keys(h).filter((k) => k.includes('_'))).toEqual(['x_app_trace']);
      expect(h['x-real-ip']).toBe('127.0.0.1');
    },
  );

  it('counts several trusted proxies, and several X-Forwarded-For lines as one list', async () => {
    const { gw, appIps } = await gateway(2);
    const outer = await chain(gw.port, 2);
    const r = await send(`${outer.url}/who`, {
      headers: { 'x-forwarded-for': '6.6.6.6, 7.7.7.7' },
      localAddress: '127.0.0.2',
    });
    // The client, the outer proxy (as the inner one saw it), then the gateway's entry.
    expect(r.json<Seen>().headers).toMatchObject({
      'x-real-ip': '127.0.0.2',
      'x-forwarded-for': '6.6.6.6, 7.7.7.7, 127.0.0.2, 127.0.0.1, 127.0.0.1',
    });
    expect(appIps).toEqual(['127.0.0.2']);
    // Two lines, as a proxy that adds its own line instead of appending sends them.
    const lines =
      'GET /who HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: 6.6.6.6, 198.51.100.1\r\n' +
      'X-Forwarded-For: 203.0.113.7\r\nX-Real-IP: 6.6.6.6\r\nConnection: close\r\n\r\n';
    const raw = await rawExchange(gw.port, lines, { responses: 1 });
    const seen = JSON.parse(raw.responses[0]!.body) as Seen;
    expect(seen.headers['x-real-ip']).toBe('198.51.100.1');
  });

  it('rotating forged entries do not get past maxInFlightPerClient; other clients are served', async () => {
    const { gw } = await gateway(1, { maxInFlightPerClient: 2 });
    const front = await chain(gw.port, 1);
    const statuses: number[] = [];
    const answers = Array.from({ length: 6 }, (_, i) =>
      send(`${front.url}/hold/${i}`, {
        headers: { 'x-forwarded-for': `10.9.${i}.1` },
        localAddress: '127.0.0.2',
      }).then((r) => {
        statuses.push(r.status);
        return r;
      }),
    );
    // Two are held at the backend (in flight), the other four refused meanwhile.
    await until(() => held.length === 2 && statuses.length === 4);
    expect(statuses).toEqual([429, 429, 429, 429]);
    // Another client behind the same proxy has its own bound.
    const other = await send(`${front.url}/who`, { localAddress: '127.0.0.3' });
    expect([other.status, other.json<Seen>().headers['x-real-ip']]).toEqual([200, '127.0.0.3']);
    for (const answer of held.splice(0)) answer();
    await Promise.all(answers);
    expect(statuses.filter((s) => s === 200)).toHaveLength(2);
    const again = await send(`${front.url}/who`, {
      headers: { 'x-forwarded-for': '10.9.9.1' },
      localAddress: '127.0.0.2',
    });
    expect(again.status).toBe(200);
  });
});

describe('trustForwarded on WebSocket upgrades', () => {
  afterEach(() => {
    hashKeys.length = 0;
  });

  it('bounds webSockets.maxPerClient by the real client and sends it as X-Real-IP', async () => {
    // The backend answers each message with the X-Real-IP of its upgrade, and says so when
    // a client's True-Client-IP reached it.
    const ws = await wsEchoBackend((_m, req) =>
      req.headers['true-client-ip'] === undefined
        ? String(req.headers['x-real-ip'])
        : `forged ${String(req.headers['true-client-ip'])}`,
    );
    const gw = await startLocalGateway({
      backends: [{ id: 'b', url: ws.url }],
      trustForwarded: true,
      webSockets: { maxPerClient: 1 },
      strategy: 'record-hash-key',
      affinity: { clientAddress: true },
    });
    const open: WebSocket[] = [];
    /** An upgrade with the X-Forwarded-For an appending proxy sends for `client` that forged `forged`. */
    const upgrade = (forged: string, client: string): Promise<string | number> => {
      const socket = new WebSocket(`ws://127.0.0.1:${gw.port}/ws`, {
        headers: {
          'x-forwarded-for': `${forged}, ${client}`,
          'x-real-ip': forged,
          'true-client-ip': forged,
        },
      });
      open.push(socket);
      return new Promise((resolve, reject) => {
        socket.once('unexpected-response', (_req, res: IncomingMessage) => {
          res.resume();
          resolve(res.statusCode ?? 0);
        });
        socket.once('open', () => socket.send('who'));
        socket.once('message', (d) => resolve(String(d)));
        socket.once('error', reject);
      });
    };
    try {
      expect(await upgrade('10.9.0.1', '198.51.100.1')).toBe('198.51.100.1');
      expect(await upgrade('10.9.1.1', '198.51.100.1')).toBe(429);
      expect(await upgrade('10.9.0.1', '198.51.100.2')).toBe('198.51.100.2');
      expect(hashKeys).toEqual(['198.51.100.1', '198.51.100.2']);
    } finally {
      for (const s of open) s.terminate();
      await gw.close();
      await ws.close();
    }
  });
});
