/**
 * The gateway's own answers (status, metrics, the dashboard's event stream) to a
 * request pipelined behind a slow proxied one, whose connection then closes. Node
 * emits no 'close' on a response still queued behind another when its connection
 * goes (its request gets 'close', the response nothing), and each of these answers
 * released what it held on that 'close': forty such connections held the status
 * bodies' 32 MiB bound at 3,000 backends, and every status request got 503 until
 * the gateway restarted; three held a dashboard's three viewer places for 17
 * minutes. The queued response now gets its 'close' when its connection closes.
 */
import { connect } from 'node:net';
import { dashboardOf } from '@loadwise/gateway-plugin/internals';
import { expressGateway } from '../kit/gateway';
import { eventually } from '../kit/fleet';
import { send, startBackend, type TestServer } from '../kit/http';

const TOKEN = 'dashboard-token-0123456789';
const STATUS_TOKEN = 'status-token-0123';

let backend: TestServer;
let gw: Awaited<ReturnType<typeof expressGateway>>;
/** Responses to the admin paths seen by a middleware before the balancer: closed or not. */
const admin: { url: string; closed: boolean }[] = [];
beforeAll(async () => {
  // Answers /slow after 60 s (the test closes the connection long before).
  backend = await startBackend('b', (req, res) => {
    const t = setTimeout(() => res.end('late'), req.url === '/slow' ? 60_000 : 0);
    res.once('close', () => clearTimeout(t));
  });
  gw = await expressGateway(
    backend.url,
    {
      statusPath: '/_lb/status',
      metricsPath: '/_lb/metrics',
      statusToken: STATUS_TOKEN,
      dashboard: { token: TOKEN, maxViewers: 1, intervalMs: 250 },
    },
    (app, lb) => {
      app.use((req, res, next) => {
        if (req.url.startsWith('/_lb/')) {
          const seen = { url: req.url, closed: false };
          admin.push(seen);
          res.once('close', () => (seen.closed = true));
        }
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

it.each([
  ['status', `/_lb/status`, `x-loadwise-token: ${STATUS_TOKEN}`],
  ['metrics', `/_lb/metrics`, `x-loadwise-token: ${STATUS_TOKEN}`],
  ['the dashboard stream', `/_lb/dashboard/events?token=${TOKEN}`, 'x-test: 1'],
])(
  '%s, queued behind a slow request whose connection closes, lets go',
  async (_what, path, header) => {
    admin.length = 0;
    const socket = connect(gw.port, '127.0.0.1');
    socket.on('error', () => undefined);
    socket.write(
      `GET /slow HTTP/1.1\r\nHost: gw\r\n\r\nGET ${path} HTTP/1.1\r\nHost: gw\r\n${header}\r\n\r\n`,
    );
    await eventually(() => admin.length === 1);
    if (path.includes('events')) {
      await eventually(() => dashboardOf(gw.lb)!.stream.viewerCount === 1);
    }
    socket.destroy();
    // Before: no 'close', the body, render or viewer place held (for good, or 17 minutes).
    await eventually(() => admin[0]!.closed, 5_000, 'the queued response closed');
    expect(dashboardOf(gw.lb)!.stream.viewerCount).toBe(0);
    expect(dashboardOf(gw.lb)!.stream.sampling).toBe(false);
    // And the place is free for the next viewer (maxViewers 1).
    if (path.includes('events')) {
      const next = connect(gw.port, '127.0.0.1');
      next.on('error', () => undefined);
      next.write(`GET ${path} HTTP/1.1\r\nHost: gw\r\n\r\n`);
      const head = await new Promise<string>((resolve) =>
        next.once('data', (d: Buffer) => resolve(d.toString('latin1'))),
      );
      next.destroy();
      expect(head).toMatch(/^HTTP\/1\.1 200 /);
    }
    expect(
      (await send(`${gw.url}/_lb/status`, { headers: { 'x-loadwise-token': STATUS_TOKEN } }))
        .status,
    ).toBe(200);
  },
);
