/**
 * An ejection ends early on a restart, not on a verdict toggled by the backend's own
 * agent (health/outlier-detector.ts), through a real broker: a backend answering every
 * request with a 500, its agent signing `down` then `up` within one run, stays ejected.
 * Before, each toggle ended its ejection: at 40 req/s it was ejected 6 times in 15 s,
 * each time for ~0.5 s instead of 30 s and up, and failed 30 client requests. A restart
 * claimed by a new agent run is believed once; failing again before one success, the
 * backend serves its next ejection in full, whatever its agent signs.
 */
import { randomBytes } from 'node:crypto';
import { createEncoder, type Encoder, type SigningKey } from '@loadwise/protocol';
import type { MqttClient } from 'mqtt';
import { brokerTargets, connectClient, endClient, uniquePrefix } from '../kit/brokers';
import { send, startBackend, type TestServer } from '../kit/http';
import { startLocalGateway, type TestGateway } from '../kit/gateway';

const key: SigningKey & { backends: string[] } = {
  keyId: 'k-evil',
  secret: randomBytes(32),
  backends: ['evil'],
};

async function until(check: () => boolean, what: string, timeoutMs = 5_000): Promise<void> {
  const start = Date.now();
  while (!check()) {
    if (Date.now() - start > timeoutMs) throw new Error(`not reached: ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

/**
 * Long enough for the detector to look at the ejected backend twice: it re-reads an
 * ejected backend's health flags every 250 ms (RECOVERY_CHECK_MS, health/outlier-detector.ts).
 */
const twoLooks = (): Promise<void> => new Promise((r) => setTimeout(r, 2 * 250 + 50));

describe.each(brokerTargets())('a backend ejected for 500s, on $name', (target) => {
  let broker: { url: string; close(): Promise<void> };
  let a: TestServer;
  let b: TestServer;
  let evil: TestServer;
  let gw: TestGateway;
  let client: MqttClient;
  let prefix: string;

  beforeAll(async () => {
    broker = await target.start();
    a = await startBackend('a');
    b = await startBackend('b');
    evil = await startBackend('evil', (_req, res) => {
      res.statusCode = 500;
      res.end('err');
    });
    prefix = uniquePrefix('eject');
    gw = await startLocalGateway({
      backends: [
        { id: 'a', url: a.url },
        { id: 'b', url: b.url },
        { id: 'evil', url: evil.url },
      ],
      broker: broker.url,
      topicPrefix: prefix,
      keys: [key],
      strategy: 'round-robin',
      outlier: { consecutiveFailures: 3 },
    });
    await gw.lb.ready();
    client = await connectClient(broker.url);
  });
  afterAll(async () => {
    await endClient(client);
    await gw.close();
    await Promise.all([a.close(), b.close(), evil.close()]);
    await broker.close();
  });

  async function verdict(enc: Encoder, v: 'up' | 'down'): Promise<void> {
    const m = enc.metrics({
      intervalMs: 1_000,
      state: 'online',
      host: { cpuUtilization: 0.1, memoryUtilization: 0.1, memoryAvailableBytes: 1e9 },
      health: v === 'up' ? { verdict: v } : { verdict: v, reason: 'restarting' },
    });
    await client.publishAsync(m.topic, m.payload, { qos: 1 });
    await until(() => gw.backend('evil').lastReport?.verdict === v, `verdict ${v}`);
  }

  /** Down, seen while ejected, then up, seen while ejected. */
  async function downAndUp(enc: Encoder): Promise<void> {
    await verdict(enc, 'down');
    await twoLooks();
    await verdict(enc, 'up');
    await twoLooks();
  }

  /** Requests until evil is ejected; returns the 500s the clients got. */
  async function untilEjected(): Promise<number> {
    let failed = 0;
    for (let i = 0; i < 30 && gw.backend('evil').state !== 'ejected'; i++) {
      if ((await send(`${gw.url}/x`)).status === 500) failed++;
    }
    expect(gw.backend('evil').state).toBe('ejected');
    return failed;
  }

  /** Nine requests, three rounds of round-robin: none reaches evil. */
  async function noneToEvil(): Promise<void> {
    const statuses = [];
    for (let i = 0; i < 9; i++) statuses.push((await send(`${gw.url}/x`)).status);
    expect(statuses).toEqual(Array(9).fill(200));
  }

  it('stays ejected through down/up toggles of one agent run; a new run is believed once', async () => {
    const run1 = createEncoder({ backendId: 'evil', prefix, key });
    await verdict(run1, 'up');
    expect(await untilEjected()).toBe(3);

    for (let i = 0; i < 3; i++) {
      await downAndUp(run1);
      expect(gw.backend('evil').state).toBe('ejected');
    }
    await noneToEvil();

    // Another agent run: a restart, as far as the gateway can tell. Back at once.
    await downAndUp(createEncoder({ backendId: 'evil', prefix, key }));
    expect(gw.backend('evil').state).not.toBe('ejected');
    // Failing as before, without a single success: ejected again, for 60 s.
    expect(await untilEjected()).toBe(3);
    const ejected = gw.events.filter((e) => e.name === 'backend-ejected').at(-1);
    expect(ejected?.data).toMatchObject({ id: 'evil', durationMs: 60_000 });
    // Its next claimed restart is not believed.
    await downAndUp(createEncoder({ backendId: 'evil', prefix, key }));
    expect(gw.backend('evil').state).toBe('ejected');
    await noneToEvil();
    expect(gw.backend('evil')).toMatchObject({ ejections: 2, failuresTotal: 6 });
  }, 20_000);
});
