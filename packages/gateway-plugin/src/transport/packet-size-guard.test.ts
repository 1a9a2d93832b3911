/**
 * The embedded broker's packet limit, with real sockets: a client announcing
 * a packet over the limit is disconnected after its header, before the body
 * is read; everyone else keeps publishing and receiving.
 */
import { connect as netConnect } from 'node:net';
import { connect, type MqttClient } from 'mqtt';
import { startEmbeddedBroker, type EmbeddedBroker } from './embedded-broker';

function client(url: string): Promise<MqttClient> {
  const c = connect(url, { reconnectPeriod: 0 });
  return new Promise((resolve, reject) => {
    c.once('connect', () => resolve(c));
    c.once('error', reject);
  });
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

  it('reads the length field across chunk boundaries', async () => {
    const before = tooLarge.length;
    // A raw CONNECT, then a PUBLISH header whose 3-byte length (2 MiB) arrives one byte at a time.
    const s = netConnect(broker.port, '127.0.0.1');
    await new Promise((r) => s.once('connect', r));
    const id = Buffer.from('raw');
    const vh = Buffer.concat([
      Buffer.from([0, 4]),
      Buffer.from('MQTT'),
      Buffer.from([4, 2, 0, 30, 0, id.length]),
      id,
    ]);
    s.write(Buffer.concat([Buffer.from([0x10, vh.length]), vh]));
    const closed = new Promise((r) => s.once('close', r));
    s.on('error', () => undefined);
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
    await expect(startEmbeddedBroker({ maxPacketBytes: 100 })).rejects.toThrow(RangeError);
  });
});
