/**
 * The security model of the metrics channel: MQTT may only change how much
 * traffic a configured backend gets. Discovery (off by default) admits a
 * backend only from a signed registration inside the allowed ranges.
 */
import { once } from 'node:events';
import { request, type ServerResponse } from 'node:http';
import WebSocket from 'ws';
import { createEncoder } from '@loadwise/protocol';
import { connectClient, endClient, uniquePrefix } from '../kit/brokers';
import { send, startBackend, type TestServer } from '../kit/http';
import { startLocalGateway, type TestGateway } from '../kit/gateway';
import { internals } from '@loadwise/gateway-plugin/internals';
import {
  startEmbeddedBroker,
  type EmbeddedBroker,
  type LoadBalanceOptions,
} from '@loadwise/gateway-plugin';
import { eventually } from '../kit/fleet';
import { wsEchoBackend } from '../kit/ws-server';

const key = { keyId: 'k1', secret: Buffer.alloc(32, 7) };
const otherKey = { keyId: 'k1', secret: Buffer.alloc(32, 8) };

describe('discovery', () => {
  let a: TestServer;
  let gw: TestGateway | undefined;
  beforeAll(async () => {
    a = await startBackend('a');
  });
  afterEach(async () => {
    await gw?.close();
    gw = undefined;
  });
  afterAll(() => a.close());

  async function gateway(
    discovery: boolean,
  ): Promise<{ gw: TestGateway; dropped: string[]; prefix: string }> {
    const prefix = uniquePrefix('disc');
    const g = await startLocalGateway({
      backends: discovery ? [] : [{ id: 'known', url: a.url }],
      broker: { embedded: true },
      topicPrefix: prefix,
      keys: [key],
      ...(discovery
        ? { discovery: { allowedRanges: ['127.0.0.0/8'], allowedPorts: [a.port] } }
        : {}),
    });
    await g.lb.ready();
    const dropped: string[] = [];
    g.lb.balancer.on('invalid-message', (e) => dropped.push(e.code));
    return { gw: g, dropped, prefix };
  }

  async function publish(url: string, topic: string, payload: string): Promise<void> {
    const client = await connectClient(url);
    await client.publishAsync(topic, payload, { qos: 1 });
    await endClient(client);
  }

  async function settle(g: TestGateway, dropped: string[], n: number): Promise<void> {
    while (dropped.length < n) await new Promise((r) => setTimeout(r, 5));
    expect(g.lb.balancer.snapshot().backends.map((b) => b.id)).not.toContain('new');
  }

  it('is off by default: a signed registration of an allowed address is ignored', async () => {
    const { gw: g, dropped, prefix } = await gateway(false);
    gw = g;
    const reg = createEncoder({ backendId: 'new', prefix, key }).registration(a.url);
    await publish(g.lb.balancer.brokerUrl!, reg.topic, reg.payload);
    await settle(g, dropped, 1);
    expect(dropped).toEqual(['LW_GW_REGISTRATION_REJECTED']);
  });

  it('admits a signed registration inside the allowed ranges and routes to it', async () => {
    const { gw: g, dropped, prefix } = await gateway(true);
    gw = g;
    const url = g.lb.balancer.brokerUrl!;
    expect((await send(`${g.url}/`)).status).toBe(503); // nothing yet: LW_GW_NO_BACKEND

    const unsigned = createEncoder({ backendId: 'new', prefix }).registration(a.url);
    const forged = createEncoder({ backendId: 'new', prefix, key: otherKey }).registration(a.url);
    // One agent's encoder: (epochMs, seq) grows, so the replay guard lets each through.
    const agent = createEncoder({ backendId: 'new', prefix, key });
    const outside = agent.registration('http://10.1.2.3:80');
    const name = agent.registration(`http://localhost:${a.port}`);
    const port = agent.registration('http://127.0.0.1:1');
    for (const m of [unsigned, forged, outside, name, port]) await publish(url, m.topic, m.payload);
    await settle(g, dropped, 5);
    expect(dropped).toEqual([
      'LW_PROTO_UNSIGNED',
      'LW_PROTO_BAD_SIGNATURE',
      'LW_GW_REGISTRATION_REJECTED',
      'LW_GW_REGISTRATION_REJECTED',
      'LW_GW_REGISTRATION_REJECTED',
    ]);

    const added = once(internals(g.lb).events, 'backend-added');
    const good = agent.registration(a.url);
    await publish(url, good.topic, good.payload);
    expect(await added).toEqual([{ id: 'new', url: `${a.url}/` }]);
    const r = await send(`${g.url}/`);
    expect(r.status).toBe(200);
    expect(r.json<{ id: string }>().id).toBe('a');
    const snap = g.lb.balancer.snapshot().backends[0]!;
    expect(snap).toMatchObject({ id: 'new', origin: 'discovery' });
    expect(snap.slowStartFactor).toBeLessThan(1);

    // The same id cannot move to another address.
    const moved = agent.registration(`http://127.0.0.2:${a.port}`);
    await publish(url, moved.topic, moved.payload);
    while (dropped.length < 6) await new Promise((r2) => setTimeout(r2, 5));
    expect(dropped[5]).toBe('LW_GW_REGISTRATION_REJECTED');
    expect(g.lb.balancer.snapshot().backends[0]!.url).toBe(`${a.url}/`);
  });

  it("takes out, and then refuses, a registration of the gateway's own listener, though mounted", async () => {
    // A review of discovery: mounted at /api, a registration of the gateway's own URL sent
    // /api/admin to the app's /admin route, which trusted loopback callers (18 of 20): the
    // loop guard sees only a request that comes back through the balancer.
    const prefix = uniquePrefix('disc');
    let admin = 0;
    const g = await startLocalGateway(
      {
        backends: [],
        broker: { embedded: true },
        topicPrefix: prefix,
        keys: [key],
        discovery: { allowedRanges: ['127.0.0.0/8'] },
      },
      (app, lb) => {
        app.get('/admin', (_req, res) => void (admin++, res.end('ADMIN')));
        app.use('/api', lb);
      },
    );
    gw = g;
    await g.lb.ready();
    const dropped: string[] = [];
    g.lb.balancer.on('invalid-message', (e) => dropped.push(`${e.code}: ${e.detail}`));
    const url = g.lb.balancer.brokerUrl!;
    // Registered before any request: the balancer knows no listener of its own yet.
    const added = once(internals(g.lb).events, 'backend-added');
    const self = createEncoder({ backendId: 'self', prefix, key }).registration(g.url);
    await publish(url, self.topic, self.payload);
    await added;
    const first = await send(`${g.url}/api/admin`);
    expect([first.status, first.headers['x-loadwise-error']]).toEqual([503, 'LW_GW_NO_BACKEND']);
    expect(admin).toBe(0);
    expect(g.lb.balancer.snapshot().backends[0]).toMatchObject({ id: 'self', state: 'down' });
    // Known now: a registration of it (its id moved there by a new run) is refused as such.
    const moved = createEncoder({ backendId: 'a2', prefix, key });
    await publish(url, moved.registration(a.url).topic, moved.registration(a.url).payload);
    await eventually(() => g.lb.balancer.snapshot().backends.length === 2, 5_000, 'a2 added');
    const again = createEncoder({ backendId: 'a2', prefix, key, now: () => Date.now() + 1_000 });
    const reg = again.registration(`http://127.0.0.1:${g.port}/x`);
    await publish(url, reg.topic, reg.payload);
    await eventually(() => dropped.length === 1, 5_000, 'the registration dropped');
    expect(dropped).toEqual([
      `LW_GW_REGISTRATION_REJECTED: http://127.0.0.1:${g.port} is this gateway's own listener`,
    ]);
    expect((await send(`${g.url}/api/admin`)).status).toBe(200); // a2, at `a`
    expect(admin).toBe(0);
  });

  it('keeps hearing the admitted agent while second agents for its id, whose registrations are refused, run too', async () => {
    // A stale pod or a misconfigured second agent for one id: its newer run's registration
    // is refused, but it moved the replay order, so every later message of the admitted
    // agent was dropped as a replay (and the healthy backend forgotten at the end of its
    // lease). Through a real broker, in the order agents publish: status, registration.
    const { gw: g, dropped, prefix } = await gateway(true);
    gw = g;
    const client = await connectClient(g.lb.balancer.brokerUrl!);
    const pub = async (...ms: Array<{ topic: string; payload: string }>): Promise<void> => {
      for (const m of ms) await client.publishAsync(m.topic, m.payload, { qos: 1 });
    };
    try {
      const added = once(internals(g.lb).events, 'backend-added');
      const admitted = createEncoder({ backendId: 'web', prefix, key });
      await pub(admitted.status('online'), admitted.registration(a.url));
      await added;
      await pub(admitted.metrics(report));
      // The second agent (port 1 is not allowed), restarted once: two refused runs. A
      // drain of the first, captured on the way, never reached the gateway.
      const first = createEncoder({ backendId: 'web', prefix, key, now: () => Date.now() + 1 });
      await pub(first.status('online'), first.registration('http://127.0.0.1:1'));
      const capturedDrain = first.status('draining');
      await pub(first.metrics(report));
      const second = createEncoder({ backendId: 'web', prefix, key, now: () => Date.now() + 2 });
      await pub(second.status('online'), second.registration('http://127.0.0.1:1'));
      await pub(capturedDrain, admitted.metrics(report), admitted.metrics(report));
      await eventually(
        () => dropped.length >= 7,
        5_000,
        () => JSON.stringify(dropped),
      );
      expect(dropped).toEqual([
        'LW_GW_UNKNOWN_BACKEND', // the first status, before the id was known
        // Each second run's `online` before its registration: not the admitted entry's
        // (applied, it undid a stop or a drain of the admitted agent).
        'LW_GW_UNKNOWN_BACKEND',
        'LW_GW_REGISTRATION_REJECTED',
        'LW_GW_REGISTRATION_REJECTED',
        'LW_GW_UNKNOWN_BACKEND',
        'LW_GW_REGISTRATION_REJECTED',
        'LW_PROTO_REPLAY',
      ]);
      expect(g.lb.balancer.snapshot().backends).toMatchObject([
        { id: 'web', url: `${a.url}/`, state: 'healthy' },
      ]);
      // What the admitted agent says still counts.
      await pub(admitted.status('draining'));
      await eventually(() => g.lb.balancer.snapshot().backends[0]?.state === 'draining', 5_000);
      expect(dropped).toHaveLength(7);
    } finally {
      await endClient(client);
    }
  });

  it('refuses link-local, metadata, unspecified, multicast, IPv4-mapped, loopback and NAT64 targets, and a second id for one URL, even with ranges of everything', async () => {
    const prefix = uniquePrefix('disc-special');
    const g = await startLocalGateway({
      backends: [],
      broker: { embedded: true },
      topicPrefix: prefix,
      keys: [key],
      // Loopback only where a range inside 127.0.0.0/8 names it: 127.0.0.2, not the rest.
      discovery: { allowedRanges: ['0.0.0.0/0', '::/0', '127.0.0.2/32'] },
      statusPath: '/_lb/status',
    });
    gw = g;
    await g.lb.ready();
    const dropped: string[] = [];
    g.lb.balancer.on('invalid-message', (e) => dropped.push(`${e.backendId}`));
    const url = g.lb.balancer.brokerUrl!;
    const targets: Record<string, string> = {
      metadata: 'http://169.254.169.254/',
      mapped: `http://[::ffff:127.0.0.1]:${a.port}/`,
      mappedMetadata: 'http://[::ffff:a9fe:a9fe]/',
      linkLocal6: 'http://[fe80::1]:80/',
      unspecified: `http://0.0.0.0:${a.port}/`,
      multicast: 'http://224.0.0.1/',
      // The gateway's own port (its status page) and the embedded broker's.
      gatewayItself: `${g.url}/`,
      broker: `http://127.0.0.1:${new URL(g.lb.balancer.brokerUrl!).port}/`,
      loopback6: `http://[::1]:${a.port}/`,
      nat64Metadata: 'http://[64:ff9b::a9fe:a9fe]/',
      nat64: 'http://[64:ff9b::a01:203]/',
      // Metadata services outside link-local: AWS over IPv6, Alibaba Cloud, Oracle Cloud.
      awsMetadata6: 'http://[fd00:ec2::254]/',
      awsMetadata6Spelt: 'http://[FD00:0EC2:0:0:0:0:0:0254]/',
      alibabaMetadata: 'http://100.100.100.200/',
      oracleMetadata: 'http://192.0.0.192/',
      nat64AlibabaMetadata: 'http://[64:ff9b::6464:64c8]/',
    };
    for (const [id, target] of Object.entries(targets)) {
      const m = createEncoder({ backendId: id, prefix, key }).registration(target);
      await publish(url, m.topic, m.payload);
    }
    // Bounded waits: on a gateway that admits them, the test fails instead of hanging.
    const ids = (): string[] => g.lb.balancer.snapshot().backends.map((b) => b.id);
    await eventually(
      () => dropped.length + ids().length >= Object.keys(targets).length,
      5_000,
      () => `every registration decided (dropped ${dropped.join()}, admitted ${ids().join()})`,
    );
    expect(ids()).toEqual([]);
    expect(dropped.sort()).toEqual(Object.keys(targets).sort());

    const added = once(internals(g.lb).events, 'backend-added');
    const listed = `http://127.0.0.2:${a.port}`;
    const first = createEncoder({ backendId: 'first', prefix, key }).registration(listed);
    await publish(url, first.topic, first.payload);
    await added;
    // The same server under another spelling of its URL: a path, an empty one.
    const others = { second: listed, third: `${listed}//`, fourth: `${listed}/x` };
    for (const [id, target] of Object.entries(others)) {
      const m = createEncoder({ backendId: id, prefix, key }).registration(target);
      await publish(url, m.topic, m.payload);
    }
    await eventually(
      () => dropped.length >= Object.keys(targets).length + 3 || ids().length > 1,
      5_000,
      'the other registrations decided',
    );
    expect(ids()).toEqual(['first']);
    expect(dropped.slice(-3)).toEqual(['second', 'third', 'fourth']);
  });

  it('admits a whole fleet of retained registrations at once when the gateway starts after them', async () => {
    // More than the per-backend burst (40) the unknown ids' bucket used to have.
    const fleet = 60;
    const broker = await startEmbeddedBroker();
    const client = await connectClient(broker.url);
    const prefix = uniquePrefix('disc-fleet');
    try {
      for (let i = 0; i < fleet; i++) {
        const m = createEncoder({ backendId: `f${i}`, prefix, key }).registration(
          `http://127.0.0.1:${20_000 + i}`,
        );
        await client.publishAsync(m.topic, m.payload, { qos: 1, retain: true });
      }
      const limited: string[] = [];
      const g = await startLocalGateway({
        backends: [],
        broker: { url: broker.url },
        topicPrefix: prefix,
        keys: [key],
        discovery: { allowedRanges: ['127.0.0.0/8'] },
      });
      gw = g;
      g.lb.balancer.on('invalid-message', (e) => {
        if (e.code === 'LW_GW_RATE_LIMITED') limited.push(`${e.backendId}`);
      });
      await g.lb.ready();
      // No renewal comes in this test: without room for all, the rest never arrive.
      const ids = (): string[] => g.lb.balancer.snapshot().backends.map((b) => b.id);
      await eventually(
        () => ids().length === fleet,
        5_000,
        () => `${fleet} backends (have ${ids().length}; rate-limited ${limited.join()})`,
      );
      expect(limited).toEqual([]);
    } finally {
      await gw?.close();
      gw = undefined;
      await endClient(client);
      await broker.close();
    }
  });

  it('forgets a discovered backend whose agent falls silent, keeps one whose agent speaks, and lets the id register again elsewhere', async () => {
    const b = await startBackend('b');
    const prefix = uniquePrefix('disc-lease');
    const g = await startLocalGateway({
      backends: [],
      broker: { embedded: true },
      topicPrefix: prefix,
      keys: [key],
      discovery: { allowedRanges: ['127.0.0.0/8'], forgetAfterMs: 1_500 },
    });
    gw = g;
    await g.lb.ready();
    const client = await connectClient(g.lb.balancer.brokerUrl!);
    const agents = {
      gone: createEncoder({ backendId: 'gone', prefix, key }),
      kept: createEncoder({ backendId: 'kept', prefix, key }),
    };
    const register = async (id: keyof typeof agents, target: string): Promise<void> => {
      const m = agents[id].registration(target);
      await client.publishAsync(m.topic, m.payload, { qos: 1 });
    };
    const removed: string[] = [];
    g.lb.balancer.on('backend-removed', (e) => removed.push(e.id));
    const ids = (): string[] => g.lb.balancer.snapshot().backends.map((x) => x.id);
    // 'kept' registers again every 200 ms, as an agent renews its registration.
    const renew = setInterval(() => void register('kept', b.url).catch(() => {}), 200);
    try {
      await register('gone', a.url);
      await register('kept', b.url);
      await eventually(() => ids().length === 2, 5_000, 'both registered');
      // Traffic to both (ties go round robin), so each has metric series.
      for (let i = 0; i < 10; i++) await send(`${g.url}/`);
      const series = async (): Promise<string> => g.lb.balancer.metricsRegistry.metrics();
      expect(await series()).toContain('backend="gone"');
      await eventually(
        () => removed.length > 0,
        10_000,
        () => `a removal (have ${ids().join()})`,
      );
      expect(removed).toEqual(['gone']);
      expect(ids()).toEqual(['kept']);
      // Its series left the scrape with it.
      expect(await series()).not.toContain('backend="gone"');
      // Every request now goes to the one left.
      const r = await send(`${g.url}/`);
      expect(r.json<{ id: string }>().id).toBe('b');
      // Forgotten, the id is free: it may come back at another address.
      await register('gone', `http://127.0.0.2:${a.port}`);
      await eventually(() => ids().includes('gone'), 5_000, 'gone registered again');
      expect(g.lb.balancer.snapshot().backends.find((x) => x.id === 'gone')!.url).toBe(
        `http://127.0.0.2:${a.port}/`,
      );
    } finally {
      clearInterval(renew);
      await endClient(client);
      await b.close();
    }
  });

  /** A signed report of `x`, fresh for 1 s, as its agent sends it. */
  const report = {
    intervalMs: 1000,
    state: 'online' as const,
    host: { cpuUtilization: 0.1, memoryUtilization: 0.1, memoryAvailableBytes: 1e9 },
    health: { verdict: 'up' as const },
  };

  /**
   * A discovering gateway (forgetAfterMs 1.5 s) on a clock only the test moves
   * (`clock.ms`); its sweep runs on its real 1 s timer.
   */
  async function leasedGateway(
    name: string,
    extra: Partial<LoadBalanceOptions> = {},
  ): Promise<{ g: TestGateway; prefix: string; clock: { ms: number } }> {
    const clock = { ms: Date.now() };
    const prefix = uniquePrefix(name);
    const g = await startLocalGateway({
      backends: [],
      broker: { embedded: true },
      topicPrefix: prefix,
      keys: [key],
      discovery: { allowedRanges: ['127.0.0.0/8'], forgetAfterMs: 1_500 },
      now: () => clock.ms,
      ...extra,
    });
    gw = g;
    await g.lb.ready();
    return { g, prefix, clock };
  }

  /** Backend `x` registers at `url` and reports, through `brokerUrl`; resolves once it is in. */
  async function registerX(g: TestGateway, prefix: string, url: string, brokerUrl: string) {
    const enc = createEncoder({ backendId: 'x', prefix, key });
    for (const m of [enc.registration(url), enc.metrics(report)])
      await publish(brokerUrl, m.topic, m.payload);
    await eventually(() => g.backend('x')?.reportFresh === true, 5_000, 'x registered, fresh');
  }

  it("does not count a broker outage as the agents' silence, and a reconnect restarts no lease", async () => {
    let broker: EmbeddedBroker | undefined = await startEmbeddedBroker();
    const port = broker.port;
    const { g, prefix, clock } = await leasedGateway('disc-outage', {
      broker: { url: broker.url, reconnectPeriodMs: 100 },
    });
    try {
      await registerX(g, prefix, a.url, broker.url);
      // One second of silence with the broker up: it counts.
      clock.ms += 1_000;

      await broker.close();
      broker = undefined;
      await eventually(() => g.lb.balancer.snapshot().brokerConnected === false, 5_000, 'lost');
      // Ten seconds of silence, all of it with the broker down: a sweep after this finds x's
      // report stale (metrics-stale) and, in the same sweep, must not forget it.
      const stale = once(internals(g.lb).events, 'metrics-stale');
      clock.ms += 10_000;
      await stale;
      expect(g.lb.balancer.snapshot().backends.map((b) => b.id)).toEqual(['x']);

      // The broker back: the lease goes on from where the outage stopped it (1 s), not
      // from zero, so 600 ms more (1.6 s in all) forget x.
      broker = await startEmbeddedBroker({ port });
      await eventually(() => g.lb.balancer.snapshot().brokerConnected === true, 10_000, 'back');
      expect(g.lb.balancer.snapshot().backends.map((b) => b.id)).toEqual(['x']);
      const removed: unknown[] = [];
      g.lb.balancer.on('backend-removed', (e) => removed.push(e));
      clock.ms += 600;
      await eventually(
        () => removed.length > 0,
        5_000,
        'x forgotten 600 ms after the reconnection',
      );
      expect(removed).toEqual([{ id: 'x', url: `${a.url}/`, silentMs: 1_600, reason: 'silent' }]);
      expect(g.lb.balancer.snapshot().backends).toEqual([]);
    } finally {
      await g.close();
      gw = undefined;
      await broker?.close();
    }
  });

  it('does not age leases while a flood has the gateway-wide message cap dropping messages', async () => {
    // The cap's bucket refills on the gateway's clock, which only the test moves.
    const { g, prefix, clock } = await leasedGateway('disc-flood', {
      messageLimits: { totalPerSec: 5, totalBurst: 5 },
    });
    const client = await connectClient(g.lb.balancer.brokerUrl!);
    const capped: string[] = [];
    g.lb.balancer.on('invalid-message', (e) => {
      if (e.code === 'LW_GW_RATE_LIMITED') capped.push(e.code);
    });
    let flood: NodeJS.Timeout | undefined;
    try {
      await registerX(g, prefix, a.url, g.lb.balancer.brokerUrl!);
      // Junk on another id's topic, 20 messages every 20 ms: each burst empties the
      // cap's bucket, so every sweep period has drops (the agent's renewals would be
      // among them).
      const topic = createEncoder({ backendId: 'flood', prefix }).metrics(report).topic;
      flood = setInterval(() => {
        for (let i = 0; i < 20; i++) client.publish(topic, 'junk');
      }, 20);
      await eventually(() => capped.length > 0, 5_000, 'the cap dropping messages');
      const stale = once(internals(g.lb).events, 'metrics-stale');
      clock.ms += 5_000;
      await stale;
      // The sweep that found x's report stale did not count those 5 s against its lease.
      expect(g.lb.balancer.snapshot().backends.map((b) => b.id)).toEqual(['x']);

      // The flood over, the lease runs again.
      clearInterval(flood);
      flood = undefined;
      const tick = setInterval(() => (clock.ms += 500), 100);
      try {
        await eventually(
          () => g.lb.balancer.snapshot().backends.length === 0,
          10_000,
          'x forgotten after the flood',
        );
      } finally {
        clearInterval(tick);
      }
    } finally {
      clearInterval(flood);
      await endClient(client);
      await g.close();
      gw = undefined;
    }
  });

  it('does not forget a backend while an event stream of it is in the stream lane', async () => {
    let stream: ServerResponse | undefined;
    const backend = await startBackend('x', (_req, res) => {
      res.writeHead(200, { 'content-type': 'text/event-stream' });
      res.write('data: hello\n\n');
      stream = res;
    });
    const { g, prefix, clock } = await leasedGateway('disc-stream', { streams: { afterMs: 20 } });
    const client = request(`${g.url}/events`, { agent: false });
    try {
      await registerX(g, prefix, backend.url, g.lb.balancer.brokerUrl!);
      const got = new Promise<string>((resolve) =>
        client.on('response', (res) => res.once('data', (d: Buffer) => resolve(String(d)))),
      );
      client.end();
      expect(await got).toContain('data: hello');
      await eventually(() => g.snapshot().openStreams === 1, 5_000, 'the stream in the lane');
      const stale = once(internals(g.lb).events, 'metrics-stale');
      clock.ms += 5_000;
      await stale;
      // Silent past its lease, but its stream runs (out of inFlight): kept.
      expect(g.lb.balancer.snapshot().backends.map((b) => b.id)).toEqual(['x']);
      // Ended, the backend goes at a later sweep.
      const removed = once(internals(g.lb).events, 'backend-removed');
      stream!.end();
      expect((await removed)[0]).toMatchObject({ id: 'x' });
    } finally {
      client.destroy();
      await g.close();
      gw = undefined;
      await backend.close();
    }
  });

  it('does not forget a backend while a WebSocket to it is open', async () => {
    const backend = await wsEchoBackend();
    const { g, prefix, clock } = await leasedGateway('disc-ws');
    let ws: WebSocket | undefined;
    try {
      await registerX(g, prefix, backend.url, g.lb.balancer.brokerUrl!);
      ws = new WebSocket(`ws://127.0.0.1:${g.port}/ws`);
      await once(ws, 'open');
      const stale = once(internals(g.lb).events, 'metrics-stale');
      clock.ms += 5_000;
      await stale;
      // Silent past its lease, but a WebSocket is open to it: kept, and the WebSocket works.
      expect(g.lb.balancer.snapshot().backends.map((b) => b.id)).toEqual(['x']);
      ws.send('hi');
      expect(String((await once(ws, 'message'))[0])).toBe('echo hi');
      // Closed, the backend goes at a later sweep.
      ws.close();
      await once(ws, 'close');
      const removed = once(internals(g.lb).events, 'backend-removed');
      expect((await removed)[0]).toMatchObject({ id: 'x' });
    } finally {
      ws?.terminate();
      await g.close();
      gw = undefined;
      await backend.close();
    }
  });
});
