/**
 * `lb.ready()` means reports reach the gateway: it resolves once the broker
 * has acknowledged the subscription (SUBACK), not at the connection (CONNACK).
 * A broker that answers the subscription late (a slow ACL lookup, a busy
 * cluster) used to let ready() resolve first, and a report an agent published
 * in between was never delivered. A refused subscription fails ready() with
 * the reason, instead of a gateway that is "ready" and hears nothing.
 */
import { randomBytes } from 'node:crypto';
import { createEncoder, type SigningKey } from '@loadwise/protocol';
import { startEmbeddedBroker, type EmbeddedBroker } from '@loadwise/gateway-plugin';
import { connectClient, endClient, uniquePrefix } from '../kit/brokers';
import { startBackend, type TestServer } from '../kit/http';
import { startLocalGateway, type TestGateway } from '../kit/gateway';
import { eventually } from '../kit/fleet';

const key: SigningKey = { keyId: 'k1', secret: randomBytes(32) };

let broker: EmbeddedBroker | undefined;
let backend: TestServer;
let gw: TestGateway | undefined;
const timers = new Set<NodeJS.Timeout>();

beforeAll(async () => {
  backend = await startBackend('a');
});
afterEach(async () => {
  for (const t of timers) clearTimeout(t);
  timers.clear();
  await gw?.close();
  gw = undefined;
  await broker?.close();
  broker = undefined;
});
afterAll(async () => {
  await backend.close();
});

/** A broker whose answer to a subscription from the gateway comes after `delayMs`, or a refusal. */
async function brokerAnsweringSubscriptions(
  delayMs: number,
  refuse = false,
): Promise<EmbeddedBroker> {
  return startEmbeddedBroker({
    aedes: {
      authorizeSubscribe: (client, sub, done) => {
        if (!client?.id.startsWith('loadwise-gw')) return done(null, sub);
        const t = setTimeout(() => {
          timers.delete(t);
          done(refuse ? new Error('not allowed') : null, refuse ? null : sub);
        }, delayMs);
        timers.add(t);
      },
    },
  });
}

it('resolves only once the subscription is acknowledged: a report sent right after is heard', async () => {
  broker = await brokerAnsweringSubscriptions(800);
  const prefix = uniquePrefix('ready-suback');
  const publisher = await connectClient(broker.url);
  try {
    gw = await startLocalGateway({
      backends: [{ id: 'a', url: backend.url }],
      broker: broker.url,
      topicPrefix: prefix,
      keys: [key],
    });
    await gw.lb.ready();
    // Not retained: delivered only to a subscription that exists when it is published.
    const m = createEncoder({ backendId: 'a', prefix, key }).metrics({
      intervalMs: 1000,
      state: 'online',
      host: { cpuUtilization: 0.5, memoryUtilization: 0.25, memoryAvailableBytes: 1e9 },
      queue: { inFlight: 3, source: { inFlight: 'tracker' } },
      health: { verdict: 'up' },
    });
    await publisher.publishAsync(m.topic, m.payload, { qos: 1 });
    await eventually(
      () => gw!.lb.balancer.snapshot().backends[0]!.lastReport !== null,
      5_000,
      'the report published right after ready()',
    );
  } finally {
    await endClient(publisher);
  }
});

it('rejects with LW_GW_BROKER_UNREACHABLE naming a refused subscription', async () => {
  broker = await brokerAnsweringSubscriptions(0, true);
  gw = await startLocalGateway({
    backends: [{ id: 'a', url: backend.url }],
    broker: broker.url,
    topicPrefix: uniquePrefix('ready-refused'),
    keys: [key],
  });
  await expect(gw.lb.ready({ timeoutMs: 1_500, requireBroker: true })).rejects.toMatchObject({
    code: 'LW_GW_BROKER_UNREACHABLE',
    message: expect.stringMatching(/not connected and subscribed after 1500 ms: subscribe failed/),
  });
});
