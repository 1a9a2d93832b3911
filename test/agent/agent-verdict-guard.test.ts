import type { MqttClient } from 'mqtt';
import { subscriptionFilter } from '@loadwise/protocol';
import { createAgent, type Agent, type TrackerSnapshot } from '@loadwise/health-agent';
import { startEmbeddedBroker, type EmbeddedBroker } from '@loadwise/gateway-plugin';
import { connectClient, endClient, uniquePrefix } from '../kit/brokers';
import { inbox, metricsOf } from '../kit/agent-cli';

/**
 * The health verdict is judged on the figures the report carries. A tracker document whose
 * queue the protocol refuses (`queued: 1e308`, `9.5`) loses the queue block (report-guard.ts);
 * the verdict said `degraded`, "request queue full (1e+308)", all the same: a queue the
 * report calls unknown, said full, which gateways penalise.
 */
describe('agent verdict on a queue the report cannot carry', () => {
  const doc = (queued: number, inFlight = 4): TrackerSnapshot => ({
    inFlight,
    queued,
    rps: 1,
    errorRate: 0,
    latencyMeanMs: 1,
    latencyP50Ms: 1,
    latencyP90Ms: 1,
    latencyP99Ms: 1,
    windowMs: 1000,
    windowCompleted: 1,
    completed: 1,
    rejected: 0,
    aborted: 0,
    concurrencyLimit: 4,
    maxQueue: 10,
  });

  it.each([1e308, 10.5])(
    'a scheduled sample with queued %p is not "queue full"',
    async (queued) => {
      const agent = createAgent({
        backendId: 'guard-1',
        cgroup: false,
        queue: { source: 'tracker', tracker: { snapshot: () => doc(queued) } },
      });
      const warnings: string[] = [];
      agent.on('warning', (w) => warnings.push(w));
      const body = await agent.sample();
      expect(body.queue).toBeUndefined();
      expect(body.health.reason ?? '').not.toContain('queue');
      expect(body.health.causes ?? []).not.toContain('queue');
      expect(warnings).toEqual(
        expect.arrayContaining([expect.stringContaining('sample sent without queue')]),
      );
      // A queue it can carry at the bound still is.
      const full = createAgent({
        backendId: 'guard-2',
        cgroup: false,
        queue: { source: 'tracker', tracker: { snapshot: () => doc(10) } },
      });
      const fullBody = await full.sample();
      expect(fullBody.health.causes).toContain('queue');
      expect(fullBody.health.reason).toContain('request queue full (10)');
    },
  );

  describe('early reports', () => {
    let broker: EmbeddedBroker;
    let client: MqttClient;
    let agent: Agent | undefined;
    beforeAll(async () => {
      broker = await startEmbeddedBroker();
      client = await connectClient(broker.url);
    });
    afterAll(async () => {
      await agent?.stop({ graceMs: 0 });
      await endClient(client, true);
      await broker.close();
    });

    it('an early report with a refused queue is not "queue full" either', async () => {
      const prefix = uniquePrefix('agent-verdict-guard');
      const box = inbox(client, prefix);
      await client.subscribeAsync(subscriptionFilter(prefix), { qos: 1 });
      let rises = 0;
      agent = createAgent({
        backendId: 'guard-3',
        broker: { url: broker.url },
        prefix,
        intervalMs: 1000,
        jitterMs: 0,
        cgroup: false,
        earlyRise: 2,
        earlyMinGapMs: 50,
        queue: {
          source: 'tracker',
          tracker: {
            snapshot: () => doc(0, 0),
            // One rise, to a queue out of the protocol's range, then quiet.
            waitForRise: ({ timeoutMs, signal }) =>
              rises++ === 0
                ? Promise.resolve({ ...doc(1e308), rose: true })
                : new Promise((resolve) => {
                    const t = setTimeout(() => resolve({ ...doc(0, 0), rose: false }), timeoutMs);
                    signal?.addEventListener('abort', () => {
                      clearTimeout(t);
                      resolve({ ...doc(0, 0), rose: false });
                    });
                  }),
          },
        },
      });
      agent.on('warning', () => undefined);
      await agent.start();
      const early = await box.waitFor((r) => metricsOf(r)?.early === true, 5000, 'early');
      const m = metricsOf(early)!;
      expect(m.queue).toBeUndefined();
      expect(m.health.reason ?? '').not.toContain('queue');
      expect(m.health.causes ?? []).not.toContain('queue');
    });
  });
});
