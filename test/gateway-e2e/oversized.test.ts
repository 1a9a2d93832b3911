/**
 * Proof: one huge message cannot blow up the gateway's memory (100 MB raised
 * its RSS from 119 to 310 MB before). A separate process publishes 20 MB
 * under the gateway's topic prefix:
 *
 * - through the gateway's own embedded broker (aedes), which reads the packet
 *   header, disconnects the publisher before reading the body, and counts it
 *   (LW_GW_PACKET_TOO_LARGE);
 * - through Mosquitto (MQTT_URL), which never sends it to the gateway: the
 *   gateway connects with MQTT 5 and a Maximum Packet Size [MQTT-3.1.2-24].
 *
 * Either way the gateway's RSS stays within a few MB (the message alone would
 * be 20 MB, twice that once mqtt.js joins its chunks), and the channel keeps
 * working: a report sent afterwards arrives. A message between the decode
 * bound (8 KiB) and the packet bound (64 KiB) still arrives and is counted as
 * LW_PROTO_TOO_LARGE.
 */
import { randomBytes } from 'node:crypto';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { createEncoder, topicFor, type SigningKey } from '@loadwise/protocol';
import { connectClient, endClient, uniquePrefix } from '../kit/brokers';
import { eventually } from '../kit/fleet';
import { runHostile } from '../kit/hostile';
import { counter, startGateway, type TestGateway } from '../kit/gateway';

jest.setTimeout(60_000);

const MB = 1024 * 1024;
const key: SigningKey = { keyId: 'k1', secret: randomBytes(32) };

interface Target {
  name: string;
  /** The gateway's broker option, and the URL an attacker reaches it on. */
  broker(gw?: TestGateway): string;
  option(): string | { embedded: true };
  /** Whether the gateway sees the oversized packet being refused (it hosts the broker). */
  counts: boolean;
}

const targets: Target[] = [
  {
    name: 'the embedded broker (aedes in the gateway process)',
    option: () => ({ embedded: true }),
    broker: (gw) => gw!.lb.balancer.brokerUrl!,
    counts: true,
  },
];
if (process.env.MQTT_URL) {
  const url = process.env.MQTT_URL;
  targets.push({
    name: `mosquitto (${url}), MQTT 5 maximum packet size`,
    option: () => url,
    broker: () => url,
    counts: false,
  });
}

describe.each(targets)('a 20 MB message through $name', (target) => {
  let backend: http.Server;
  let gw: TestGateway | undefined;

  beforeAll(async () => {
    backend = http.createServer((_req, res) => res.end('ok'));
    await new Promise<void>((resolve) => backend.listen(0, '127.0.0.1', resolve));
  });
  afterAll(async () => {
    await gw?.close();
    await new Promise((resolve) => backend.close(resolve));
  });

  it('leaves the gateway RSS bounded, is dropped (counted where the gateway can see it), and the channel keeps working', async () => {
    const prefix = uniquePrefix('big');
    gw = await startGateway({
      backends: [{ id: 'a', url: `http://127.0.0.1:${(backend.address() as AddressInfo).port}` }],
      broker: target.option(),
      topicPrefix: prefix,
      keys: [key],
      healthCheck: false,
    });
    const url = target.broker(gw);
    const topic = topicFor(prefix, 'a', 'metrics');
    const code = { code: 'LW_GW_PACKET_TOO_LARGE' };

    global.gc?.();
    const rssBefore = process.memoryUsage().rss;
    const result = await runHostile({
      brokerUrl: url,
      mode: 'big',
      topics: [topic],
      bytes: 20 * MB,
    });
    const rssAfter = process.memoryUsage().rss;
    const grownMb = (rssAfter - rssBefore) / MB;
    console.log(
      `[${target.name}] 20 MB publish: gateway RSS ${(rssBefore / MB).toFixed(0)} -> ${(rssAfter / MB).toFixed(0)} MB (${grownMb.toFixed(1)} MB), publisher disconnected: ${result.closedByBroker > 0}`,
    );
    expect(grownMb).toBeLessThan(10);
    if (target.counts) {
      expect(result.closedByBroker).toBe(1);
      await eventually(async () => (await counter(gw!, 'invalid_messages_total', code)) === 1);
    } else {
      expect(await counter(gw, 'invalid_messages_total', code)).toBe(0);
    }

    // The channel still works: a 16 KiB message arrives and is dropped as too
    // large for decoding; then a genuine report arrives and is applied.
    const client = await connectClient(url);
    try {
      await client.publishAsync(topic, Buffer.alloc(16 * 1024, 0x7b), { qos: 1 });
      await eventually(
        async () =>
          (await counter(gw!, 'invalid_messages_total', { code: 'LW_PROTO_TOO_LARGE' })) === 1,
        10_000,
        '16 KiB message counted',
      );
      const m = createEncoder({ backendId: 'a', prefix, key }).metrics({
        intervalMs: 1000,
        state: 'online',
        host: { cpuUtilization: 0.1, memoryUtilization: 0.1, memoryAvailableBytes: 1e9 },
        health: { verdict: 'up' },
      });
      await client.publishAsync(m.topic, m.payload, { qos: 1 });
      await eventually(() => gw!.backend('a').reportFresh, 10_000, 'report after the big one');
    } finally {
      await endClient(client);
    }
  });
});
