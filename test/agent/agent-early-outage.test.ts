import express from 'express';
import type { MqttClient } from 'mqtt';
import { subscriptionFilter, type MetricsReport } from '@loadwise/protocol';
import { createAgent, trackRequests, type Agent } from '@loadwise/health-agent';
import { startEmbeddedBroker, type EmbeddedBroker } from '@loadwise/gateway-plugin';
import { connectClient, endClient, uniquePrefix } from '../kit/brokers';
import { fire, listen, until, type InFlightRequest, type Listening } from '../kit/agent-http';
import { inbox, metricsOf } from '../kit/agent-cli';
import { startFaultProxy, type FaultProxy } from '../kit/fault-proxy';

/**
 * An early report right after a broker outage: the agent kept sampling while
 * it could not publish, and the health probe went down meanwhile. The early
 * report repeats the last sample's health and CPU, so it must be the sample
 * taken during the outage, not the last one published before it (which said
 * the backend was up).
 */
describe('agent early report after a broker outage', () => {
  let broker: EmbeddedBroker;
  let proxy: FaultProxy;
  let client: MqttClient;
  let server: Listening;
  let agent: Agent | undefined;
  const reqs: InFlightRequest[] = [];

  beforeAll(async () => {
    broker = await startEmbeddedBroker();
    proxy = await startFaultProxy(broker.port);
    client = await connectClient(broker.url);
  });
  afterAll(async () => {
    await agent?.stop({ graceMs: 0 });
    for (const r of reqs.splice(0)) r.abort();
    await server?.close();
    await endClient(client, true);
    await proxy.close();
    await broker.close();
  });

  it('carries what was sampled during the outage', async () => {
    const tracker = trackRequests({ concurrencyLimit: 2 });
    let healthy = true;
    const app = express();
    app.get('/health', (_req, res) => res.status(healthy ? 200 : 503).end());
    app.use(tracker);
    app.get('/work', () => undefined); // held until the test ends
    server = await listen(app);

    const prefix = uniquePrefix('agent-early-outage');
    const box = inbox(client, prefix);
    await client.subscribeAsync(subscriptionFilter(prefix), { qos: 1 });

    const intervalMs = 1000;
    agent = createAgent({
      backendId: 'outage-1',
      broker: { url: `mqtt://127.0.0.1:${proxy.port}`, reconnectPeriodMs: 100 },
      prefix,
      intervalMs,
      jitterMs: 0,
      cgroup: false,
      queue: { source: 'tracker', tracker },
      probe: { url: `${server.url}/health` },
      earlyRise: 2,
      earlyMinGapMs: 50,
    });
    agent.on('warning', () => undefined);
    const samples: Array<{ report: MetricsReport; published: boolean }> = [];
    agent.on('sample', (report, info) => samples.push({ report, published: info.published }));
    await agent.start();
    const first = await box.waitFor((r) => metricsOf(r) !== undefined, 5 * intervalMs, 'a report');
    // The probe answers 200: up, or degraded where the host's real CPU is at 90% and more
    // (a busy CI machine), never down.
    expect(metricsOf(first)!.health.verdict).not.toBe('down');

    // The outage: every connection to the broker is reset, and the probe goes down.
    // (The reset comes at the connection's next byte: that report may still
    // count as published, so the probe goes down only once the agent is offline.)
    const offline = new Promise<void>((r) => agent!.once('offline', () => r()));
    proxy.setFault({ kind: 'reset' });
    await offline;
    healthy = false;
    await until(
      () => samples.some((s) => !s.published && s.report.health.verdict === 'down'),
      5 * intervalMs,
      'a sample taken during the outage',
    );
    const connected = new Promise<void>((r) => agent!.once('connect', () => r()));
    proxy.setFault({ kind: 'none' });
    await connected;

    // A jump of outstanding requests right away: 3 on 2 slots.
    for (let i = 0; i < 3; i++) reqs.push(fire(`${server.url}/work`));
    const early = await box.waitFor((r) => metricsOf(r)?.early === true, 5 * intervalMs, 'early');
    expect(metricsOf(early)!.queue?.inFlight).toBe(2);
    expect(metricsOf(early)!.health.verdict).toBe('down');
  });
});
