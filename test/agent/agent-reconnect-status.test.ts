import { connect as tcpConnect, createServer, type AddressInfo, type Socket } from 'node:net';
import type { MqttClient } from 'mqtt';
import {
  subscriptionFilter,
  topicFor,
  type BackendState,
  type Message,
  type SigningKey,
  type StatusMessage,
} from '@loadwise/protocol';
import { createAgent, type Agent } from '@loadwise/health-agent';
import {
  brokerTargets,
  clearRetained,
  connectClient,
  endClient,
  uniquePrefix,
} from '../kit/brokers';
import { inbox, type Received } from '../kit/agent-cli';
import { listen, until, type Listening } from '../kit/agent-http';
import { startGateway, type TestGateway } from '../kit/gateway';

const key: SigningKey = { keyId: 'k1', secret: Buffer.alloc(32, 9) };

/**
 * The agent's path to the broker, switched by the test: `open` forwards; `hold` drops
 * every byte both ways and keeps the connections (a broker that froze, a path that
 * loses packets: nothing the agent publishes is acknowledged, and it does not know
 * yet); `cut` closes them and refuses new ones until `open` again. The broker sees
 * the cut as a connection lost without DISCONNECT and publishes the Last Will.
 */
interface Gate {
  url: string;
  open(): void;
  hold(): void;
  cut(): void;
  close(): Promise<void>;
}

async function startGate(brokerUrl: string): Promise<Gate> {
  const target = new URL(brokerUrl);
  let mode: 'open' | 'hold' | 'cut' = 'open';
  const sockets = new Set<Socket>();
  const track = (s: Socket): void => {
    sockets.add(s);
    s.once('close', () => sockets.delete(s));
    s.on('error', () => undefined);
  };
  const server = createServer((client) => {
    track(client);
    if (mode !== 'open') return void client.destroy();
    const upstream = tcpConnect(Number(target.port), target.hostname);
    track(upstream);
    client.on('data', (chunk: Buffer) => {
      if (mode === 'open') upstream.write(chunk);
    });
    upstream.on('data', (chunk: Buffer) => {
      if (mode === 'open') client.write(chunk);
    });
    client.once('close', () => upstream.destroy());
    upstream.once('close', () => client.destroy());
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  return {
    url: `mqtt://127.0.0.1:${port}`,
    open: () => void (mode = 'open'),
    hold: () => void (mode = 'hold'),
    cut: () => {
      mode = 'cut';
      for (const s of sockets) s.destroy();
    },
    close: () =>
      new Promise<void>((resolve) => {
        for (const s of sockets) s.destroy();
        server.close(() => resolve());
      }),
  };
}

/**
 * A status the broker never acknowledged (the connection went silent under it), then a
 * status change while the agent was cut off. mqtt.js keeps an unacknowledged QoS 1
 * publish and sends it again on reconnect, before anything else, and emits `connect`,
 * on which the agent publishes its current status, only once the broker has
 * acknowledged it: every subscriber got the superseded state first. Signed, a gateway
 * took it too: its (epochMs, seq) is newer than anything that gateway had heard, so the
 * replay guard passes it, and the backend was taken out of rotation (or put back in)
 * until the current status came.
 */
describe.each(brokerTargets().map((t) => [t.name, t] as const))(
  'agent status after a reconnect: %s',
  (_name, target) => {
    let broker: { url: string; close(): Promise<void> };
    let gate: Gate | undefined;
    let agent: Agent | undefined;
    let gw: TestGateway | undefined;
    let app: Listening | undefined;
    let sub: MqttClient | undefined;
    let prefix = '';
    const backendId = 'api-st';

    beforeAll(async () => {
      broker = await target.start();
    });
    afterAll(async () => {
      await broker.close();
    });
    afterEach(async () => {
      await agent?.stop({ graceMs: 0 });
      agent = undefined;
      await gw?.close();
      gw = undefined;
      await app?.close();
      app = undefined;
      await gate?.close();
      gate = undefined;
      if (sub) {
        // The shared Mosquitto keeps retained messages: leave none behind.
        await clearRetained(sub, [
          topicFor(prefix, backendId, 'status'),
          topicFor(prefix, backendId, 'register'),
        ]);
        await endClient(sub, true);
        sub = undefined;
      }
    });

    const statusesOf = (box: ReturnType<typeof inbox>, from: number): StatusMessage[] =>
      box.received
        .slice(from)
        .map((r) => r.message)
        .filter((m): m is StatusMessage => m.kind === 'status' && m.will !== true);

    it.each<[string, { before: BackendState; unacked: BackendState; current: BackendState }]>([
      [
        'draining unacknowledged, back online while cut off',
        { before: 'online', unacked: 'draining', current: 'online' },
      ],
      [
        'online unacknowledged, draining again while cut off',
        { before: 'draining', unacked: 'online', current: 'draining' },
      ],
    ])(
      '%s: subscribers and the gateway hear the current status first, never the superseded one',
      async (_label, { before, unacked, current }) => {
        prefix = uniquePrefix('agent-status-reconnect');
        sub = await connectClient(broker.url);
        const box = inbox(sub, prefix, [key]);
        await sub.subscribeAsync(subscriptionFilter(prefix), { qos: 1 });
        app = await listen((_req, res) => res.end('ok'));
        gw = await startGateway({
          backends: [{ id: backendId, url: app.url }],
          broker: { url: broker.url },
          topicPrefix: prefix,
          keys: [key],
          healthCheck: false,
        });
        gate = await startGate(broker.url);
        const a = createAgent({
          backendId,
          broker: { url: gate.url, reconnectPeriodMs: 100 },
          prefix,
          intervalMs: 200,
          cgroup: false,
          signingKey: key,
        });
        agent = a;
        const warnings: string[] = [];
        a.on('warning', (w) => warnings.push(w));
        a.on('error', () => undefined); // the refused reconnects while cut off
        let connects = 0;
        a.on('connect', () => connects++);
        await a.start();
        await until(() => connects === 1, 5000, 'the agent to connect');
        if (before === 'draining') await a.drain();
        const g = gw;
        // The condition the gateway routes by: `healthy`, or `draining` (out of rotation).
        const routed = (state: BackendState): string =>
          state === 'draining' ? 'draining' : 'healthy';
        await until(
          () => g.backend(backendId).reportFresh && g.backend(backendId).state === routed(before),
          5000,
          `the gateway to hear ${before}`,
        );
        await box.waitFor(
          (r) => r.message.kind === 'status' && r.message.state === before,
          5000,
          `status ${before}`,
        );

        // The connection goes silent: the change is published, and never acknowledged.
        gate.hold();
        if (unacked === 'draining') await a.drain();
        else await a.undrain();
        expect(a.state).toBe(unacked);
        expect(a.connected).toBe(true);
        gate.cut();
        await until(() => !a.connected, 5000, 'the agent to notice the cut');
        // Changed again while cut off: this is the status that must win.
        if (current === 'draining') await a.drain();
        else await a.undrain();
        expect(a.state).toBe(current);
        await box.waitFor(
          (r) => r.message.kind === 'status' && r.message.will === true,
          5000,
          'the Last Will of the cut connection',
        );
        // The unacknowledged change never reached anyone.
        expect(statusesOf(box, 0).at(-1)?.state).toBe(before);
        const fromMsg = box.received.length;
        const fromEvent = g.events.length;

        gate.open();
        await until(() => connects === 2, 5000, 'the agent to reconnect');
        const since = (pred: (m: Message) => boolean): Received | undefined =>
          box.received.slice(fromMsg).find((r) => pred(r.message));
        await until(
          () => since((m) => m.kind === 'status' && m.state === current) !== undefined,
          5000,
          `the current status (${current})`,
        );
        // Two reports after it: anything replayed would have come by then.
        const seen = box.received.length;
        await until(
          () => box.received.slice(seen).filter((r) => r.message.kind === 'metrics').length >= 2,
          5000,
          'reports after the reconnect',
        );
        const statuses = statusesOf(box, fromMsg);
        expect(statuses.map((s) => s.state)).toEqual([current]);
        expect(box.rejected).toEqual([]);
        // The gateway never took the superseded state either.
        expect(g.backend(backendId).state).toBe(routed(current));
        const changes = g.events
          .slice(fromEvent)
          .filter((e) => e.name === 'backend-draining' || e.name === 'backend-up')
          .map((e) => e.name);
        expect(changes).toEqual([]);
        expect(g.events.filter((e) => e.name === 'invalid-message')).toEqual([]);
        // Dropping the superseded publish is no failure to report.
        expect(warnings.filter((w) => /publish failed/.test(w))).toEqual([]);
      },
    );

    it("a stop whose publishes a lost connection left unacknowledged: sent again, never dropped (the registration is cleared, the status is 'agent stopped')", async () => {
      prefix = uniquePrefix('agent-stop-reconnect');
      sub = await connectClient(broker.url);
      const box = inbox(sub, prefix, [key]);
      const registerTopic = topicFor(prefix, backendId, 'register');
      let cleared = false;
      sub.on('message', (topic, payload) => {
        if (topic === registerTopic && payload.length === 0) cleared = true;
      });
      await sub.subscribeAsync(subscriptionFilter(prefix), { qos: 1 });
      gate = await startGate(broker.url);
      const g = gate;
      const a = createAgent({
        backendId,
        broker: { url: g.url, reconnectPeriodMs: 100 },
        prefix,
        intervalMs: 200,
        cgroup: false,
        signingKey: key,
        advertiseUrl: 'http://127.0.0.1:9/',
      });
      agent = a;
      a.on('error', () => undefined); // the refused reconnects while cut off
      await a.start();
      await box.waitFor((r) => r.message.kind === 'register', 5000, 'the registration');
      // stop() leaves once its grace is over: the connection goes silent under its first
      // publish (the registration cleared), then is cut, then comes back.
      let leaving = false;
      a.on('state', (state) => {
        if (state !== 'offline') return;
        g.hold();
        leaving = true;
      });
      const stopped = a.stop({ graceMs: 1500 });
      const client = (a as unknown as { client: MqttClient }).client;
      await until(() => leaving, 5000, 'the grace to end');
      await until(
        () => Object.keys(client.outgoing).length > 0,
        5000,
        'a publish of stop() unacknowledged',
      );
      g.cut();
      await until(() => !client.connected, 5000, 'the agent to notice the cut');
      g.open();
      await stopped;
      // Before: the lost connection withdrew it, and the registration stayed retained (a
      // gateway starting later added a backend that is gone).
      await until(() => cleared, 5000, 'the registration cleared');
      await box.waitFor(
        (r) =>
          r.message.kind === 'status' &&
          r.message.will !== true &&
          r.message.state === 'offline' &&
          r.message.reason === 'agent stopped',
        5000,
        "the status 'agent stopped'",
      );
    });
  },
);
