/**
 * examples/gateway-server.ts listens once `lb.ready()` resolves, as every
 * recipe of docs/gateway.md does: with its broker out of reach, only after
 * the broker's connect timeout has said so (`ready-without-broker`), then it
 * routes on local signals. It used to listen at once, before the balancer
 * had subscribed or warmed up.
 */
import path from 'node:path';
import { ManagedChild, waitForListening } from '../../examples/lib/processes';
import { send, refusedPort, startBackend, type TestServer } from '../kit/http';
import { spawnScript } from '../kit/agent-cli';

const GATEWAY_SERVER = path.resolve(__dirname, '../../examples/dist/gateway-server.js');

let backend: TestServer;
let gateway: ManagedChild | undefined;
beforeAll(async () => {
  backend = await startBackend('api-1');
});
afterAll(async () => {
  await gateway?.stop('SIGKILL');
  await backend.close();
});

test('with the broker out of reach it listens after ready() has said so, and serves', async () => {
  gateway = new ManagedChild('gateway-server', process.execPath, [GATEWAY_SERVER], {
    PATH: process.env.PATH,
    LOADWISE_GW_BACKENDS: `api-1=${backend.url}`,
    LOADWISE_GW_BROKER: `mqtt://127.0.0.1:${await refusedPort()}`,
    LOADWISE_GW_PORT: '0',
  });
  let readyFirst: boolean | undefined;
  const warned = gateway
    .waitForStderr(/ready-without-broker|ready on local signals/, 30_000)
    .then(() => (readyFirst ??= true));
  warned.catch(() => undefined);
  const port = await waitForListening(gateway, 30_000);
  readyFirst ??= false;
  // Before: listening at once, the warning some seconds later.
  expect(readyFirst).toBe(true);
  expect((await send(`http://127.0.0.1:${port}/`)).status).toBe(200);
}, 40_000);

test('LOADWISE_GW_READY_TIMEOUT_MS: how long it waits for the broker before it listens', async () => {
  await gateway?.stop('SIGKILL');
  gateway = new ManagedChild('gateway-server', process.execPath, [GATEWAY_SERVER], {
    PATH: process.env.PATH,
    LOADWISE_GW_BACKENDS: `api-1=${backend.url}`,
    LOADWISE_GW_BROKER: `mqtt://127.0.0.1:${await refusedPort()}`,
    LOADWISE_GW_PORT: '0',
    LOADWISE_GW_READY_TIMEOUT_MS: '300',
  });
  // Before: ready() waited its default 10 000 ms, whatever the operator wanted.
  const warned = gateway.waitForStderr(/not connected and subscribed after 300 ms/, 30_000);
  const port = await waitForListening(gateway, 30_000);
  await warned;
  expect((await send(`http://127.0.0.1:${port}/`)).status).toBe(200);
}, 40_000);

test('LOADWISE_GW_READY_TIMEOUT_MS out of range stops it at start with exit 2', async () => {
  const run = spawnScript(GATEWAY_SERVER, [], {
    LOADWISE_GW_BACKENDS: 'api-1=http://127.0.0.1:9',
    LOADWISE_GW_READY_TIMEOUT_MS: '-1',
  });
  expect(await run.exited).toBe(2);
  expect(run.stderr()).toMatch(
    /LOADWISE_GW_READY_TIMEOUT_MS: not an integer 0\.\.600000 \(got "-1"\)/,
  );
});
