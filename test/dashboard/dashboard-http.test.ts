/**
 * The dashboard over real HTTP (no browser): the token guards the page and
 * the stream (401 without it or with a wrong one, header or query), assets
 * are served from the package, and the event stream is cheap: one sampling
 * timer that runs only while someone watches, a viewer cap, and nothing left
 * open after close().
 */
import type { ServerResponse } from 'node:http';
import { connect } from 'node:net';
import type { Frame } from '../../packages/gateway-plugin/src/dashboard/frame';
import type { InitMessage } from '../../packages/gateway-plugin/src/dashboard/stream';
import { send, startBackend, type TestServer } from '../kit/http';
import { heldBeforeBalancer, startLocalGateway, type TestGateway } from '../kit/gateway';
import { openSse, type SseStream } from '../kit/sse';
import { dashboardOf } from '@loadwise/gateway-plugin/internals';

const TOKEN = 'dash-0123456789abcdef';
const STATUS_TOKEN = 'status-0123456789';
const PATH = '/_lb/dashboard';

let backends: TestServer[] = [];
let gw: TestGateway;
const streams: SseStream[] = [];

beforeAll(async () => {
  backends = await Promise.all(['b1', 'b2', 'b3'].map((id) => startBackend(id)));
  gw = await startLocalGateway({
    backends: backends.map((b, i) => ({ id: `b${i + 1}`, url: b.url })),
    statusPath: '/_lb/status',
    statusToken: STATUS_TOKEN,
    dashboard: { token: TOKEN, maxViewers: 2, intervalMs: 250 },
  });
});

afterEach(() => {
  for (const s of streams.splice(0)) s.close();
});

afterAll(async () => {
  await gw.close();
  await Promise.all(backends.map((b) => b.close()));
});

async function watch(query = `?token=${TOKEN}`): Promise<SseStream> {
  const s = await openSse(`${gw.url}${PATH}/events${query}`);
  streams.push(s);
  return s;
}

describe('the token', () => {
  it.each([
    ['no token', '', {}],
    ['a wrong token in the query', '?token=dash-0123456789abcdeX', {}],
    ['a wrong bearer token', '', { authorization: 'Bearer dash-0123456789abcdeX' }],
    ['the status token', `?token=${STATUS_TOKEN}`, {}],
  ])('refuses the page and the stream with %s (401)', async (_what, query, headers) => {
    for (const p of [PATH, `${PATH}/events`]) {
      const r = await send(`${gw.url}${p}${query}`, { headers });
      expect(r.status).toBe(401);
      expect(r.headers['www-authenticate']).toBe('Bearer realm="loadwise"');
      expect(r.body).not.toContain('b1');
    }
  });

  it('serves the page with ?token= or a bearer header, with a strict CSP and no referrer', async () => {
    for (const [query, headers] of [
      [`?token=${TOKEN}`, {}],
      ['', { authorization: `Bearer ${TOKEN}` }],
    ] as const) {
      const r = await send(`${gw.url}${PATH}${query}`, { headers });
      expect(r.status).toBe(200);
      expect(r.headers['content-type']).toBe('text/html; charset=utf-8');
      expect(r.headers['content-security-policy']).toContain("default-src 'none'");
      expect(r.headers['referrer-policy']).toBe('no-referrer');
      expect(r.headers['cache-control']).toBe('no-store');
      expect(r.body).toContain('<script src="dashboard/dashboard.js" defer></script>');
    }
  });

  it('takes the query token beside an Authorization header of its own (an auth proxy in front)', async () => {
    // oauth2-proxy and the like pass the user's token on as `Authorization: Bearer`; a
    // browser can send the dashboard's only in the query. The header alone was read: 401.
    const authorization = 'Bearer app-session-abc';
    const page = await send(`${gw.url}${PATH}?token=${TOKEN}`, { headers: { authorization } });
    expect(page.status).toBe(200);
    const s = await openSse(`${gw.url}${PATH}/events?token=${TOKEN}`, { authorization });
    streams.push(s);
    expect((await s.next('init')).event).toBe('init');
  });

  it('is not the status token: the dashboard token does not open the status endpoint', async () => {
    const r = await send(`${gw.url}/_lb/status`, { headers: { authorization: `Bearer ${TOKEN}` } });
    expect(r.status).toBe(401);
  });
});

describe('assets', () => {
  it('serves the script, styles and uPlot from the package, with ETags', async () => {
    for (const [name, type] of [
      ['dashboard.js', 'text/javascript'],
      ['dashboard.css', 'text/css'],
      ['uPlot.iife.min.js', 'text/javascript'],
      ['uPlot.min.css', 'text/css'],
    ]) {
      const r = await send(`${gw.url}${PATH}/${name}`);
      expect(r.status).toBe(200);
      expect(r.headers['content-type']).toContain(type);
      expect(r.body.length).toBeGreaterThan(500);
      const again = await send(`${gw.url}${PATH}/${name}`, {
        headers: { 'if-none-match': String(r.headers.etag) },
      });
      expect(again.status).toBe(304);
    }
    expect((await send(`${gw.url}${PATH}/uPlot.iife.min.js`)).body).toMatch(/^\/\*! .*uPlot/);
  });

  it('answers 404 under the dashboard path, 405 to other methods, 308 from a trailing slash', async () => {
    expect((await send(`${gw.url}${PATH}/nope.js`)).status).toBe(404);
    // Assets are a fixed in-memory table: no request path ever reaches the file system.
    expect((await send(`${gw.url}${PATH}/..%2Fpackage.json`)).status).toBe(404);
    const post = await send(`${gw.url}${PATH}?token=${TOKEN}`, { method: 'POST' });
    expect(post.status).toBe(405);
    const slash = await send(`${gw.url}${PATH}/?token=${TOKEN}`);
    expect(slash.status).toBe(308);
    expect(slash.headers.location).toBe(`../dashboard?token=${TOKEN}`);
    // Its Location carries the token: Chromium kept the redirect in its disk cache.
    expect(slash.headers['cache-control']).toBe('no-store');
    expect(slash.headers['referrer-policy']).toBe('no-referrer');
  });

  it('leaves every other path to the proxy', async () => {
    const r = await send(`${gw.url}/_lb/dashboardx`);
    expect(r.json<{ id: string; url: string }>().url).toBe('/_lb/dashboardx');
  });
});

describe('the event stream', () => {
  it('starts with the frame, history and events, then ticks; one timer only while watched', async () => {
    const d = dashboardOf(gw.lb)!;
    expect(d.stream.sampling).toBe(false);
    const s = await watch();
    expect(s.status).toBe(200);
    expect(s.headers['content-type']).toBe('text/event-stream; charset=utf-8');
    const init = JSON.parse((await s.next('init')).data) as InitMessage;
    expect(init.intervalMs).toBe(250);
    expect(init.frame.backends.map((b) => b.id)).toEqual(['b1', 'b2', 'b3']);
    expect(init.frame.backends[0]).toMatchObject({ state: 'healthy', reason: null });
    // A fleet this small is listed whole.
    expect(init.frame.fleet).toMatchObject({ total: 3, omitted: 0 });
    expect(d.stream.sampling).toBe(true);

    // A second viewer shares the timer.
    const s2 = await watch(`?token=${TOKEN}`);
    await s2.next('init');
    expect(d.stream.viewerCount).toBe(2);
    const tick = JSON.parse((await s.next('tick')).data) as { frame: Frame; point: unknown };
    expect(tick.frame.backends).toHaveLength(3);
    expect(tick.point).toMatchObject({ backends: { b1: expect.any(Array) } });

    s.close();
    s2.close();
    await waitFor(() => d.stream.viewerCount === 0);
    expect(d.stream.sampling).toBe(false);
  });

  it('caps the viewers (503 with Retry-After)', async () => {
    const a = await watch();
    const b = await watch();
    await Promise.all([a.next('init'), b.next('init')]);
    const refused = await send(`${gw.url}${PATH}/events?token=${TOKEN}`);
    expect(refused.status).toBe(503);
    expect(refused.headers['retry-after']).toBe('10');
  });
});

it('streams real state changes and sheds as recent events', async () => {
  // One backend that resets every request it has read: the first failure (502, as the
  // backend had it) ejects it, and with panic mode off the next request finds no backend
  // and is shed (503).
  const resetting = await startBackend('gone', (req) => void req.socket.destroy());
  const own = await startLocalGateway({
    backends: [{ id: 'gone', url: resetting.url }],
    retry: false,
    outlier: { consecutiveFailures: 1, panicThresholdPercent: 0 },
    dashboard: { token: TOKEN, intervalMs: 250 },
  });
  const s = await openSse(`${own.url}${PATH}/events?token=${TOKEN}`);
  try {
    await s.next('init');
    await s.next('tick'); // the first tick sets the baseline the shed counts grow from
    expect((await send(`${own.url}/x`)).status).toBe(502);
    expect((await send(`${own.url}/x`)).status).toBe(503);
    const seen: string[] = [];
    let frame: Frame | undefined;
    while (!seen.some((m) => m.startsWith('shed'))) {
      const tick = JSON.parse((await s.next('tick')).data) as {
        frame: Frame;
        events: { msg: string }[];
      };
      seen.push(...tick.events.map((e) => e.msg));
      frame = tick.frame;
    }
    expect(seen).toEqual([
      'backend gone ejected for 30 s after 1 consecutive failures',
      'shed 1 request with 503 (no-backend)',
    ]);
    expect(frame!.backends[0]).toMatchObject({
      id: 'gone',
      state: 'ejected',
      reason: '1 consecutive failures',
    });
    expect(frame!.backends[0]!.ejectedForMs).toBeGreaterThan(20_000);
    expect(frame!.shed['no-backend']).toBe(1);
  } finally {
    s.close();
    await own.close();
    await resetting.close();
  }
});

it('close() ends every open stream, so the HTTP server can close', async () => {
  const backend = await startBackend('solo');
  const own = await startLocalGateway({
    backends: [{ id: 'solo', url: backend.url }],
    dashboard: { token: TOKEN, intervalMs: 250 },
  });
  try {
    const s = await openSse(`${own.url}${PATH}/events?token=${TOKEN}`);
    await s.next('init');
    await own.lb.close();
    await s.ended;
    expect(dashboardOf(own.lb)!.stream.sampling).toBe(false);
    const after = await send(`${own.url}${PATH}/events?token=${TOKEN}`);
    expect(after.status).toBe(503);
  } finally {
    await own.close();
    await backend.close();
  }
});

it('close() cuts a viewer whose bytes are unsent, so the HTTP server can close', async () => {
  // A viewer that stopped reading: end() queued behind what it had not taken, its
  // response never finished, and the server's close() waited for it to leave, for good
  // if it never did. Unsent bytes held here by corking its socket.
  const backend = await startBackend('solo');
  const own = await startLocalGateway({
    backends: [{ id: 'solo', url: backend.url }],
    dashboard: { token: TOKEN, intervalMs: 250 },
  });
  const viewer = connect(own.port, '127.0.0.1');
  viewer.on('error', () => {});
  try {
    viewer.write(`GET ${PATH}/events?token=${TOKEN} HTTP/1.1\r\nHost: x\r\n\r\n`);
    const viewers = (dashboardOf(own.lb)!.stream as unknown as { viewers: Set<ServerResponse> })
      .viewers;
    await waitFor(() => viewers.size === 1);
    const res = [...viewers][0]!;
    res.socket!.cork();
    await waitFor(() => res.writableLength > 0);
    let closed = false;
    own.server.close(() => (closed = true));
    await own.lb.close({ graceMs: 0 });
    await waitFor(() => closed);
  } finally {
    viewer.destroy();
    await own.close().catch(() => {});
    await backend.close();
  }
});

async function waitFor(check: () => boolean, timeoutMs = 5000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!check()) {
    if (Date.now() > deadline) throw new Error('condition not met');
    await new Promise((r) => setTimeout(r, 20));
  }
}

it('a viewer that left while a middleware before the balancer ran holds no place', async () => {
  // A session lookup, say: async, before the balancer.
  const held = heldBeforeBalancer();
  const g = await startLocalGateway(
    {
      backends: [{ id: 'b1', url: backends[0]!.url }],
      dashboard: { token: TOKEN, maxViewers: 1, intervalMs: 250 },
    },
    held.mount,
  );
  try {
    const socket = connect(g.port, '127.0.0.1');
    socket.on('error', () => {});
    socket.write(`GET ${PATH}/events?token=${TOKEN} HTTP/1.1\r\nHost: a\r\n\r\n`);
    await held.reached;
    socket.destroy();
    await held.clientGone;
    held.letGo();
    await held.balancerRan;
    const d = dashboardOf(g.lb)!;
    expect([d.stream.viewerCount, d.stream.sampling]).toEqual([0, false]);
    // The one place is free: a real viewer gets its stream.
    const s = await openSse(`${g.url}${PATH}/events?token=${TOKEN}`);
    streams.push(s);
    await s.next('init');
  } finally {
    for (const s of streams.splice(0)) s.close();
    await g.close();
  }
});
