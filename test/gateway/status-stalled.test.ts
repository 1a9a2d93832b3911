/**
 * `statusPath` requests whose clients never read. Each held its body until its
 * connection closed, with no timeout: a few of them held MAX_HELD_STATUS_BYTES
 * (32 MiB) for good, and every status request then got 503. Now, as a metrics
 * scrape (metrics-scrape-held.test.ts), a status answer whose client takes no
 * byte for `requestTimeoutMs` is cut, its body released, once logged.
 *
 * 20,000 backends make a status body of about 8 MB: more than the kernel
 * buffers of a loopback connection take, so a client that does not read
 * stalls its answer.
 */
import type { ServerResponse } from 'node:http';
import { connect, type Socket } from 'node:net';
import { expressGateway, warningLogger } from '../kit/gateway';
import { eventually } from '../kit/fleet';
import { send, type TestServer } from '../kit/http';

const servers: TestServer[] = [];
const sockets: Socket[] = [];
afterEach(async () => {
  for (const s of sockets.splice(0)) s.destroy();
  for (const s of servers.splice(0).reverse()) await s.close();
});

it('cuts a status answer whose client takes no byte for requestTimeoutMs, and logs it once', async () => {
  const { logger, warnings } = warningLogger();
  let closed = 0;
  const backends = Array.from({ length: 20_000 }, (_, i) => ({
    id: `b${i}`,
    url: `http://127.0.0.1:${10_000 + (i % 50_000)}/p${i}`,
  }));
  const gw = await expressGateway(
    backends[0]!.url,
    { backends, statusPath: '/_lb/status', requestTimeoutMs: 1000, logger },
    (app, lb, server) => {
      server.on('request', (_req, res: ServerResponse) => res.once('close', () => closed++));
      app.use(lb);
    },
  );
  servers.push(gw);
  for (let i = 0; i < 2; i++) {
    const socket = connect(gw.port, '127.0.0.1');
    sockets.push(socket);
    socket.pause();
    socket.on('error', () => {});
    socket.write('GET /_lb/status HTTP/1.1\r\nHost: x\r\n\r\n');
  }
  // Both cut (before: never, however long).
  await eventually(() => closed === 2, 15_000, 'both status answers cut');
  const served = await send(`${gw.url}/_lb/status`);
  expect(served.status).toBe(200);
  const stalled = warnings.filter((w) => w.fields.event === 'status-request-stalled');
  expect(stalled).toHaveLength(1);
  expect(stalled[0]!.msg).toBe(
    'status request from 127.0.0.1 took no bytes for 1000 ms; connection cut, its body released',
  );
});
