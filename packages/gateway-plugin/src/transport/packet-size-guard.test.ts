/**
 * The embedded broker's packet limit, with real sockets: a client announcing
 * a packet over the limit is disconnected after its header, before the body
 * is read; everyone else keeps publishing and receiving.
 */
import { connect as netConnect, createServer, type AddressInfo, type Socket } from 'node:net';
import { connect, type MqttClient } from 'mqtt';
import { startEmbeddedBroker, type EmbeddedBroker } from './embedded-broker';
import {
  MAX_SHARE_OVER_BUDGET,
  MAX_TOTAL_UNREAD_BYTES,
  PacketSizeGuard,
  UnreadBudget,
} from './packet-size-guard';

function client(url: string): Promise<MqttClient> {
  const c = connect(url, { reconnectPeriod: 0 });
  return new Promise((resolve, reject) => {
    c.once('connect', () => resolve(c));
    c.once('error', reject);
  });
}

/** A raw TCP client that has sent an MQTT 3.1.1 CONNECT (clean session, keep-alive 30 s). */
async function rawConnect(port: number, clientId: string): Promise<Socket> {
  const s = netConnect(port, '127.0.0.1');
  await new Promise((r) => s.once('connect', r));
  s.on('error', () => undefined); // ECONNRESET when the broker hangs up
  const id = Buffer.from(clientId);
  const vh = Buffer.concat([
    Buffer.from([0, 4]),
    Buffer.from('MQTT'),
    Buffer.from([4, 2, 0, 30, 0, id.length]),
    id,
  ]);
  s.write(Buffer.concat([Buffer.from([0x10, vh.length]), vh]));
  return s;
}

const end = (c: MqttClient): Promise<void> => new Promise((r) => c.end(true, {}, () => r()));

describe('embedded broker packet limit', () => {
  let broker: EmbeddedBroker;
  const tooLarge: number[] = [];

  beforeAll(async () => {
    broker = await startEmbeddedBroker({
      maxPacketBytes: 4096,
      onPacketTooLarge: (bytes) => tooLarge.push(bytes),
    });
  });
  afterAll(() => broker.close());

  it('disconnects a client whose packet header announces more than the limit, and only it', async () => {
    const sub = await client(broker.url);
    const got: string[] = [];
    sub.on('message', (topic) => got.push(topic));
    await sub.subscribeAsync('g/#', { qos: 1 });

    const big = await client(broker.url);
    const closed = new Promise<void>((r) => big.once('close', () => r()));
    big.on('error', () => undefined); // ECONNRESET when the broker hangs up
    await big.publishAsync('g/small', 'x'.repeat(3000), { qos: 1 });
    big.publish('g/big', Buffer.alloc(8 * 1024 * 1024, 1), { qos: 0 });
    await closed;
    // Counted once, with the size read off the header (a lower bound: the
    // guard stops at the first length byte that crosses the limit).
    expect(tooLarge).toHaveLength(1);
    expect(tooLarge[0]).toBeGreaterThan(4096);

    const other = await client(broker.url);
    await other.publishAsync('g/after', 'ok', { qos: 1 });
    while (!got.includes('g/after')) await new Promise((r) => setTimeout(r, 10));
    expect(got).toEqual(['g/small', 'g/after']);
    await Promise.all([end(other), end(sub), end(big)]);
  });

  it('routes the whole packets a client sent before its oversized one', async () => {
    const sub = await client(broker.url);
    const got: string[] = [];
    sub.on('message', (topic) => got.push(topic));
    await sub.subscribeAsync('before/#', { qos: 1 });

    // A raw client: CONNECT, wait for the CONNACK, then retained QoS 1
    // PUBLISHes and the header of an oversized one.
    const s = await rawConnect(broker.port, 'burst');
    await new Promise((r) => s.once('data', r)); // the CONNACK
    s.resume();
    const closed = new Promise((r) => s.once('close', r));
    let packetId = 0;
    const publish = (topic: string): Buffer => {
      const t = Buffer.from(topic);
      const id = ++packetId;
      const body = Buffer.concat([
        Buffer.from([0, t.length]),
        t,
        Buffer.from([id >> 8, id & 0xff]),
        Buffer.from('x'),
      ]);
      return Buffer.concat([Buffer.from([0x33, body.length]), body]);
    };
    const topics = Array.from({ length: 40 }, (_, i) => `before/${i}`);
    // Separate writes: aedes is still handling the first batch when the
    // next ones arrive, so they wait in the guard's buffer.
    for (let i = 0; i < topics.length; i += 10) {
      s.write(Buffer.concat(topics.slice(i, i + 10).map(publish)));
    }
    // 0x30, then Remaining Length 2 MiB: 0x80 0x80 0x80 0x01.
    s.write(Buffer.from([0x30, 0x80, 0x80, 0x80, 0x01]));
    await closed;
    const sentinel = await client(broker.url);
    await sentinel.publishAsync('before/end', 'ok', { qos: 1 });
    while (!got.includes('before/end')) await new Promise((r) => setTimeout(r, 10));
    expect(got).toEqual([...topics, 'before/end']);
    await Promise.all([end(sentinel), end(sub)]);
  });

  it('reads the length field across chunk boundaries', async () => {
    const before = tooLarge.length;
    // A raw CONNECT, then a PUBLISH header whose 3-byte length (2 MiB) arrives one byte at a time.
    const s = await rawConnect(broker.port, 'raw');
    const closed = new Promise((r) => s.once('close', r));
    // Read what the broker sends (its CONNACK), or 'close' waits for the unread data.
    s.resume();
    for (const byte of [0x30, 0x80, 0x80, 0x01]) {
      s.write(Buffer.from([byte]));
      await new Promise((r) => setTimeout(r, 20));
    }
    await closed;
    expect(tooLarge.length).toBe(before + 1);
  });

  it('rejects a limit below 1 KiB', async () => {
    await expect(startEmbeddedBroker({ maxPacketBytes: 100 })).rejects.toMatchObject({
      code: 'LW_GW_INVALID_OPTION',
    });
  });
});

describe('what a client leaves unread', () => {
  /** A guard on the server's side of a loopback connection whose client never reads. */
  async function stalledGuard(
    budget?: UnreadBudget,
  ): Promise<{ guard: PacketSizeGuard; socket: Socket; close(): void }> {
    const server = createServer();
    const accepted = new Promise<Socket>((r) => server.once('connection', r));
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    const client = netConnect((server.address() as AddressInfo).port, '127.0.0.1');
    client.pause();
    client.on('error', () => undefined);
    const socket = await accepted;
    socket.on('error', () => undefined);
    const guard = new PacketSizeGuard(socket, 1 << 20, () => undefined, budget);
    guard.on('error', () => undefined);
    return {
      guard,
      socket,
      close() {
        guard.destroy();
        client.destroy();
        server.close();
      },
    };
  }

  /** Writes 64 KiB at a time until the kernel takes no more: the socket then queues. */
  async function fillKernel(guard: PacketSizeGuard, socket: Socket): Promise<void> {
    const block = Buffer.alloc(64 * 1024, 1);
    while (socket.writableLength === 0) {
      guard.write(block);
      await new Promise((r) => setImmediate(r));
    }
  }

  /** Pieces the socket queues, each an object of its own (Node's writable state). */
  const queuedPieces = (socket: Socket): number =>
    (socket as unknown as { _writableState: { buffered: unknown[] } })._writableState.buffered
      .length;

  it('queues what aedes writes in small pieces as few buffers, not an object a piece', async () => {
    const t = await stalledGuard();
    try {
      await fillKernel(t.guard, t.socket);
      // A QoS 0 PUBLISH of one byte, as aedes writes it: five pieces of 1-2 bytes.
      for (let i = 0; i < 20_000; i++)
        for (const piece of [[0x30], [6], [0, 1], [0x61], [0x78]])
          t.guard.write(Buffer.from(piece));
      await new Promise((r) => setImmediate(r));
      expect(t.socket.destroyed).toBe(false);
      // Before: 100,000 pieces queued, about 95 bytes of heap each for 1.4 bytes of data.
      expect(queuedPieces(t.socket)).toBeLessThan(4);
    } finally {
      t.close();
    }
  });

  it("disconnects a client holding more than its share once the broker's clients hold too much", async () => {
    const budget = new UnreadBudget();
    const small = await stalledGuard(budget);
    const large = await stalledGuard(budget);
    try {
      // One whose kernel buffers still take what comes, one whose are full.
      await fillKernel(large.guard, large.socket);
      // Other clients already hold the broker's budget.
      budget.bytes += MAX_TOTAL_UNREAD_BYTES;
      small.guard.write(Buffer.alloc(1024));
      large.guard.write(Buffer.alloc(MAX_SHARE_OVER_BUDGET));
      await new Promise((r) => setImmediate(r));
      expect([small.socket.destroyed, large.socket.destroyed]).toEqual([false, true]);
      // What the disconnected one held no longer counts.
      budget.bytes -= MAX_TOTAL_UNREAD_BYTES;
      expect(budget.bytes).toBeLessThan(MAX_SHARE_OVER_BUDGET);
    } finally {
      small.close();
      large.close();
    }
  });
});
