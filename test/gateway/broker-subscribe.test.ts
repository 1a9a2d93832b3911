/**
 * A broker that refuses the gateway's subscription (an ACL: SUBACK 0x80) or
 * never acknowledges it, then lets it in. The gateway said "connected" all
 * along (brokerConnected, loadwise_broker_connected 1), never subscribed
 * again, and stayed deaf to every report until the connection happened to
 * drop. It now says the broker is unreachable, subscribes again, and hears
 * the reports once the broker allows it.
 */
import { createServer, type AddressInfo, type Server } from 'node:net';
import { randomBytes } from 'node:crypto';
import { createBroker } from 'aedes';
import { createEncoder } from '@loadwise/protocol';
import { connectClient, endClient, uniquePrefix } from '../kit/brokers';
import { startBackend, type TestServer } from '../kit/http';
import { startLocalGateway } from '../kit/gateway';
import { until } from '../kit/agent-http';

const key = { keyId: 'k1', secret: randomBytes(32) };

describe.each(['refuses', 'never acknowledges'] as const)(
  'a broker that %s the subscription, then allows it',
  (how) => {
    let backend: TestServer;
    let aedes: Awaited<ReturnType<typeof createBroker>>;
    let server: Server;
    /** Subscriptions of the gateway's client are refused or left unanswered while true. */
    let blocking = true;
    beforeAll(async () => {
      backend = await startBackend('a');
      aedes = await createBroker({
        authorizeSubscribe(client, sub, done) {
          if (!blocking || !client?.id.startsWith('loadwise-gw')) return done(null, sub);
          if (how === 'refuses') done(null, null); // SUBACK 0x80
        },
      });
      server = createServer(aedes.handle);
      await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    });
    afterAll(async () => {
      await new Promise<void>((resolve) => server.close(() => resolve()));
      await new Promise<void>((resolve) => aedes.close(() => resolve()));
      await backend.close();
    });

    it('says it is not connected, subscribes again, and hears reports once allowed', async () => {
      const url = `mqtt://127.0.0.1:${(server.address() as AddressInfo).port}`;
      const prefix = uniquePrefix('suback');
      const gw = await startLocalGateway({
        backends: [{ id: 'a', url: backend.url }],
        broker: { url, reconnectPeriodMs: 100, connectTimeoutMs: 300 },
        topicPrefix: prefix,
        keys: [key],
      });
      const unreachable: string[] = [];
      gw.lb.balancer.on('broker-unreachable', ({ error }) => unreachable.push(error));
      const publisher = await connectClient(url);
      try {
        await until(() => unreachable.length > 0, 5000, 'the refusal to be said');
        expect(unreachable[0]).toMatch(
          how === 'refuses' ? /subscribe failed/ : /subscribe not acknowledged within 300 ms/,
        );
        expect(gw.lb.balancer.brokerConnected).toBe(false);
        expect(
          await gw.lb.balancer.metricsRegistry.getSingleMetricAsString('loadwise_broker_connected'),
        ).toMatch(/loadwise_broker_connected 0/);

        blocking = false;
        await until(() => gw.lb.balancer.brokerConnected === true, 5000, 'a subscription');
        const m = createEncoder({ backendId: 'a', prefix, key }).metrics({
          intervalMs: 1000,
          state: 'online',
          host: { cpuUtilization: 0.3, memoryUtilization: 0.3, memoryAvailableBytes: 1 },
          health: { verdict: 'up' },
        });
        await publisher.publishAsync(m.topic, m.payload, { qos: 1 });
        await until(() => gw.lb.balancer.snapshot().backends[0]!.reportFresh, 5000, 'the report');
        // Said once for the outage, however many attempts it took.
        expect(unreachable).toHaveLength(1);
      } finally {
        await endClient(publisher);
        await gw.close();
      }
    }, 20_000);
  },
);
