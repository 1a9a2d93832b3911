/**
 * The embedded broker's bounds, through a gateway's own (`broker: { embedded:
 * true }`) and real mqtt.js clients: what anyone who can connect to it could do
 * to the gateway's process before, one client each (1,500 packets, measured
 * with the scripts of the change that added these bounds):
 *
 * - 1-byte retained payloads on 60 KB topics: 1,500 bytes counted, RSS +165 MB;
 * - subscriptions to 60 KB filters: +91 MB of heap;
 * - a persistent session (`clean: false`) that subscribed and left: every
 *   QoS 1 message queued for it, 90.6 MB;
 * - QoS 2 publishes without PUBREL: each kept, 90 MB, after the client left;
 * - one publish or subscription of more than 100 topic levels: aedes's matcher
 *   threw out of the event loop and the gateway's process exited.
 *
 * Each refusal is counted as LW_GW_BROKER_LIMIT, and the gateway's own
 * channel keeps working.
 */
import { randomBytes } from 'node:crypto';
import type { MqttClient } from 'mqtt';
import { createEncoder, type SigningKey } from '@loadwise/protocol';
import { connectClient, endClient, uniquePrefix } from '../kit/brokers';
import { eventually } from '../kit/fleet';
import { counter, startGateway, type TestGateway } from '../kit/gateway';

jest.setTimeout(60_000);

// The bounds docs/gateway.md ("Control channel limits") gives.
const MAX_TOPIC_BYTES = 512;
const MAX_TOPIC_LEVELS = 32;
const DEFAULT_MAX_SUBSCRIPTIONS_PER_CLIENT = 16;
const DEFAULT_MAX_RETAINED_MESSAGES = 10_000;

const key: SigningKey = { keyId: 'k1', secret: randomBytes(32) };
const prefix = uniquePrefix('limits');
let gw: TestGateway;
let url: string;
const clients: MqttClient[] = [];

beforeAll(async () => {
  gw = await startGateway({
    backends: [{ id: 'a', url: 'http://127.0.0.1:9' }],
    broker: { embedded: true },
    topicPrefix: prefix,
    keys: [key],
    healthCheck: false,
  });
  url = gw.lb.balancer.brokerUrl!;
});
afterEach(async () => {
  await Promise.all(clients.splice(0).map((c) => endClient(c, true)));
});
afterAll(() => gw.close());

async function open(opts: Parameters<typeof connectClient>[1] = {}): Promise<MqttClient> {
  const c = await connectClient(url, opts);
  c.on('error', () => undefined);
  clients.push(c);
  return c;
}

/** The reasons of every LW_GW_BROKER_LIMIT so far. */
function refusals(): string[] {
  return gw.events
    .filter((e) => e.name === 'invalid-message' && e.data.code === 'LW_GW_BROKER_LIMIT')
    .map((e) => String(e.data.detail));
}

/**
 * Runs `send`, then a QoS 1 publish: true if the broker closed the connection
 * first, false if it acknowledged that publish (it took everything before it).
 */
function closedAfter(c: MqttClient, send: () => void): Promise<boolean> {
  const closed = new Promise<boolean>((r) => c.once('close', () => r(true)));
  send();
  const synced = c.publishAsync('sync/x', 'x', { qos: 1 }).then(
    () => false,
    () => true,
  );
  return Promise.race([closed, synced]);
}

/** A topic of `levels` levels, or of `bytes` bytes in two levels. */
const deep = (levels: number): string => Array.from({ length: levels }, () => 'a').join('/');
const long = (bytes: number): string => `x/${'y'.repeat(bytes - 2)}`;

it('refuses a publish on a topic too long or too deep, and disconnects its client', async () => {
  const ok = await open();
  expect(await closedAfter(ok, () => ok.publish(long(MAX_TOPIC_BYTES), 'x'))).toBe(false);
  expect(await closedAfter(ok, () => ok.publish(deep(MAX_TOPIC_LEVELS), 'x'))).toBe(false);

  const tooLong = await open();
  expect(await closedAfter(tooLong, () => tooLong.publish(long(MAX_TOPIC_BYTES + 1), 'x'))).toBe(
    true,
  );
  // 102 levels: aedes's matcher threw past 100 and the process exited.
  const tooDeep = await open();
  expect(await closedAfter(tooDeep, () => tooDeep.publish(deep(102), 'x'))).toBe(true);
  await eventually(() => refusals().length === 2);
  expect(refusals()).toEqual([
    `embedded broker refused 127.0.0.1: topic of ${MAX_TOPIC_BYTES + 1} bytes > ${MAX_TOPIC_BYTES}`,
    `embedded broker refused 127.0.0.1: topic of 102 levels > ${MAX_TOPIC_LEVELS}`,
  ]);
  expect(await counter(gw, 'invalid_messages_total', { code: 'LW_GW_BROKER_LIMIT' })).toBe(2);
});

it('refuses subscriptions to filters too long or too deep (SUBACK 0x80), the client staying', async () => {
  const before = refusals().length;
  const c = await open();
  await expect(c.subscribeAsync(`${long(MAX_TOPIC_BYTES + 1)}/#`)).rejects.toThrow(
    /Subscribe error/,
  );
  await expect(c.subscribeAsync(`${deep(102)}/+`)).rejects.toThrow(/Subscribe error/);
  await c.subscribeAsync(long(MAX_TOPIC_BYTES));
  expect(c.connected).toBe(true);
  expect(refusals().slice(before)).toEqual([
    `embedded broker refused 127.0.0.1: filter of ${MAX_TOPIC_BYTES + 3} bytes > ${MAX_TOPIC_BYTES}`,
    `embedded broker refused 127.0.0.1: filter of 103 levels > ${MAX_TOPIC_LEVELS}`,
  ]);
});

it('holds a client to its subscriptions, an unsubscribe giving one back', async () => {
  const before = refusals().length;
  const c = await open();
  for (let i = 0; i < DEFAULT_MAX_SUBSCRIPTIONS_PER_CLIENT; i++) await c.subscribeAsync(`s/${i}`);
  // The same filter again replaces its subscription: not one more.
  await c.subscribeAsync('s/0', { qos: 1 });
  await expect(c.subscribeAsync('s/over')).rejects.toThrow(/Subscribe error/);
  await c.unsubscribeAsync('s/1');
  await c.subscribeAsync('s/over');
  // Another client has its own.
  const other = await open();
  await other.subscribeAsync('s/0');
  expect(refusals().slice(before)).toEqual([
    `embedded broker refused 127.0.0.1: more than ${DEFAULT_MAX_SUBSCRIPTIONS_PER_CLIENT} subscriptions`,
  ]);
});

it('refuses persistent sessions at CONNECT: nothing is queued for a client that left', async () => {
  const before = refusals().length;
  await expect(open({ clean: false, clientId: `sleeper-${prefix}` })).rejects.toThrow(
    /Identifier rejected/,
  );
  // MQTT 5 (clean start off, a session expiry): aedes 0.51 speaks 3.1.1 and refuses it.
  await expect(
    open({
      protocolVersion: 5,
      clean: false,
      clientId: `sleeper5-${prefix}`,
      properties: { sessionExpiryInterval: 3600 },
    }),
  ).rejects.toThrow();
  expect(refusals().slice(before)).toEqual([
    'embedded broker refused 127.0.0.1: persistent session (clean: false)',
  ]);
});

it('refuses QoS 2 publishes, which aedes keeps until a PUBREL that need never come', async () => {
  const before = refusals().length;
  const c = await open();
  expect(await closedAfter(c, () => c.publish('q/x', 'x', { qos: 2 }))).toBe(true);
  await eventually(() => refusals().length > before);
  expect(refusals().slice(before)).toEqual(['embedded broker refused 127.0.0.1: QoS 2 publish']);
});

it('counts retained messages, not only their bytes: past the bound a new topic is not kept', async () => {
  const before = refusals().length;
  const c = await open();
  const closed = await closedAfter(c, () => {
    for (let i = 0; i <= DEFAULT_MAX_RETAINED_MESSAGES; i++)
      c.publish(`r/${i}`, 'a', { qos: 0, retain: true });
  });
  // Delivered, not kept, the client staying: disconnected, an agent whose retained status
  // met a store anyone had filled never published a report.
  expect(closed).toBe(false);
  await eventually(() => refusals().length > before);
  expect(refusals().slice(before)).toEqual([
    `embedded broker refused 127.0.0.1: more than ${DEFAULT_MAX_RETAINED_MESSAGES} retained messages: delivered, not retained`,
  ]);
  // The store full of others' topics, an agent's retained status and its report still
  // reach the gateway.
  const agent = await open();
  const enc = createEncoder({ backendId: 'a', prefix, key });
  const status = enc.status('online');
  await agent.publishAsync(status.topic, status.payload, { qos: 1, retain: true });
  const report = enc.metrics({
    intervalMs: 1000,
    state: 'online',
    host: { cpuUtilization: 0.1, memoryUtilization: 0.1, memoryAvailableBytes: 1e9 },
    health: { verdict: 'up' },
  });
  await agent.publishAsync(report.topic, report.payload, { qos: 1 });
  expect(agent.connected).toBe(true);
  await eventually(() => gw.backend('a').reportFresh, 10_000, 'a report past the full store');
  // A kept topic may still be replaced, and cleared.
  const again = await open();
  await again.publishAsync('r/0', 'b', { qos: 1, retain: true });
  await again.publishAsync('r/1', '', { qos: 1, retain: true });
  await again.publishAsync('r/new', 'c', { qos: 1, retain: true });
  expect(again.connected).toBe(true);
});

it("after all of it, the gateway's own channel still works", async () => {
  const c = await open();
  const m = createEncoder({ backendId: 'a', prefix, key }).metrics({
    intervalMs: 1000,
    state: 'online',
    host: { cpuUtilization: 0.1, memoryUtilization: 0.1, memoryAvailableBytes: 1e9 },
    health: { verdict: 'up' },
  });
  await c.publishAsync(m.topic, m.payload, { qos: 1 });
  await eventually(() => gw.backend('a').reportFresh, 10_000, 'a report after the refusals');
});
