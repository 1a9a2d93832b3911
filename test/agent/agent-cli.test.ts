import { chmodSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import express from 'express';
import type { MqttClient } from 'mqtt';
import {
  subscriptionFilter,
  topicFor,
  type MetricsReport,
  type StatusMessage,
} from '@loadwise/protocol';
import { trackRequests } from '@loadwise/health-agent';
import {
  brokerTargets,
  clearRetained,
  connectClient,
  endClient,
  uniquePrefix,
} from '../kit/brokers';
import { fire, listen, until, type InFlightRequest, type Listening } from '../kit/agent-http';
import { inbox, spawnAgent, type AgentProcess, type Received } from '../kit/agent-cli';

const STATS_PATH = '/.well-known/loadwise/stats';
const isMetrics = (r: Received): r is Received & { message: MetricsReport } =>
  r.message.kind === 'metrics';
const isStatus = (r: Received): r is Received & { message: StatusMessage } =>
  r.message.kind === 'status';

/** An Express backend with a concurrency limit whose requests the test holds and releases. */
async function heldBackend(limit: number) {
  const tracker = trackRequests({
    concurrencyLimit: limit,
    exposePath: STATS_PATH,
    bypassPaths: ['/healthz'],
  });
  const parked: Array<() => void> = [];
  const app = express();
  app.use(tracker);
  app.get('/healthz', (_req, res) => {
    res.send('ok');
  });
  app.get('/work', (_req, res) => {
    parked.push(() => res.send('done'));
  });
  const server = await listen(app);
  return {
    tracker,
    server,
    releaseAll() {
      parked.splice(0).forEach((f) => f());
    },
    parkedCount: () => parked.length,
    async close() {
      tracker.close();
      await server.close();
    },
  };
}

describe.each(brokerTargets())('loadwise-agent CLI over MQTT: $name', (target) => {
  let broker: Awaited<ReturnType<typeof target.start>>;
  const clients: MqttClient[] = [];
  const agents: AgentProcess[] = [];
  const servers: Listening[] = [];
  const retainedTopics: string[] = [];
  let tmp: string;

  beforeAll(async () => {
    broker = await target.start();
    tmp = mkdtempSync(path.join(os.tmpdir(), 'lw-agent-'));
  });
  afterEach(async () => {
    await Promise.all(agents.splice(0).map((a) => a.kill()));
    await Promise.all(servers.splice(0).map((s) => s.close()));
    if (retainedTopics.length > 0 && clients[0])
      await clearRetained(clients[0], retainedTopics.splice(0));
    await Promise.all(clients.splice(0).map((c) => endClient(c, true)));
  });
  afterAll(async () => {
    await broker.close();
    rmSync(tmp, { recursive: true, force: true });
  });

  async function subscriber(prefix: string) {
    const client = await connectClient(broker.url);
    clients.push(client);
    const box = inbox(client, prefix);
    await client.subscribeAsync(subscriptionFilter(prefix), { qos: 1 });
    return box;
  }

  it('publishes the in-flight and queued counts of a tracked backend, then drains and goes offline on SIGTERM', async () => {
    const prefix = uniquePrefix('agent-cli');
    retainedTopics.push(topicFor(prefix, 'api-1', 'status'));
    const box = await subscriber(prefix);
    const backend = await heldBackend(2);
    servers.push(backend.server);
    const reqs: InFlightRequest[] = [];
    for (let i = 0; i < 5; i++) reqs.push(fire(`${backend.server.url}/work`));
    await until(() => backend.tracker.snapshot().queued === 3);

    const agent = spawnAgent([
      '--backend-id',
      'api-1',
      '--broker',
      broker.url,
      '--prefix',
      prefix,
      '--interval-ms',
      '200',
      '--tracker-url',
      `${backend.server.url}${STATS_PATH}`,
      '--probe-url',
      `${backend.server.url}/healthz`,
      '--service-pid',
      String(process.pid),
      '--drain-grace-ms',
      '300',
    ]);
    agents.push(agent);

    const online = await box.waitFor(
      (r) => isStatus(r) && r.message.state === 'online',
      8000,
      'status online',
    );
    const first = await box.waitFor(
      (r) => isMetrics(r) && r.message.queue?.queued === 3,
      8000,
      'metrics with 3 queued',
    );
    const m = first.message as MetricsReport;
    expect(online.atMs).toBeLessThanOrEqual(first.atMs);
    expect(m.queue).toEqual({
      inFlight: 2,
      queued: 3,
      source: { inFlight: 'tracker', queued: 'tracker' },
    });
    expect(m.concurrencyLimit).toBe(2);
    expect(m.state).toBe('online');
    expect(m.intervalMs).toBe(200);
    // Probe passes; the verdict may still be `degraded` when the (real, shared) host CPU is busy.
    expect(m.health).toMatchObject({ probeStatus: 200 });
    expect(m.health.verdict).not.toBe('down');
    expect(m.process?.pid).toBe(process.pid);
    expect(m.process?.rssBytes).toBeGreaterThan(10 * 1024 * 1024);
    expect(m.host.cpuUtilization).toBeGreaterThanOrEqual(0);
    expect(m.host.memoryAvailableBytes).toBeGreaterThan(0);

    // Let the queue drain through the limit: 5 requests complete, 2 at a time.
    while (backend.tracker.snapshot().completed < 5) {
      backend.releaseAll();
      await until(() => backend.parkedCount() > 0 || backend.tracker.snapshot().completed === 5);
    }
    await Promise.all(reqs.map((r) => r.done));
    const after = await box.waitFor(
      (r) => isMetrics(r) && r.message.queue?.inFlight === 0 && (r.message.traffic?.rps ?? 0) > 0,
      8000,
      'metrics after the requests completed',
    );
    const traffic = (after.message as MetricsReport).traffic!;
    expect(traffic.errorRate).toBe(0);
    expect(traffic.latencyP50Ms).toBeGreaterThan(0);
    expect(traffic.latencyP99Ms).toBeGreaterThanOrEqual(traffic.latencyP50Ms!);

    agent.child.kill('SIGTERM');
    expect(await agent.exited).toBe(0);
    const draining = await box.waitFor(
      (r) => isStatus(r) && r.message.state === 'draining',
      3000,
      'draining',
    );
    const offline = await box.waitFor(
      (r) => isStatus(r) && r.message.state === 'offline',
      3000,
      'offline',
    );
    expect(draining.atMs).toBeLessThanOrEqual(offline.atMs);
    expect((offline.message as StatusMessage).will).toBeUndefined(); // a clean offline, not the Last Will
    await backend.close();
  });

  it('fires the retained offline Last Will when the agent is killed with SIGKILL', async () => {
    const prefix = uniquePrefix('agent-lwt');
    retainedTopics.push(topicFor(prefix, 'api-2', 'status'));
    const box = await subscriber(prefix);
    const agent = spawnAgent([
      '--backend-id',
      'api-2',
      '--broker',
      broker.url,
      '--prefix',
      prefix,
      '--interval-ms',
      '200',
      '--no-cgroup',
    ]);
    agents.push(agent);
    await box.waitFor((r) => isMetrics(r), 8000, 'first metrics');
    process.kill(agent.child.pid!, 'SIGKILL');
    expect(await agent.exited).toBe('SIGKILL');
    const will = await box.waitFor(
      (r) => isStatus(r) && r.message.state === 'offline',
      8000,
      'the Last Will',
    );
    expect((will.message as StatusMessage).will).toBe(true);

    // A gateway that connects later still learns it: the will is retained.
    const late = await subscriber(prefix);
    const retained = await late.waitFor((r) => isStatus(r), 5000, 'retained status');
    expect(retained.retained).toBe(true);
    expect(retained.message).toMatchObject({ state: 'offline', will: true });
  });

  it('a hung health endpoint cannot silence it, and it warns of a key file others can read', async () => {
    // The probe never answers, with a timeout 25 times the interval: each sample gets at most
    // 90% of the interval, so a down report still goes out every interval. It used to go
    // silent (no report in 12 s with a 30 s timeout) and gateways never heard "down".
    const hung = await listen(() => undefined);
    servers.push(hung);
    const keyFile = path.join(tmp, 'agent-hung.key');
    writeFileSync(keyFile, `k1 ${Buffer.alloc(32, 3).toString('base64')}\n`, { mode: 0o644 });
    chmodSync(keyFile, 0o644);
    const key = { keyId: 'k1', secret: Buffer.alloc(32, 3) };
    const prefix = uniquePrefix('agent-hung');
    retainedTopics.push(topicFor(prefix, 'api-4', 'status'));
    const client = await connectClient(broker.url);
    clients.push(client);
    const box = inbox(client, prefix, [key]);
    await client.subscribeAsync(subscriptionFilter(prefix), { qos: 1 });
    const agent = spawnAgent([
      '--backend-id',
      'api-4',
      '--broker',
      broker.url,
      '--prefix',
      prefix,
      '--interval-ms',
      '200',
      '--probe-url',
      `${hung.url}/healthz`,
      '--probe-timeout-ms',
      '5000',
      '--key-file',
      keyFile,
      '--no-cgroup',
    ]);
    agents.push(agent);
    const first = await box.waitFor((r) => isMetrics(r), 8000, 'first metrics');
    await box.waitFor(
      (r) => isMetrics(r) && r.atMs >= first.atMs + 2000,
      8000,
      'metrics two seconds later',
    );
    const reports = box.received.filter(
      (r) => isMetrics(r) && r.atMs >= first.atMs && r.atMs < first.atMs + 2000,
    );
    // Every 200 ms: 10 in the two seconds from the first on. The probe gets 180 ms of each
    // interval, so a tick that starts 20 ms late overruns the next, which is skipped: at
    // least 5 even then. The bug this guards against sent none in 12 s.
    expect(reports.length).toBeGreaterThanOrEqual(5);
    expect(reports.every((r) => (r.message as MetricsReport).health.verdict === 'down')).toBe(true);
    expect(agent.stderr()).toContain(`--key-file ${keyFile} can be read by other users (mode 644)`);
  });

  it('drains on `loadwise-agent drain --pid-file` and keeps reporting with state draining', async () => {
    const prefix = uniquePrefix('agent-drain');
    retainedTopics.push(topicFor(prefix, 'api-3', 'status'));
    const box = await subscriber(prefix);
    const pidFile = path.join(tmp, `agent-${Date.now()}.pid`);
    const agent = spawnAgent([
      '--backend-id',
      'api-3',
      '--broker',
      broker.url,
      '--prefix',
      prefix,
      '--interval-ms',
      '200',
      '--agent-pid-file',
      pidFile,
      '--drain-grace-ms',
      '0',
    ]);
    agents.push(agent);
    await box.waitFor((r) => isMetrics(r) && r.message.state === 'online', 8000, 'online metrics');

    const drain = spawnAgent(['drain', '--pid-file', pidFile]);
    expect(await drain.exited).toBe(0);
    const status = await box.waitFor(
      (r) => isStatus(r) && r.message.state === 'draining',
      5000,
      'draining status',
    );
    const later = await box.waitFor(
      (r) => isMetrics(r) && r.message.state === 'draining' && r.atMs > status.atMs,
      5000,
      'metrics with state draining',
    );
    expect((later.message as MetricsReport).health).toBeDefined();
    expect(agent.child.exitCode).toBeNull(); // still running

    agent.child.kill('SIGINT');
    expect(await agent.exited).toBe(0);
    await box.waitFor((r) => isStatus(r) && r.message.state === 'offline', 3000, 'offline');
  });
});
