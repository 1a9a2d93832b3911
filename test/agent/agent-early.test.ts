import express from 'express';
import type { MqttClient } from 'mqtt';
import { subscriptionFilter } from '@loadwise/protocol';
import { trackRequests, type TrackRequestsOptions } from '@loadwise/health-agent';
import { startEmbeddedBroker, type EmbeddedBroker } from '@loadwise/gateway-plugin';
import { connectClient, endClient, uniquePrefix } from '../kit/brokers';
import { fire, listen, until, type InFlightRequest, type Listening } from '../kit/agent-http';
import { inbox, metricsOf, spawnAgent, type AgentProcess } from '../kit/agent-cli';

const STATS_PATH = '/.well-known/loadwise/stats';

/**
 * Early reports end to end: the real agent CLI watching a real tracked
 * backend over HTTP, publishing through the embedded broker. A jump of the
 * backend's outstanding requests right after a scheduled report is published
 * at once, marked `early`, between that report and the next one (5 s later).
 */
describe('loadwise-agent early reports', () => {
  let broker: EmbeddedBroker;
  let client: MqttClient | undefined;
  let agent: AgentProcess | undefined;
  let server: Listening | undefined;
  const reqs: InFlightRequest[] = [];

  beforeAll(async () => {
    broker = await startEmbeddedBroker();
  });
  afterEach(async () => {
    await agent?.kill();
    for (const r of reqs.splice(0)) r.abort();
    await server?.close();
    if (client) await endClient(client, true);
  });
  afterAll(async () => {
    await broker.close();
  });

  /**
   * A tracked backend (`trackerOpts`, GET /work held until the test ends), a subscriber on
   * a prefix of its own, and the agent CLI watching the tracker: id, interval and rise.
   */
  async function watched(
    trackerOpts: TrackRequestsOptions,
    a: { id: string; intervalMs: number; rise: number },
  ) {
    const tracker = trackRequests({ ...trackerOpts, exposePath: STATS_PATH });
    const app = express();
    app.use(tracker);
    app.get('/work', () => undefined);
    server = await listen(app);
    const prefix = uniquePrefix(`agent-${a.id}`);
    client = await connectClient(broker.url);
    const box = inbox(client, prefix);
    await client.subscribeAsync(subscriptionFilter(prefix), { qos: 1 });
    agent = spawnAgent([
      ...['--backend-id', a.id, '--broker', broker.url, '--prefix', prefix],
      ...['--interval-ms', String(a.intervalMs), '--jitter-ms', '0', '--no-cgroup'],
      ...['--tracker-url', `${server.url}${STATS_PATH}`],
      ...['--early-rise', String(a.rise), '--early-min-gap-ms', '50'],
    ]);
    return { tracker, server, box };
  }

  it('publishes a jump of outstanding requests between two scheduled reports', async () => {
    const intervalMs = 5000;
    const { tracker, server, box } = await watched(
      { concurrencyLimit: 2 },
      { id: 'early-1', intervalMs, rise: 2 },
    );
    const first = await box.waitFor((r) => metricsOf(r) !== undefined, 3 * intervalMs, 'a report');
    const scheduled = metricsOf(first)!;
    expect(scheduled.early).toBeUndefined();
    expect(scheduled.queue).toMatchObject({ inFlight: 0, queued: 0 });

    // The jump: 3 requests on 2 slots (2 in flight, 1 queued), a rise of 3 over the report.
    for (let i = 0; i < 3; i++) reqs.push(fire(`${server.url}/work`));
    await until(() => tracker.snapshot().queued === 1);

    const early = await box.waitFor((r) => metricsOf(r)?.early === true, 3 * intervalMs, 'early');
    const e = metricsOf(early)!;
    // The watch answers once the rise reaches 2: the third request may or may not be in yet
    // (seen both ways in full runs).
    expect(e.queue?.inFlight).toBe(2);
    expect([0, 1]).toContain(e.queue?.queued);
    expect(e.concurrencyLimit).toBe(2);
    // The next report after the scheduled one: nothing came between them.
    expect(e.seq).toBe(scheduled.seq + 1);
    expect(e.intervalMs).toBe(intervalMs);
    // And it came before the next scheduled report, which carries no `early`.
    const next = await box.waitFor(
      (r) => (metricsOf(r)?.seq ?? -1) > e.seq,
      3 * intervalMs,
      'the next scheduled report',
    );
    expect(metricsOf(next)!.early).toBeUndefined();
    expect(box.received.indexOf(early)).toBeLessThan(box.received.indexOf(next));
    // Nothing else rose: one early report only.
    expect(box.received.filter((r) => metricsOf(r)?.early === true)).toHaveLength(1);
  });
  it("judges the early report's verdict from its own queue: a full queue is degraded", async () => {
    // It carried the last sample's verdict: `queued: 2` of 2 (full) beside "up", where a
    // scheduled sample at that moment says degraded, "request queue full".
    const { server, box } = await watched(
      { concurrencyLimit: 1, maxQueue: 2 },
      { id: 'early-v', intervalMs: 2000, rise: 3 },
    );
    const first = await box.waitFor((r) => metricsOf(r) !== undefined, 15_000, 'a report');
    // Not degraded by its queue (a busy machine's CPU may degrade it: seen once with other
    // suites running beside it).
    expect(metricsOf(first)!.health.reason ?? '').not.toMatch(/queue/);
    // A rise of 3 is the whole burst: 1 in flight, 2 queued, the queue full.
    for (let i = 0; i < 3; i++) reqs.push(fire(`${server.url}/work`));
    const early = await box.waitFor((r) => metricsOf(r)?.early === true, 15_000, 'early');
    const e = metricsOf(early)!;
    expect(e.queue).toMatchObject({ inFlight: 1, queued: 2 });
    // Its own queue's reason, beside any other (`host CPU 98%; ...` on a busy machine).
    expect(e.health.verdict).toBe('degraded');
    expect(e.health.reason).toMatch(/(^|; )request queue full \(2\)$/);
  });
});
