/**
 * The gateway's host clock steps (NTP correcting a clock that was an hour
 * off, a VM resumed): the gateway times itself on a monotonic clock
 * (packages/gateway-plugin/src/clock.ts), so an ejection, a decay or a
 * bucket refill lasts as long as it should, not as long as the step. Real
 * backends and a real gateway; only Date.now is stepped.
 */
import { once } from 'node:events';
import { send, startBackend, type TestServer } from '../kit/http';
import { startLocalGateway, type TestGateway } from '../kit/gateway';
import { eventually } from '../kit/fleet';
import { internals } from '@loadwise/gateway-plugin/internals';
import { createEncoder } from '@loadwise/protocol';
import { connectClient, endClient, uniquePrefix } from '../kit/brokers';

const realNow = Date.now;
/** The wall clock's step: Date.now is this far from the real time. */
let offsetMs = 0;
let a: TestServer;
let flaky: TestServer;
let failing = true;
let gw: TestGateway | undefined;

beforeAll(async () => {
  a = await startBackend('a');
  flaky = await startBackend('flaky', (_req, res) => {
    res.statusCode = failing ? 500 : 200;
    res.end(JSON.stringify({ id: 'flaky' }));
  });
});
beforeEach(() => {
  // In place before the gateway is built, as a host clock is: it reads Date.now by
  // reference.
  offsetMs = 0;
  Date.now = () => realNow() + offsetMs;
});
afterEach(async () => {
  Date.now = realNow;
  await gw?.close();
  gw = undefined;
});
afterAll(async () => {
  await a.close();
  await flaky.close();
});

it('a wall clock stepped back an hour does not hold an ejected backend out for that hour', async () => {
  gw = await startLocalGateway({
    backends: [
      { id: 'a', url: a.url },
      { id: 'flaky', url: flaky.url },
    ],
    strategy: 'round-robin',
    outlier: { consecutiveFailures: 2, baseEjectionMs: 500 },
  });
  failing = true;
  const ejected = once(internals(gw.lb).events, 'backend-ejected');
  for (let i = 0; i < 4; i++) await send(`${gw.url}/`);
  await ejected;
  failing = false;
  // NTP steps the wall clock back an hour while the backend is ejected for 500 ms.
  offsetMs = -3_600_000;
  // Before: ejected until the wall clock came back to the ejection's end, an hour on.
  await eventually(
    async () => (await send(`${gw!.url}/`)).json<{ id: string }>().id === 'flaky',
    5_000,
    'the ejected backend served again after its 500 ms',
  );
  expect(gw.lb.balancer.snapshot().backends[1]).toMatchObject({ state: 'healthy' });
});

it('a wall clock stepped forward does not forget every discovered backend', async () => {
  const prefix = uniquePrefix('clock');
  const key = { keyId: 'k1', secret: Buffer.alloc(32, 7) };
  gw = await startLocalGateway({
    backends: [],
    broker: { embedded: true },
    topicPrefix: prefix,
    keys: [key],
    discovery: { allowedRanges: ['127.0.0.0/8'], allowedPorts: [a.port], forgetAfterMs: 600_000 },
  });
  await gw.lb.ready();
  const added = once(internals(gw.lb).events, 'backend-added');
  // The agent's own clock is the real one.
  const reg = createEncoder({ backendId: 'new', prefix, key, now: realNow }).registration(a.url);
  const client = await connectClient(gw.lb.balancer.brokerUrl!);
  await client.publishAsync(reg.topic, reg.payload, { qos: 1 });
  await endClient(client);
  await added;
  const removed: unknown[] = [];
  gw.lb.balancer.on('backend-removed', (e) => removed.push(e));
  // Eleven minutes forward, past the 10-minute lease. Before: the next sweep found the
  // backend silent for 11 minutes and forgot it (every request 503 until it registered
  // again).
  offsetMs = 660_000;
  await new Promise((r) => setTimeout(r, 2_500));
  expect(removed).toEqual([]);
  expect((await send(`${gw.url}/`)).status).toBe(200);
});
