/**
 * examples/gateway-server.ts on SIGTERM, with requests in flight: one grace
 * (LOADWISE_GW_STOP_GRACE_MS) for everything, answers during it say
 * `Connection: close`, and what is cut at its end is answered before the process
 * exits 0 (502 LW_GW_CLOSED_IN_FLIGHT: the backend had it). The program used to wait for its server, then give
 * lb.close() a grace of its own (twice the grace, past systemd's stop
 * timeout), served keep-alive clients without `Connection: close` meanwhile,
 * and exited before the cut requests were answered: they got a reset.
 * SIGHUP (a closed terminal, a `kill -HUP` meant as a reload) stops it the
 * same way: it had no handler, and ended the process at once, requests cut.
 */
import type { ServerResponse } from 'node:http';
import path from 'node:path';
import { ManagedChild, waitForListening } from '../../examples/lib/processes';
import { send, startBackend, type TestServer } from '../kit/http';

const GATEWAY_SERVER = path.resolve(__dirname, '../../examples/dist/gateway-server.js');

describe('gateway-server on SIGTERM', () => {
  let backend: TestServer;
  let gateway: ManagedChild | undefined;
  const held = new Map<string, ServerResponse>();
  beforeAll(async () => {
    backend = await startBackend('api-1', (req, res) => void held.set(req.url ?? '', res));
  });
  afterAll(async () => {
    await gateway?.stop('SIGKILL');
    for (const res of held.values()) res.destroy();
    await backend.close();
  });

  test('finishes, then cuts with 502 LW_GW_CLOSED_IN_FLIGHT within one grace, and exits 0', async () => {
    gateway = new ManagedChild('gateway-server', process.execPath, [GATEWAY_SERVER], {
      PATH: process.env.PATH,
      LOADWISE_GW_BACKENDS: `api-1=${backend.url}`,
      LOADWISE_GW_PORT: '0',
      LOADWISE_GW_STOP_GRACE_MS: '1000',
    });
    const port = await waitForListening(gateway, 15_000);
    const keepAlive = { headers: { connection: 'keep-alive' } };
    const finishing = send(`http://127.0.0.1:${port}/finishes`, keepAlive);
    const cut = send(`http://127.0.0.1:${port}/runs-on`, keepAlive);
    while (held.size < 2) await new Promise((r) => setTimeout(r, 10));

    gateway.signal('SIGTERM');
    await gateway.waitForStderr(/SIGTERM: finishing in-flight requests/);
    held.get('/finishes')!.end('done');
    const done = await finishing;
    expect([done.status, done.body, done.headers.connection]).toEqual([200, 'done', 'close']);

    const r = await cut;
    // The backend has it: no 503 with Retry-After, which invited the client to send it again.
    expect(r.status).toBe(502);
    expect(r.headers['x-loadwise-error']).toBe('LW_GW_CLOSED_IN_FLIGHT');
    expect(await gateway.stop('SIGTERM', 15_000)).toEqual({ code: 0, signal: null });
  }, 40_000);

  test('SIGHUP: the same graceful stop, the request in flight finished, exit 0', async () => {
    await gateway?.stop('SIGKILL');
    held.clear();
    gateway = new ManagedChild('gateway-server', process.execPath, [GATEWAY_SERVER], {
      PATH: process.env.PATH,
      LOADWISE_GW_BACKENDS: `api-1=${backend.url}`,
      LOADWISE_GW_PORT: '0',
      LOADWISE_GW_STOP_GRACE_MS: '5000',
    });
    const port = await waitForListening(gateway, 15_000);
    const finishing = send(`http://127.0.0.1:${port}/hup`);
    while (!held.has('/hup')) await new Promise((r) => setTimeout(r, 10));

    gateway.signal('SIGHUP');
    await gateway.waitForStderr(/SIGHUP: finishing in-flight requests/);
    held.get('/hup')!.end('done');
    const done = await finishing;
    expect([done.status, done.body]).toEqual([200, 'done']);
    expect(await gateway.stop('SIGTERM', 15_000)).toEqual({ code: 0, signal: null });
  }, 40_000);
});
