/**
 * ready() resolves once the retained messages a subscribe brings have come, not
 * at the SUBACK: Mosquitto sends them after it, so a discovery-only gateway
 * with `warmUp: false` restarted under load answered its first requests 503
 * LW_GW_NO_BACKEND with its backends' registrations 45 ms away (7-8 in a
 * review at 200 req/s), and a configured backend's retained drain came after
 * ready() too. Against every broker target (aedes, and Mosquitto when
 * MQTT_URL is set, as in CI).
 */
import { connect, createServer, type AddressInfo, type Socket } from 'node:net';
import { createEncoder } from '@loadwise/protocol';
import { loadBalance } from '@loadwise/gateway-plugin';
import {
  brokerTargets,
  clearRetained,
  connectClient,
  endClient,
  uniquePrefix,
} from '../kit/brokers';

const key = { keyId: 'k1', secret: Buffer.alloc(32, 7) };

describe.each(brokerTargets())('ready() on $name', (target) => {
  it('knows the retained registrations and statuses the subscribe brought', async () => {
    const broker = await target.start();
    const prefix = uniquePrefix('ready-retained');
    const client = await connectClient(broker.url);
    const topics: string[] = [];
    try {
      for (const [id, port] of [
        ['b1', 18001],
        ['b2', 18002],
        ['b3', 18003],
      ] as const) {
        const reg = createEncoder({ backendId: id, prefix, key }).registration(
          `http://127.0.0.1:${port}`,
        );
        await client.publishAsync(reg.topic, reg.payload, { qos: 1, retain: true });
        topics.push(reg.topic);
      }
      const drain = createEncoder({ backendId: 'c1', prefix, key }).status('draining');
      await client.publishAsync(drain.topic, drain.payload, { qos: 1, retain: true });
      topics.push(drain.topic);
      const lb = loadBalance({
        backends: [{ id: 'c1', url: 'http://127.0.0.1:18004' }],
        broker: broker.url,
        topicPrefix: prefix,
        keys: [key],
        warmUp: false,
        discovery: { allowedRanges: ['127.0.0.0/8'] },
      });
      try {
        await lb.ready();
        const backends = lb.balancer.snapshot().backends;
        expect(backends.map((b) => b.id).sort()).toEqual(['b1', 'b2', 'b3', 'c1']);
        expect(backends.find((b) => b.id === 'c1')!.state).toBe('draining');
      } finally {
        await lb.close();
      }
    } finally {
      await clearRetained(client, topics);
      await endClient(client);
      await broker.close();
    }
  });

  it('is not refused by a short timeoutMs while the retained messages are still coming', async () => {
    const broker = await target.start();
    const lb = loadBalance({
      backends: [{ id: 'c1', url: 'http://127.0.0.1:18004' }],
      broker: broker.url,
      topicPrefix: uniquePrefix('ready-short'),
      warmUp: false,
    });
    try {
      // Subscribed (the SUBACK came), the retained burst's wait just begun: a timeout of 1 ms
      // fires within it. Before, it refused a broker that had answered.
      const ready = await new Promise<{ settled: Promise<void> }>((resolve) =>
        lb.balancer.on('broker-connected', () =>
          resolve({ settled: lb.ready({ timeoutMs: 1, requireBroker: true }) }),
        ),
      );
      await expect(ready.settled).resolves.toBeUndefined();
    } finally {
      await lb.close();
      await broker.close();
    }
  });

  it('is not ready on a connection lost while the retained messages were coming', async () => {
    const broker = await target.start();
    const upstream = new URL(broker.url);
    // A path to the broker the test can cut: every connection through it, and the listener.
    const links = new Set<Socket>();
    const proxy = createServer((client) => {
      const server = connect(Number(upstream.port), upstream.hostname);
      for (const s of [client, server]) {
        links.add(s);
        s.on('error', () => {});
        s.on('close', () => (client.destroy(), server.destroy()));
      }
      client.pipe(server).pipe(client);
    });
    await new Promise<void>((resolve) => proxy.listen(0, '127.0.0.1', resolve));
    const lb = loadBalance({
      backends: [{ id: 'c1', url: 'http://127.0.0.1:18004' }],
      broker: `mqtt://127.0.0.1:${(proxy.address() as AddressInfo).port}`,
      topicPrefix: uniquePrefix('ready-lost'),
      warmUp: false,
      // The loss is the point: not a line on the test's output.
      logger: { info: () => {}, warn: () => {}, error: () => {} },
    });
    try {
      // Cut at the SUBACK, within the wait for the retained messages. Before, ready()
      // resolved 50 ms later all the same, with no broker.
      lb.balancer.on('broker-connected', () => {
        proxy.close();
        for (const s of links) s.destroy();
      });
      await expect(lb.ready({ timeoutMs: 500, requireBroker: true })).rejects.toThrow(
        'LW_GW_BROKER_UNREACHABLE',
      );
    } finally {
      await lb.close();
      await broker.close();
    }
  });
});
