/**
 * ready() resolves once the retained messages a subscribe brings have come, not
 * at the SUBACK: Mosquitto sends them after it, so a discovery-only gateway
 * with `warmUp: false` restarted under load answered its first requests 503
 * LW_GW_NO_BACKEND with its backends' registrations 45 ms away (7-8 in a
 * review at 200 req/s), and a configured backend's retained drain came after
 * ready() too. Against every broker target (aedes, and Mosquitto when
 * MQTT_URL is set, as in CI).
 */
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
});
