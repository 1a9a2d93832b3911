/**
 * Proof: a backend reporting high load gets a smaller share; when it
 * recovers, its share returns.
 *
 * Three equal backends (4 slots x 20 ms = 200 req/s each). The load is 6
 * closed-loop clients, so the fleet's 12 slots are never all busy. Then
 * another client the gateway cannot see keeps 12 requests running on `a`
 * (its 4 slots busy, 8 queued: a new request there waits ~60 ms instead of
 * 20 ms). Its agent reports the queue; the gateway must move traffic to b and
 * c, which have 8 free slots between them for 6 clients.
 *
 * Expected shares of `a`: about 1/3 before (asserted 0.08..0.55: with free
 * slots everywhere the split is uneven, but nobody is starved), at most 0.10
 * while it is loaded (ideal 0: b and c can take everything; measured 0-0.02),
 * and back above 0.15 once its queue is empty again.
 */
import { brokerTargets, uniquePrefix } from '../kit/brokers';
import { eventually, startFleet, type Fleet } from '../kit/fleet';
import { startGateway, type TestGateway } from './gateway';
import { fire, failed, shares } from './load';

const REQUESTS = 300;
const CONCURRENCY = 6;

describe.each(brokerTargets())('load share on $name', (target) => {
  let broker: { url: string; close(): Promise<void> };
  let fleet: Fleet | undefined;
  let gw: TestGateway | undefined;

  beforeAll(async () => {
    broker = await target.start();
    const prefix = uniquePrefix('share');
    fleet = await startFleet({
      brokerUrl: broker.url,
      prefix,
      backends: ['a', 'b', 'c'].map((id) => ({ id, slots: 4, serviceMs: 20 })),
    });
    gw = await startGateway({
      backends: fleet.backendConfig(),
      broker: broker.url,
      topicPrefix: prefix,
      healthCheck: { path: '/health', intervalMs: 1000 },
    });
    await eventually(
      () => gw!.snapshot().backends.every((b) => b.reportFresh),
      15_000,
      'fresh reports',
    );
  });

  afterAll(async () => {
    await gw?.close();
    await fleet?.close();
    await broker?.close();
  });

  it('moves traffic away from a backend whose agent reports a full queue, and back', async () => {
    const url = `${gw!.url}/work`;
    const before = await fire({ url, total: REQUESTS, concurrency: CONCURRENCY });
    expect(failed(before)).toBe(0);
    const s0 = shares(before);
    for (const id of ['a', 'b', 'c']) {
      expect(s0[id]).toBeGreaterThan(0.08);
      expect(s0[id]).toBeLessThan(0.55);
    }

    await fleet!.get('a').configure({ hiddenInFlight: 12 });
    await eventually(
      () => {
        const a = gw!.backend('a');
        return a.reportFresh && (a.lastReport?.queued ?? 0) >= 6;
      },
      10_000,
      'the gateway sees a full queue on a',
    );
    const loaded = await fire({ url, total: REQUESTS, concurrency: CONCURRENCY });
    expect(failed(loaded)).toBe(0);
    const s1 = shares(loaded);
    expect(s1['a'] ?? 0).toBeLessThanOrEqual(0.1);

    await fleet!.get('a').configure({ hiddenInFlight: 0 });
    await eventually(
      () => {
        const a = gw!.backend('a');
        return a.reportFresh && a.lastReport?.queued === 0 && a.lastReport.inFlight === 0;
      },
      10_000,
      'the gateway sees a idle again',
    );
    // The gateway's own latency memory of `a` decays over seconds: give the
    // share a few rounds to come back rather than a timing threshold.
    let s2: Record<string, number> = {};
    await eventually(
      async () => {
        const after = await fire({ url, total: 150, concurrency: CONCURRENCY });
        expect(failed(after)).toBe(0);
        s2 = shares(after);
        return (s2['a'] ?? 0) > 0.15;
      },
      20_000,
      'a gets its share back',
    );
    expect(s2['a']).toBeGreaterThan(0.15);
  }, 60_000);
});
