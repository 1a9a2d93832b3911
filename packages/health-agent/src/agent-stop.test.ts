import { createServer, type AddressInfo, type Server, type Socket } from 'node:net';
import mqttPacket, { type Packet } from 'mqtt-packet';
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

/** `p`'s value, or 'still pending' after `ms`: a hang fails the test instead of stalling it. */
async function within<T>(p: Promise<T>, ms: number): Promise<T | 'still pending'> {
  let timer: NodeJS.Timeout | undefined;
  try {
    return await Promise.race([
      p,
      new Promise<'still pending'>((r) => {
        timer = setTimeout(() => r('still pending'), ms);
      }),
    ]);
  } finally {
    clearTimeout(timer);
  }
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
