/**
 * The gateway's subscription, on a broker the test controls (aedes):
 * - refused (an ACL: SUBACK 0x80) or never acknowledged, then allowed. The
 *   gateway said "connected" all along (brokerConnected,
 *   loadwise_broker_connected 1), never subscribed again, and stayed deaf to
 *   every report until the connection happened to drop. It now says the
 *   broker is unreachable, subscribes again, and hears the reports once the
 *   broker allows it.
 * - made again after a reconnect: the broker delivers its retained statuses
 *   again, which the gateway has heard already. They were counted and logged
 *   as LW_PROTO_REPLAY, the code the suggested alert reads as an attack, once
 *   per backend on every broker blip.
 */
import {
  connect as connectRaw,
  createServer,
  type AddressInfo,
  type Server,
  type Socket,
} from 'node:net';
import mqttPacket from 'mqtt-packet';
import { randomBytes } from 'node:crypto';
import { createBroker, type AedesOptions } from 'aedes';
import { createEncoder, type Encoder } from '@loadwise/protocol';
import { connectClient, endClient, uniquePrefix } from '../kit/brokers';
import { startBackend, type TestServer } from '../kit/http';
import { counter, quietLogger, startLocalGateway } from '../kit/gateway';
import { until } from '../kit/agent-http';

const key = { keyId: 'k1', secret: randomBytes(32) };

interface TestBroker {
  url: string;
  /** Cuts the connections of the clients whose id starts with `prefix`. */
  kick(prefix: string): void;
  close(): Promise<void>;
}

async function startAedes(opts: AedesOptions = {}): Promise<TestBroker> {
  const aedes = await createBroker(opts);
  const clients = new Map<string, { conn: { destroy(): void } }>();
  aedes.on('client', (c) => clients.set(c.id, c as never));
  aedes.on('clientDisconnect', (c) => clients.delete(c.id));
  const server: Server = createServer(aedes.handle);
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    url: `mqtt://127.0.0.1:${(server.address() as AddressInfo).port}`,
    kick: (prefix) => {
      for (const [id, c] of clients) if (id.startsWith(prefix)) c.conn.destroy();
    },
    close: async () => {
      await new Promise<void>((resolve) => server.close(() => resolve()));
      await new Promise<void>((resolve) => aedes.close(() => resolve()));
    },
  };
}

const metricsOf = (encoder: Encoder) =>
  encoder.metrics({
    intervalMs: 1000,
    state: 'online',
    host: { cpuUtilization: 0.3, memoryUtilization: 0.3, memoryAvailableBytes: 1 },
    health: { verdict: 'up' },
  });

let backend: TestServer;
beforeAll(async () => {
  backend = await startBackend('a');
});
afterAll(() => backend.close());

describe.each(['refuses', 'never acknowledges'] as const)(
  'a broker that %s the subscription, then allows it',
  (how) => {
    let broker: TestBroker;
    /** Subscriptions of the gateway's client are refused or left unanswered while true. */
    let blocking = true;
    beforeAll(async () => {
      broker = await startAedes({
        authorizeSubscribe(client, sub, done) {
          if (!blocking || !client?.id.startsWith('loadwise-gw')) return done(null, sub);
          if (how === 'refuses') done(null, null); // SUBACK 0x80
        },
      });
    });
    afterAll(() => broker.close());

    it('says it is not connected, subscribes again, and hears reports once allowed', async () => {
      const prefix = uniquePrefix('suback');
      const gw = await startLocalGateway({
        backends: [{ id: 'a', url: backend.url }],
        broker: { url: broker.url, reconnectPeriodMs: 100, connectTimeoutMs: 300 },
        topicPrefix: prefix,
        keys: [key],
      });
      const unreachable: string[] = [];
      gw.lb.balancer.on('broker-unreachable', ({ error }) => unreachable.push(error));
      const publisher = await connectClient(broker.url);
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
        const m = metricsOf(createEncoder({ backendId: 'a', prefix, key }));
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

it("counts the broker's retained statuses after a reconnect as superseded, never as a replay", async () => {
  const broker = await startAedes();
  const prefix = uniquePrefix('resub');
  const warnings: string[] = [];
  const gw = await startLocalGateway({
    backends: [{ id: 'a', url: backend.url }],
    broker: { url: broker.url, reconnectPeriodMs: 100 },
    topicPrefix: prefix,
    keys: [key],
    logger: { ...quietLogger, warn: (_fields: unknown, msg?: string) => warnings.push(msg ?? '') },
  });
  const publisher = await connectClient(broker.url);
  try {
    await gw.lb.ready();
    const encoder = createEncoder({ backendId: 'a', prefix, key });
    const status = encoder.status('online');
    await publisher.publishAsync(status.topic, status.payload, { qos: 1, retain: true });
    const m = metricsOf(encoder);
    await publisher.publishAsync(m.topic, m.payload, { qos: 1 });
    await until(() => gw.lb.balancer.snapshot().backends[0]!.reportFresh, 5000, 'the report');

    const superseded = () =>
      counter(gw, 'invalid_messages_total', { code: 'LW_PROTO_RETAINED_SUPERSEDED' });
    for (let i = 1; i <= 3; i++) {
      broker.kick('loadwise-gw');
      // Resubscribed: the broker's retained status comes again, and is told apart.
      while ((await superseded()) < i) await new Promise((r) => setTimeout(r, 20));
    }
    expect(await counter(gw, 'invalid_messages_total', { code: 'LW_PROTO_REPLAY' })).toBe(0);
    expect(warnings.filter((w) => /dropped message/.test(w))).toEqual([]);
  } finally {
    await endClient(publisher);
    await gw.close();
    await broker.close();
  }
}, 20_000);

it("never hands the broker's password to event listeners or brokerUrl", async () => {
  // An app logs events as they come (docs/gateway.md): broker-connected and
  // broker-unreachable carried the URL with its password, and so did brokerUrl.
  const broker = await startAedes({
    authenticate: (_client, username, password, done) =>
      done(null, username === 'gw' && password?.toString() === 'S3CRET-right'),
  });
  const url = (password: string) => broker.url.replace('mqtt://', `mqtt://gw:${password}@`);
  const seen: unknown[] = [];
  const gateways = [];
  try {
    for (const password of ['S3CRET-wrong', 'S3CRET-right']) {
      const gw = await startLocalGateway({
        backends: [{ id: 'a', url: backend.url }],
        broker: { url: url(password), reconnectPeriodMs: 100 },
        topicPrefix: uniquePrefix('cred'),
        keys: [key],
      });
      gateways.push(gw);
      const brokerEvent = () => gw.events.find((e) => e.name.startsWith('broker-'));
      await until(() => brokerEvent() !== undefined, 5000, 'a broker event');
      seen.push([brokerEvent()!.name, brokerEvent()!.data], gw.lb.balancer.brokerUrl);
    }
    const shown = broker.url.replace('mqtt://', 'mqtt://***@');
    expect(seen).toEqual([
      ['broker-unreachable', { url: shown, error: 'Connection refused: Not authorized' }],
      shown,
      ['broker-connected', { url: shown }],
      shown,
    ]);
  } finally {
    for (const gw of gateways) await gw.close();
    await broker.close();
  }
}, 20_000);

it('warns once when the broker is not verified (rejectUnauthorized: false)', async () => {
  const warnings: string[] = [];
  const gw = await startLocalGateway({
    backends: [{ id: 'a', url: backend.url }],
    broker: { url: 'mqtts://127.0.0.1:1', rejectUnauthorized: false, reconnectPeriodMs: 60_000 },
    topicPrefix: uniquePrefix('insecure'),
    keys: [key],
    logger: { ...quietLogger, warn: (_fields: unknown, msg?: string) => warnings.push(msg ?? '') },
  });
  try {
    expect(warnings.filter((w) => /broker\.rejectUnauthorized is false/.test(w))).toHaveLength(1);
  } finally {
    await gw.close();
  }
});

it("drops an agent's first status delivered behind its first report quietly, never as a replay", async () => {
  // The quick start's first start (1 in about 31): the agent's status (seq 1, QoS 1, retained)
  // and its first report (seq 2, QoS 0) reached aedes in one read; aedes handles the packets
  // of one read concurrently and the QoS 1 path takes more turns, so the gateway got the
  // report first and warned "dropped message (LW_PROTO_REPLAY) from b2: ... seq 1".
  const broker = await startAedes();
  const prefix = uniquePrefix('overtaken');
  const warnings: string[] = [];
  const gw = await startLocalGateway({
    backends: [{ id: 'a', url: backend.url }],
    broker: broker.url,
    topicPrefix: prefix,
    keys: [key],
    logger: { ...quietLogger, warn: (_fields: unknown, msg?: string) => warnings.push(msg ?? '') },
  });
  let socket: Socket | undefined;
  try {
    await gw.lb.ready();
    const agent = connectRaw(Number(new URL(broker.url).port), '127.0.0.1');
    socket = agent;
    await new Promise((resolve) => agent.once('connect', resolve));
    agent.write(
      mqttPacket.generate({
        cmd: 'connect',
        protocolId: 'MQTT',
        protocolVersion: 4,
        clean: true,
        clientId: `agent-${prefix}`,
        keepalive: 10,
      }),
    );
    await new Promise((resolve) => agent.once('data', resolve)); // CONNACK
    const encoder = createEncoder({ backendId: 'a', prefix, key });
    encoder.status('offline', { will: true }); // seq 0, the Last Will
    const status = encoder.status('online'); // seq 1
    const m = metricsOf(encoder); // seq 2
    agent.write(
      Buffer.concat([
        mqttPacket.generate({
          cmd: 'publish',
          topic: status.topic,
          payload: status.payload,
          qos: 1,
          messageId: 1,
          retain: true,
          dup: false,
        }),
        mqttPacket.generate({
          cmd: 'publish',
          topic: m.topic,
          payload: m.payload,
          qos: 0,
          retain: false,
          dup: false,
        }),
      ]),
    );
    await until(() => gw.lb.balancer.snapshot().backends[0]!.reportFresh, 5000, 'the report');
    const overtaken = () => counter(gw, 'invalid_messages_total', { code: 'LW_PROTO_OVERTAKEN' });
    const replays = () => counter(gw, 'invalid_messages_total', { code: 'LW_PROTO_REPLAY' });
    const deadline = Date.now() + 2_000;
    while ((await overtaken()) + (await replays()) === 0 && Date.now() < deadline)
      await new Promise((r) => setTimeout(r, 20));
    // This broker delivers them so (were it in order, the status would be taken: nothing dropped).
    expect(await overtaken()).toBe(1);
    expect(await replays()).toBe(0);
    expect(warnings.filter((w) => /dropped message/.test(w))).toEqual([]);

    // Sent again later, the same status is a replay, and said so.
    await new Promise((r) => setTimeout(r, 2_100));
    agent.write(
      mqttPacket.generate({
        cmd: 'publish',
        topic: status.topic,
        payload: status.payload,
        qos: 0,
        retain: false,
        dup: false,
      }),
    );
    const until2 = Date.now() + 5_000;
    while ((await replays()) === 0 && Date.now() < until2)
      await new Promise((r) => setTimeout(r, 20));
    expect(await replays()).toBe(1);
  } finally {
    socket?.destroy();
    await gw.close();
    await broker.close();
  }
}, 20_000);
