/**
 * The MQTT side against real brokers (embedded aedes, and Mosquitto when
 * MQTT_URL is set): reports reach the configured backend, unknown backends and
 * invalid messages are dropped and counted, draining stops new requests, and
 * the embedded mode exposes a URL agents can use.
 */
import { randomBytes } from 'node:crypto';
import { once } from 'node:events';
import type { ServerResponse } from 'node:http';
import { createEncoder, signPayload, type SigningKey } from '@loadwise/protocol';
import { brokerTargets, connectClient, endClient, uniquePrefix } from '../kit/brokers';
import { send, startBackend, type TestServer } from '../kit/http';
import { quietLogger, startLocalGateway, type TestGateway } from '../kit/gateway';
import { loadBalance, type LoadBalanceOptions } from '@loadwise/gateway-plugin';
import { internals } from '@loadwise/gateway-plugin/internals';
import type { MqttClient } from 'mqtt';
import { Registry } from 'prom-client';

/** Reports are signed, as a gateway requires by default (SECURITY.md). */
const key: SigningKey = { keyId: 'k1', secret: randomBytes(32) };

const metricsBody = {
  intervalMs: 1000,
  state: 'online' as const,
  host: { cpuUtilization: 0.5, memoryUtilization: 0.25, memoryAvailableBytes: 1e9 },
  queue: { inFlight: 3, source: { inFlight: 'tracker' as const } },
  health: { verdict: 'up' as const },
};

async function until(check: () => boolean, timeoutMs = 5000): Promise<void> {
  const start = Date.now();
  while (!check()) {
    if (Date.now() - start > timeoutMs) throw new Error('condition not reached');
    await new Promise((r) => setTimeout(r, 10));
  }
}

describe.each(brokerTargets())('gateway on $name', (target) => {
  let broker: { url: string; close(): Promise<void> };
  let a: TestServer;
  let b: TestServer;
  let gw: TestGateway | undefined;
  beforeAll(async () => {
    broker = await target.start();
    a = await startBackend('a');
    b = await startBackend('b');
  });
  afterEach(async () => {
    await gw?.close();
    gw = undefined;
  });
  afterAll(async () => {
    await a.close();
    await b.close();
    await broker.close();
  });

  /**
   * Starts `gw` on this broker over a and b, under `prefix`, verifying with `key`
   * unless `extra` says otherwise, and waits until it is ready (afterEach closes it).
   */
  async function gatewayOverAB(
    prefix: string,
    extra: Partial<LoadBalanceOptions>,
  ): Promise<TestGateway> {
    gw = await startLocalGateway({
      backends: [
        { id: 'a', url: a.url },
        { id: 'b', url: b.url },
      ],
      broker: broker.url,
      topicPrefix: prefix,
      keys: [key],
      ...extra,
    });
    await gw.lb.ready();
    return gw;
  }

  /**
   * A balancer on the app's own MQTT client `own` under `prefix`: backend a (unless `extra`
   * says otherwise), verifying with `key`, no active checks nor warm-up, quiet, with a
   * metrics registry of its own. The caller closes it.
   */
  function onAppClient(
    own: MqttClient,
    prefix: string,
    extra: Partial<LoadBalanceOptions> = {},
  ): ReturnType<typeof loadBalance> {
    return loadBalance({
      backends: [{ id: 'a', url: a.url }],
      broker: { client: own },
      topicPrefix: prefix,
      keys: [key],
      healthCheck: false,
      warmUp: false,
      metricsRegistry: new Registry(),
      logger: quietLogger,
      ...extra,
    });
  }

  it('applies reports of configured backends and ignores unknown ones', async () => {
    const prefix = uniquePrefix('gw');
    gw = await gatewayOverAB(prefix, { metricsPath: '/_lb/metrics' });
    const dropped: string[] = [];
    gw.lb.balancer.on('invalid-message', (e) => dropped.push(e.code));
    const client = await connectClient(broker.url);
    try {
      const encA = createEncoder({ backendId: 'a', prefix, key });
      const encX = createEncoder({ backendId: 'x', prefix, key });
      const m = encA.metrics(metricsBody);
      const x = encX.metrics(metricsBody);
      await client.publishAsync(x.topic, x.payload, { qos: 1 });
      const garbageTopic = `${prefix}/v1/backends/a/metrics`;
      // Signed garbage: the signature is checked first, then the JSON.
      await client.publishAsync(garbageTopic, signPayload(garbageTopic, '{not json', key), {
        qos: 1,
      });
      await client.publishAsync(m.topic, m.payload, { qos: 1 });
      await until(() => gw!.lb.balancer.snapshot().backends[0]!.lastReport !== null);
      const snap = gw.lb.balancer.snapshot();
      expect(snap.backends.map((s) => s.id)).toEqual(['a', 'b']);
      expect(snap.backends[0]!.lastReport).toMatchObject({ cpuUtilization: 0.5, inFlight: 3 });
      expect(snap.backends[0]!.reportFresh).toBe(true);
      // Which key spoke for each backend: a's report was signed with k1, b has heard nothing.
      expect(snap.backends.map((s) => s.signedBy)).toEqual(['k1', null]);
      expect(dropped.sort()).toEqual(['LW_GW_UNKNOWN_BACKEND', 'LW_PROTO_MALFORMED_JSON']);
      expect(snap.brokerConnected).toBe(true);
      const metrics = (await send(`${gw.url}/_lb/metrics`)).body;
      expect(metrics).toContain(
        'loadwise_invalid_messages_total{code="LW_PROTO_MALFORMED_JSON"} 1',
      );
      expect(metrics).toContain('loadwise_invalid_messages_total{code="LW_GW_UNKNOWN_BACKEND"} 1');
    } finally {
      await endClient(client);
    }
  });

  it('stops sending new requests to a draining backend', async () => {
    const prefix = uniquePrefix('gw');
    gw = await gatewayOverAB(prefix, { strategy: 'round-robin' });
    const client = await connectClient(broker.url);
    try {
      const draining = once(internals(gw.lb).events, 'backend-draining');
      const s = createEncoder({ backendId: 'a', prefix, key }).status('draining');
      await client.publishAsync(s.topic, s.payload, { qos: 1 });
      expect(await draining).toEqual([{ id: 'a' }]);
      for (let i = 0; i < 6; i++) {
        const r = await send(`${gw.url}/`);
        expect(r.json<{ id: string }>().id).toBe('b');
      }
    } finally {
      await endClient(client);
    }
  });

  it('a key bound to one backend cannot drain another: a leaked agent key speaks for its own backend only', async () => {
    const prefix = uniquePrefix('gw');
    const ka: SigningKey = { keyId: 'ka', secret: randomBytes(32), backends: ['a'] };
    const kb: SigningKey = { keyId: 'kb', secret: randomBytes(32), backends: ['b'] };
    gw = await gatewayOverAB(prefix, { keys: [ka, kb], strategy: 'round-robin' });
    const dropped: string[] = [];
    gw.lb.balancer.on('invalid-message', (e) => dropped.push(e.code));
    const client = await connectClient(broker.url);
    try {
      // a's key, validly signed, on b's topic: what a's compromised host would send. The
      // encoder refuses to make it; a forger signs by hand.
      expect(() => createEncoder({ backendId: 'b', prefix, key: ka })).toThrow(
        'LW_PROTO_KEY_NOT_ALLOWED',
      );
      const genuine = createEncoder({ backendId: 'b', prefix, key: kb }).status('draining');
      const body = genuine.payload.slice(0, genuine.payload.lastIndexOf('\n'));
      await client.publishAsync(genuine.topic, signPayload(genuine.topic, body, ka), { qos: 1 });
      // a's own draining, with the same key, goes through: b stays, a leaves.
      const draining = once(internals(gw.lb).events, 'backend-draining');
      const own = createEncoder({ backendId: 'a', prefix, key: ka }).status('draining');
      await client.publishAsync(own.topic, own.payload, { qos: 1 });
      expect(await draining).toEqual([{ id: 'a' }]);
      expect(dropped).toEqual(['LW_PROTO_KEY_NOT_ALLOWED']);
      for (let i = 0; i < 4; i++) {
        const r = await send(`${gw.url}/`);
        expect(r.json<{ id: string }>().id).toBe('b');
      }
    } finally {
      await endClient(client);
    }
  });

  it('lets in-flight requests of a draining backend finish', async () => {
    const prefix = uniquePrefix('gw');
    const held: ServerResponse[] = [];
    const h = await startBackend('h', (_req, res) => void held.push(res));
    try {
      gw = await startLocalGateway({
        backends: [
          { id: 'h', url: h.url },
          { id: 'b', url: b.url },
        ],
        broker: broker.url,
        topicPrefix: prefix,
        keys: [key],
        strategy: 'round-robin',
        // Round robin starts at a random backend; from the first here, so /slow goes to h.
        random: () => 0,
      });
      await gw.lb.ready();
      const inFlight = send(`${gw.url}/slow`);
      await until(() => held.length === 1);
      const client = await connectClient(broker.url);
      const draining = once(internals(gw.lb).events, 'backend-draining');
      const s = createEncoder({ backendId: 'h', prefix, key }).status('draining');
      await client.publishAsync(s.topic, s.payload, { qos: 1 });
      await endClient(client);
      await draining;
      for (let i = 0; i < 3; i++)
        expect((await send(`${gw.url}/`)).json<{ id: string }>().id).toBe('b');
      held[0]!.end('finished');
      const r = await inFlight;
      expect([r.status, r.body]).toEqual([200, 'finished']);
    } finally {
      for (const r of held) r.end();
      await h.close();
    }
  });

  it("uses the user's own mqtt client without ending it on close", async () => {
    const prefix = uniquePrefix('gw');
    const own = await connectClient(broker.url);
    try {
      gw = await startLocalGateway({
        backends: [{ id: 'a', url: a.url }],
        broker: { client: own },
        topicPrefix: prefix,
        keys: [key],
      });
      await gw.lb.ready();
      const m = createEncoder({ backendId: 'a', prefix, key }).metrics(metricsBody);
      // Published through the same client the gateway subscribed with.
      while (!gw.lb.balancer.snapshot().backends[0]!.reportFresh) {
        await own.publishAsync(m.topic, m.payload, { qos: 1 });
        await new Promise((r) => setTimeout(r, 20));
      }
      await gw.close();
      gw = undefined;
      expect(own.connected).toBe(true);
    } finally {
      await endClient(own);
    }
  });

  it("one client for two services' balancers: each hears its own reports, never drops the other's", async () => {
    const prefix = uniquePrefix('gw');
    const own = await connectClient(broker.url);
    const registry = new Registry();
    const dropped: string[] = [];
    const balancers = ['users', 'orders'].map((service) => {
      const lb = onAppClient(own, prefix, {
        backends: [{ id: `${service}-1`, url: a.url }],
        service,
        metricsRegistry: registry,
      });
      lb.balancer.on('invalid-message', (e) => dropped.push(`${service}: ${e.code}`));
      return lb;
    });
    try {
      await Promise.all(balancers.map((lb) => lb.ready()));
      for (const service of ['users', 'orders']) {
        const enc = createEncoder({
          backendId: `${service}-1`,
          prefix: `${prefix}/${service}`,
          key,
        });
        for (const m of [enc.status('online'), enc.metrics(metricsBody)])
          await own.publishAsync(m.topic, m.payload, { qos: 1 });
      }
      await until(() => balancers.every((lb) => lb.balancer.snapshot().backends[0]!.reportFresh));
      // Before: each balancer also got the other's two messages, each dropped and counted
      // as LW_PROTO_BAD_TOPIC, with a warning, and charged to its message limits.
      expect(dropped).toEqual([]);
      expect(await registry.metrics()).not.toMatch(/invalid_messages_total\{/);
    } finally {
      await Promise.all(balancers.map((lb) => lb.close({ graceMs: 0 })));
      await endClient(own);
    }
  });

  it('one client for two balancers on one prefix (a reload): closing the old one leaves the new one hearing', async () => {
    const prefix = uniquePrefix('gw');
    const own = await connectClient(broker.url);
    const make = () => onAppClient(own, prefix);
    const old = make();
    const next = make();
    try {
      await Promise.all([old.ready(), next.ready()]);
      await old.close({ graceMs: 0 });
      const enc = createEncoder({ backendId: 'a', prefix, key });
      for (const m of [enc.status('online'), enc.metrics(metricsBody)])
        await own.publishAsync(m.topic, m.payload, { qos: 1 });
      // Before: the old balancer's close unsubscribed the filter both held on the client,
      // and the new one heard nothing more while saying it was connected.
      await until(() => next.balancer.snapshot().backends[0]!.reportFresh);
    } finally {
      await Promise.all([old, next].map((lb) => lb.close({ graceMs: 0 })));
      await endClient(own);
    }
  });

  it('one client for two balancers (a reload): the new one gets the retained registrations too', async () => {
    const prefix = uniquePrefix('gw');
    // As an app's client: mqtt.js resubscribes (and so tracks its filters) when it reconnects.
    const own = await connectClient(broker.url, { reconnectPeriod: 1000 });
    const enc = createEncoder({ backendId: 'web-1', prefix, key });
    const retained = [enc.registration(a.url), enc.status('online')];
    for (const m of retained) await own.publishAsync(m.topic, m.payload, { qos: 1, retain: true });
    const make = () =>
      onAppClient(own, prefix, { backends: [], discovery: { allowedRanges: ['127.0.0.0/8'] } });
    const ids = (lb: ReturnType<typeof make>) => lb.balancer.snapshot().backends.map((b) => b.id);
    const subscribe = jest.spyOn(own, 'subscribe');
    const old = make();
    let next: ReturnType<typeof make> | undefined;
    try {
      await old.ready();
      await until(() => ids(old).includes('web-1'));
      // The old one's own re-request of the retained messages (mqtt-source.ts
      // resendRetained) is out and answered: the new one must ask for them itself.
      await until(() => subscribe.mock.calls.length >= 2);
      await own.publishAsync(`${prefix}/sync`, 'x', { qos: 1 });
      next = make();
      await next.ready();
      // Before: mqtt.js skips a SUBSCRIBE for a filter its client holds already, so the
      // broker re-sent nothing and the new balancer knew no backend until each agent
      // renewed its registration (20 s), while ready() had resolved.
      await until(() => ids(next!).includes('web-1'));
    } finally {
      await Promise.all([old, next].map((lb) => lb?.close({ graceMs: 0 })));
      for (const m of retained) await own.publishAsync(m.topic, '', { qos: 1, retain: true });
      await endClient(own);
    }
  });

  it('one app client for two balancers: a reconnect sends one SUBSCRIBE, not one per balancer more', async () => {
    const prefix = uniquePrefix('gw');
    const own = await connectClient(broker.url, { reconnectPeriod: 100 });
    const make = () => onAppClient(own, prefix);
    const lbs = [make(), make()];
    try {
      await Promise.all(lbs.map((lb) => lb.ready()));
      let subscribes = 0;
      own.on('packetsend', (p) => {
        if (p.cmd === 'subscribe') subscribes++;
      });
      own.stream.destroy();
      await new Promise<void>((resolve) => own.once('connect', () => resolve()));
      await own.publishAsync(`${prefix}/sync`, 'x', { qos: 1 });
      // Before: mqtt.js's own resubscribe and one forced SUBSCRIBE per balancer (3), each
      // bringing every retained message again.
      expect(subscribes).toBe(1);
    } finally {
      await Promise.all(lbs.map((lb) => lb.close({ graceMs: 0 })));
      await endClient(own);
    }
  });

  it('serves several gateways on one broker: both hear every report', async () => {
    const prefix = uniquePrefix('gw');
    const opts = {
      backends: [{ id: 'a', url: a.url }],
      broker: broker.url,
      topicPrefix: prefix,
      keys: [key],
    };
    gw = await startLocalGateway(opts);
    const gw2 = await startLocalGateway(opts);
    try {
      await Promise.all([gw.lb.ready(), gw2.lb.ready()]);
      const client = await connectClient(broker.url);
      const m = createEncoder({ backendId: 'a', prefix, key }).metrics(metricsBody);
      await client.publishAsync(m.topic, m.payload, { qos: 1 });
      await endClient(client);
      await until(() => [gw!, gw2].every((g) => g.lb.balancer.snapshot().backends[0]!.reportFresh));
      expect(gw.lb.balancer.brokerConnected && gw2.lb.balancer.brokerConnected).toBe(true);
    } finally {
      await gw2.close();
    }
  });

  it("keeps a backend routable when its agent dies (Last Will); stops on the agent's own 'offline'", async () => {
    const prefix = uniquePrefix('gw');
    gw = await startLocalGateway({
      backends: [{ id: 'a', url: a.url }],
      broker: broker.url,
      topicPrefix: prefix,
      keys: [key],
      load: { staleAfterMs: 200 },
    });
    await gw.lb.ready();
    const client = await connectClient(broker.url);
    try {
      const enc = createEncoder({ backendId: 'a', prefix, key });
      const m = enc.metrics(metricsBody);
      await client.publishAsync(m.topic, m.payload, { qos: 1 });
      await until(() => gw!.lb.balancer.snapshot().backends[0]!.reportFresh);
      const stale = once(internals(gw.lb).events, 'metrics-stale');
      const will = enc.status('offline', { will: true });
      await client.publishAsync(will.topic, will.payload, { qos: 1 });
      expect(await stale).toEqual([expect.objectContaining({ id: 'a' })]);
      expect(gw.lb.balancer.snapshot().backends[0]!.state).toBe('healthy');
      expect((await send(`${gw.url}/`)).status).toBe(200);

      const down = once(internals(gw.lb).events, 'backend-down');
      const off = enc.status('offline', { reason: 'maintenance' });
      await client.publishAsync(off.topic, off.payload, { qos: 1 });
      expect(await down).toEqual([{ id: 'a', reason: 'agent reported offline' }]);
      const r = await send(`${gw.url}/`);
      expect([r.status, r.headers['x-loadwise-error']]).toEqual([503, 'LW_GW_NO_BACKEND']);

      const up = once(internals(gw.lb).events, 'backend-up');
      const online = enc.status('online');
      await client.publishAsync(online.topic, online.payload, { qos: 1 });
      await up;
      expect((await send(`${gw.url}/`)).status).toBe(200);
    } finally {
      await endClient(client);
    }
  });
});

describe('embedded broker mode', () => {
  it('hosts aedes in the gateway process and exposes its URL to agents', async () => {
    const a = await startBackend('a');
    const prefix = uniquePrefix('emb');
    const gw = await startLocalGateway({
      backends: [{ id: 'a', url: a.url }],
      broker: { embedded: true, port: 0 },
      topicPrefix: prefix,
      keys: [key],
    });
    try {
      await gw.lb.ready();
      const url = gw.lb.balancer.brokerUrl;
      expect(url).toMatch(/^mqtt:\/\/127\.0\.0\.1:\d+$/);
      const client = await connectClient(url!);
      const m = createEncoder({ backendId: 'a', prefix, key }).metrics(metricsBody);
      await client.publishAsync(m.topic, m.payload, { qos: 1 });
      await until(() => gw.lb.balancer.snapshot().backends[0]!.reportFresh);
      await endClient(client);
    } finally {
      await gw.close();
      await a.close();
    }
  });
});

describe('the MQTT keepalive the gateway asks for', () => {
  /** A TCP server that reads the first packet (CONNECT) and closes: its keepalive field. */
  async function keepaliveOf(
    opts: Partial<LoadBalanceOptions['broker'] & object>,
  ): Promise<number> {
    const { createServer } = await import('node:net');
    let lb: ReturnType<typeof loadBalance> | undefined;
    const seen = new Promise<number>((resolve, reject) => {
      const server = createServer((socket) => {
        let buf = Buffer.alloc(0);
        socket.on('data', (d: Buffer) => {
          buf = Buffer.concat([buf, d]);
          // Fixed header: type, remaining length (a varint); then the protocol name
          // (2-byte length + 'MQTT'), the level and the flags, then the keepalive (2 bytes).
          let i = 1;
          while (i < buf.length && (buf[i]! & 0x80) !== 0) i++;
          const at = i + 1 + 2 + 4 + 1 + 1;
          if (buf.length < at + 2) return;
          resolve(buf.readUInt16BE(at));
          socket.destroy();
          server.close();
        });
      });
      server.on('error', reject);
      server.listen(0, '127.0.0.1', () => {
        const port = (server.address() as { port: number }).port;
        lb = loadBalance({
          backends: [{ id: 'a', url: 'http://127.0.0.1:1' }],
          broker: { url: `mqtt://127.0.0.1:${port}`, ...opts },
          logger: quietLogger,
          healthCheck: false,
          warmUp: false,
        });
      });
    });
    try {
      return await seen;
    } finally {
      await lb?.close();
    }
  }

  it('is 10 s by default, as the agents', async () => {
    // A silent broker was noticed after 1.5 × keepalive: 45 s at the 30 s it was.
    expect(await keepaliveOf({})).toBe(10);
  });

  it('is broker.keepaliveSec when set', async () => {
    expect(await keepaliveOf({ keepaliveSec: 60 })).toBe(60);
  });
});
