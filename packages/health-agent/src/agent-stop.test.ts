import { createServer, type AddressInfo, type Server, type Socket } from 'node:net';
import mqttPacket, { type Packet } from 'mqtt-packet';
import { rawHttpApp, within } from '../../../test/kit/agent-http';
import { createAgent, type Agent } from './agent';

/**
 * A tiny MQTT broker on port 0: answers CONNECT with CONNACK. 'silent' then
 * takes every packet and answers nothing more; 'acks' answers every QoS 1
 * PUBLISH with PUBACK and closes on DISCONNECT; 'loses the first ack' never
 * acks the first QoS 1 PUBLISH (the connect-time status) but acks the rest.
 */
async function fakeBroker(mode: 'silent' | 'acks' | 'loses the first ack'): Promise<{
  url: string;
  packets: Packet[];
  close(): Promise<void>;
}> {
  const packets: Packet[] = [];
  const sockets = new Set<Socket>();
  const server: Server = createServer((socket) => {
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket));
    socket.on('error', () => undefined);
    const parser = mqttPacket.parser({ protocolVersion: 4 });
    let lost = mode !== 'loses the first ack';
    parser.on('packet', (p: Packet) => {
      packets.push(p);
      if (p.cmd === 'connect') {
        socket.write(mqttPacket.generate({ cmd: 'connack', returnCode: 0, sessionPresent: false }));
      } else if (!lost && p.cmd === 'publish' && p.qos === 1) {
        lost = true;
      } else if (mode !== 'silent' && p.cmd === 'publish' && p.qos === 1) {
        socket.write(mqttPacket.generate({ cmd: 'puback', messageId: p.messageId }));
      } else if (mode !== 'silent' && p.cmd === 'disconnect') {
        socket.end();
      }
    });
    socket.on('data', (d: Buffer) => parser.parse(d));
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  const { port } = server.address() as AddressInfo;
  return {
    url: `mqtt://127.0.0.1:${port}`,
    packets,
    close: () =>
      new Promise<void>((r) => {
        for (const s of sockets) s.destroy();
        server.close(() => r());
      }),
  };
}

const offlinePublished = (packets: Packet[]): boolean =>
  packets.some((p) => p.cmd === 'publish' && p.retain && String(p.payload).includes('"offline"'));

/**
 * Runs `body` with an agent connected to a fake broker in `mode`; then closes
 * the broker and gives a stop() that hangs a second, so a hang fails, never stalls.
 */
async function withAgent(
  mode: Parameters<typeof fakeBroker>[0],
  body: (agent: Agent, packets: Packet[]) => Promise<void>,
): Promise<void> {
  const broker = await fakeBroker(mode);
  const agent = createAgent({
    backendId: 'stop-test',
    broker: { url: broker.url },
    cgroup: false,
    earlyRise: 0,
  });
  agent.on('warning', () => undefined);
  try {
    await agent.start();
    if (!agent.connected) await new Promise<void>((r) => agent.once('connect', () => r()));
    await body(agent, broker.packets);
  } finally {
    await broker.close();
    await within(agent.stop({ graceMs: 0 }), 1000);
  }
}

describe('agent.stop() and the broker', () => {
  it('resolves within its bound when the broker never acks (forced end, no DISCONNECT)', () =>
    withAgent('silent', async (agent, packets) => {
      const started = performance.now();
      expect(
        await within(
          agent.stop({ graceMs: 0 }).then(() => 'stopped'),
          3000,
        ),
      ).toBe('stopped');
      // The bound with no grace is 300 ms (stopFlushMs); some slack for a busy machine.
      expect(performance.now() - started).toBeLessThan(1500);
      expect(agent.connected).toBe(false);
      // It did try to say offline; the broker never took it, so no clean DISCONNECT.
      expect(offlinePublished(packets)).toBe(true);
      expect(packets.some((p) => p.cmd === 'disconnect')).toBe(false);
    }));

  it('still leaves cleanly (offline acked, DISCONNECT) from a broker that acks', () =>
    withAgent('acks', async (agent, packets) => {
      await agent.stop({ graceMs: 0 });
      expect(offlinePublished(packets)).toBe(true);
      expect(packets.some((p) => p.cmd === 'disconnect')).toBe(true);
    }));

  it('resolves within its bound when an earlier QoS 1 publish is never acked (clean end pending)', () =>
    withAgent('loses the first ack', async (agent, packets) => {
      expect(
        await within(
          agent.stop({ graceMs: 0 }).then(() => 'stopped'),
          3000,
        ),
      ).toBe('stopped');
      // The offline status was acked, but mqtt.js's clean end waits for its
      // outgoing queue to empty, which it never does: the end is forced.
      expect(offlinePublished(packets)).toBe(true);
      expect(agent.connected).toBe(false);
    }));
});

/**
 * A raw TCP app: a plain GET of its tracker endpoint gets a snapshot, the rise
 * watch (`?rise=`) and every other path a `101 Switching Protocols` nobody
 * asked for, the connection kept open as after a real switch.
 */
async function switchingTracker(): Promise<{
  url: string;
  watches: () => number;
  close(): Promise<void>;
}> {
  const snap = JSON.stringify({
    inFlight: 1,
    queued: 0,
    rps: 1,
    errorRate: 0,
    windowMs: 1000,
    completed: 1,
  });
  let watches = 0;
  const app = await rawHttpApp((path) => {
    if (path.startsWith('/stats?')) watches++;
    return path === '/stats'
      ? `HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: ${snap.length}\r\n\r\n${snap}`
      : 'HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\nConnection: Upgrade\r\n\r\n';
  });
  return { ...app, watches: () => watches };
}

/** Polls a condition every 5 ms on real I/O; false after `ms`. */
async function eventually(cond: () => boolean, ms = 5000): Promise<boolean> {
  const deadline = performance.now() + ms;
  while (!cond()) {
    if (performance.now() > deadline) return false;
    await new Promise((r) => setTimeout(r, 5));
  }
  return true;
}

// An unasked-for 101 left httpGet pending for good (http-get.ts): the tick
// holding the probe never ended, so the scheduler skipped every later one
// (status still `online`, no report), and stop() waited forever on the
// early-report watch holding the tracker's 101.
describe('the agent and an app that answers 101 Switching Protocols', () => {
  it('keeps reporting every interval while its probe is answered 101, the backend down', async () => {
    const broker = await fakeBroker('acks');
    const app = await switchingTracker();
    const agent = createAgent({
      backendId: 'probe-101',
      broker: { url: broker.url },
      intervalMs: 100,
      probe: { url: `${app.url}/healthz` },
      cgroup: false,
    });
    agent.on('warning', () => undefined);
    const verdicts: string[] = [];
    agent.on('sample', (r, { published }) => {
      if (published) verdicts.push(r.health.verdict);
    });
    try {
      await agent.start();
      expect(await eventually(() => verdicts.length >= 3)).toBe(true);
      expect(verdicts.slice(0, 3)).toEqual(['down', 'down', 'down']);
    } finally {
      await within(agent.stop({ graceMs: 0 }), 3000);
      await broker.close();
      await app.close();
    }
  });

  it('stop() ends while the tracker answers the early-report watch with 101', async () => {
    const broker = await fakeBroker('acks');
    const app = await switchingTracker();
    const agent = createAgent({
      backendId: 'watch-101',
      broker: { url: broker.url },
      // The watch waits out the gap after each report: with reports every
      // 100 ms and the default gap, it would never start.
      intervalMs: 1000,
      queue: { source: 'tracker', url: `${app.url}/stats` },
      earlyRise: 1,
      earlyMinGapMs: 10,
      cgroup: false,
    });
    agent.on('warning', () => undefined);
    try {
      await agent.start();
      // The watch starts once a report with a queue block went out.
      expect(await eventually(() => app.watches() >= 1)).toBe(true);
      expect(
        await within(
          agent.stop({ graceMs: 0 }).then(() => 'stopped'),
          3000,
        ),
      ).toBe('stopped');
    } finally {
      await within(agent.stop({ graceMs: 0 }), 3000);
      await broker.close();
      await app.close();
    }
  });
});
