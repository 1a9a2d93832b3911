import type { MqttClient } from 'mqtt';
import {
  createDecoder,
  subscriptionFilter,
  topicFor,
  type Message,
  type SigningKey,
} from '@loadwise/protocol';
import { createAgent, type Agent } from '@loadwise/health-agent';
import {
  brokerTargets,
  clearRetained,
  connectClient,
  endClient,
  uniquePrefix,
} from '../kit/brokers';
import { until } from '../kit/agent-http';

const key: SigningKey = { keyId: 'k1', secret: Buffer.alloc(32, 7) };

/** What a gateway decodes, on the true clock (the agent's is shifted), in arrival order. */
function gatewaySide(client: MqttClient, prefix: string, now: () => number) {
  const decoder = createDecoder({ prefix, keys: [key], now });
  const accepted: Array<{ message: Message; retained: boolean }> = [];
  const rejected: string[] = [];
  client.on('message', (topic, payload, packet) => {
    if (payload.length === 0) return; // a cleared retained message
    const r = decoder.decode(topic, payload, { retained: packet.retain });
    if (r.ok) accepted.push({ message: r.message, retained: packet.retain });
    else rejected.push(r.code);
  });
  return { accepted, rejected };
}

/**
 * An agent started while its wall clock was 2 minutes fast (a host booted before NTP
 * synced), whose clock is then stepped back to the true time. Only the agent's clock is
 * shifted (Date.now, which the agent, its encoder and its scheduler read); the decoders
 * judge on the true clock, as gateways with a correct clock do. Timers are real.
 */
describe.each(brokerTargets().map((t) => [t.name, t] as const))(
  'agent clock stepped back past its run start: %s',
  (_name, target) => {
    const realNow = Date.now.bind(Date);
    let offsetMs = 0;
    let broker: { url: string; close(): Promise<void> } | undefined;
    let agent: Agent | undefined;
    const clients: MqttClient[] = [];
    let retained: string[] = [];

    beforeEach(() => {
      offsetMs = 0;
      jest.spyOn(Date, 'now').mockImplementation(() => realNow() + offsetMs);
    });

    afterEach(async () => {
      await agent?.stop({ graceMs: 0 });
      agent = undefined;
      jest.restoreAllMocks();
      if (broker && retained.length > 0) {
        const c = await connectClient(broker.url);
        await clearRetained(c, retained);
        await endClient(c);
      }
      retained = [];
      await Promise.all(clients.splice(0).map((c) => endClient(c, true)));
      await broker?.close();
      broker = undefined;
    });

    it('starts a new run (epoch, Last Will, retained status and registration) that gateways accept', async () => {
      broker = await target.start();
      const prefix = uniquePrefix('clock-step');
      const id = 'clk-1';
      retained = [topicFor(prefix, id, 'status'), topicFor(prefix, id, 'register')];

      const sub = await connectClient(broker.url);
      clients.push(sub);
      const live = gatewaySide(sub, prefix, realNow);
      await sub.subscribeAsync(subscriptionFilter(prefix), { qos: 1 });

      offsetMs = 120_000; // started 2 min fast
      const warnings: string[] = [];
      const published: number[] = [];
      agent = createAgent({
        backendId: id,
        prefix,
        signingKey: key,
        advertiseUrl: 'http://127.0.0.1:9',
        broker: { url: broker.url, reconnectPeriodMs: 200 },
        intervalMs: 100,
        cgroup: false,
      });
      agent.on('warning', (w) => warnings.push(w));
      agent.on('sample', (r, info) => {
        if (info.published) published.push(r.epochMs);
      });
      await agent.start();
      await until(() => published.length >= 2, 8000, 'reports of the fast run');
      const fastEpoch = published[0]!;
      expect(fastEpoch).toBeGreaterThan(realNow() + 60_000);
      // Gateways on the true clock hear nothing of it.
      await until(() => live.rejected.length >= 4, 8000, 'the fast run to reach the subscriber');
      expect(live.accepted).toEqual([]);
      expect(new Set(live.rejected)).toEqual(new Set(['LW_PROTO_CLOCK_SKEW']));

      offsetMs = 0; // NTP steps the clock back
      const steppedAt = realNow();
      await until(
        () => live.accepted.some((a) => a.message.kind === 'metrics'),
        8000,
        `a report a gateway accepts after the step (rejected: ${live.rejected.length})`,
      );
      const run = live.accepted.filter((a) => a.message.epochMs !== fastEpoch);
      expect(run.length).toBe(live.accepted.length);
      const epoch = run[0]!.message.epochMs;
      expect(epoch).toBeGreaterThanOrEqual(steppedAt);
      expect(epoch).toBeLessThanOrEqual(realNow());
      // As on a fresh start: status online, registration, then metrics, sequence from 0.
      expect(run.slice(0, 3).map((a) => a.message.kind)).toEqual(['status', 'register', 'metrics']);
      const seqs = run.map((a) => a.message.seq);
      expect(seqs).toEqual([...seqs].sort((x, y) => x - y));
      expect(seqs[0]).toBeLessThan(3); // the new run's sequence: from 0 (its Last Will first)
      expect(run[0]!.message).toMatchObject({ kind: 'status', state: 'online' });
      expect(agent.stats.newRuns).toBe(1);
      expect(agent.stats.connects).toBe(2);
      const clockWarnings = warnings.filter((w) => w.startsWith('LW_AGENT_CLOCK_BEHIND_RUN:'));
      expect(clockWarnings).toHaveLength(1);
      expect(clockWarnings[0]).toContain(`epochMs ${epoch}`);

      // A gateway started now reads the retained status and registration of the new run.
      // Subscribed to those two kinds only: the agent reports every 100 ms, and on a loaded
      // machine a live report delivered before the broker's retained copies made them
      // not newer than one accepted (LW_PROTO_RETAINED_SUPERSEDED), which is what they
      // are, and this test, not the gateway, went without them.
      const late = await connectClient(broker.url);
      clients.push(late);
      const lateSide = gatewaySide(late, prefix, realNow);
      await late.subscribeAsync(
        [subscriptionFilter(prefix, 'status'), subscriptionFilter(prefix, 'register')],
        { qos: 1 },
      );
      await until(
        () =>
          ['status', 'register'].every((k) =>
            lateSide.accepted.some((a) => a.retained && a.message.kind === k),
          ),
        8000,
        `retained status and registration of the new run (rejected: ${lateSide.rejected.join()})`,
      );
      for (const a of lateSide.accepted.filter((x) => x.retained)) {
        expect(a.message.epochMs).toBe(epoch);
      }

      // The broker holds the new run's Last Will: a lost connection publishes it, and it is accepted.
      const client = (agent as unknown as { client: MqttClient }).client;
      client.stream.destroy();
      await until(
        () =>
          live.accepted.some(
            (a) =>
              a.message.kind === 'status' && a.message.will === true && a.message.epochMs === epoch,
          ),
        8000,
        `the new run's Last Will (rejected: ${live.rejected.slice(-3).join()})`,
      );
      expect(live.rejected.filter((c) => c !== 'LW_PROTO_CLOCK_SKEW')).toEqual([]);
    });
  },
);
