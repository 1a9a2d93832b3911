import type { MqttClient } from 'mqtt';
import {
  createDecoder,
  createEncoder,
  subscriptionFilter,
  type DecodeResult,
} from '@loadwise/protocol';
import {
  brokerTargets,
  clearRetained,
  connectClient,
  endClient,
  uniquePrefix,
} from '../kit/brokers';

const key = { keyId: 'k1', secret: Buffer.alloc(32, 5) };
const body = {
  intervalMs: 1000,
  state: 'online' as const,
  host: { cpuUtilization: 0.3, memoryUtilization: 0.4, memoryAvailableBytes: 2 ** 31 },
  queue: {
    inFlight: 2,
    queued: 0,
    source: { inFlight: 'tracker' as const, queued: 'tracker' as const },
  },
  health: { verdict: 'up' as const },
};

/** Collects decoded messages a subscriber receives, with a way to await the next ones. */
function collect(client: MqttClient, prefix: string) {
  const decoder = createDecoder({ prefix, keys: [key] });
  const results: DecodeResult[] = [];
  const waiters: Array<() => void> = [];
  client.on('message', (topic, payload, packet) => {
    results.push(decoder.decode(topic, payload, { retained: packet.retain }));
    waiters.splice(0).forEach((w) => w());
  });
  return {
    results,
    async waitFor(n: number, timeoutMs = 5000): Promise<DecodeResult[]> {
      const deadline = Date.now() + timeoutMs;
      while (results.length < n) {
        if (Date.now() > deadline) throw new Error(`got ${results.length} of ${n} messages`);
        await new Promise<void>((resolve) => {
          const t = setTimeout(resolve, 100);
          waiters.push(() => (clearTimeout(t), resolve()));
        });
      }
      return results;
    },
  };
}

describe.each(brokerTargets())('protocol over MQTT: $name', (target) => {
  let broker: Awaited<ReturnType<typeof target.start>>;
  const clients: MqttClient[] = [];

  beforeAll(async () => {
    broker = await target.start();
  });
  afterAll(async () => {
    await Promise.all(clients.map((c) => endClient(c, true)));
    await broker.close();
  });

  it('a signed publisher and a subscriber exchange metrics and retained status', async () => {
    const prefix = uniquePrefix('proto');
    const sub = await connectClient(broker.url);
    clients.push(sub);
    const inbox = collect(sub, prefix);
    await sub.subscribeAsync(subscriptionFilter(prefix), { qos: 1 });

    const pub = await connectClient(broker.url);
    clients.push(pub);
    const enc = createEncoder({ backendId: 'api-1', prefix, key });
    const online = enc.status('online');
    await pub.publishAsync(online.topic, online.payload, { qos: 1, retain: true });
    const metrics = enc.metrics(body);
    await pub.publishAsync(metrics.topic, metrics.payload, { qos: 0 });

    const got = await inbox.waitFor(2);
    expect(got).toEqual([
      { ok: true, message: online.message, keyId: 'k1' },
      { ok: true, message: metrics.message, keyId: 'k1' },
    ]);

    // A gateway subscribing later still learns the status from the retained copy.
    const late = await connectClient(broker.url);
    clients.push(late);
    const lateInbox = collect(late, prefix);
    await late.subscribeAsync(subscriptionFilter(prefix), { qos: 1 });
    expect(await lateInbox.waitFor(1)).toEqual([
      { ok: true, message: online.message, keyId: 'k1' },
    ]);
    await clearRetained(pub, [online.topic]);
  });

  it('drops forged and replayed messages with their codes instead of throwing', async () => {
    const prefix = uniquePrefix('forge');
    const sub = await connectClient(broker.url);
    clients.push(sub);
    const inbox = collect(sub, prefix);
    await sub.subscribeAsync(subscriptionFilter(prefix), { qos: 1 });
    const pub = await connectClient(broker.url);
    clients.push(pub);
    const enc = createEncoder({ backendId: 'api-1', prefix, key });
    const m = enc.metrics(body);
    const forged = createEncoder({
      backendId: 'api-1',
      prefix,
      key: { keyId: 'k1', secret: Buffer.alloc(32, 6) },
    }).metrics(body);
    for (const payload of [m.payload, m.payload, forged.payload, '{"v":1']) {
      await pub.publishAsync(m.topic, payload, { qos: 1 });
    }
    const got = await inbox.waitFor(4);
    expect(got.map((r) => (r.ok ? 'ok' : r.code))).toEqual([
      'ok',
      'LW_PROTO_REPLAY',
      'LW_PROTO_BAD_SIGNATURE',
      'LW_PROTO_UNSIGNED',
    ]);
  });

  it('delivers the Last Will when the publisher socket is destroyed', async () => {
    const prefix = uniquePrefix('will');
    const sub = await connectClient(broker.url);
    clients.push(sub);
    const inbox = collect(sub, prefix);
    await sub.subscribeAsync(subscriptionFilter(prefix, 'status'), { qos: 1 });

    const enc = createEncoder({ backendId: 'api-1', prefix, key });
    const will = enc.status('offline', { will: true });
    const pub = await connectClient(broker.url, {
      will: { topic: will.topic, payload: Buffer.from(will.payload), qos: 1, retain: true },
    });
    const online = enc.status('online');
    await pub.publishAsync(online.topic, online.payload, { qos: 1, retain: true });
    await inbox.waitFor(1);

    // No DISCONNECT packet: the broker must publish the will [MQTT-3.1.2-8].
    pub.stream.destroy();
    const got = await inbox.waitFor(2);
    expect(got[1]).toEqual({ ok: true, message: will.message, keyId: 'k1' });
    await endClient(pub, true);
    await clearRetained(sub, [will.topic]);
  });
});
