import { execFileSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { open } from 'node:fs/promises';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import express from 'express';
import type { MqttClient } from 'mqtt';
import {
  subscriptionFilter,
  topicFor,
  type MetricsReport,
  type SigningKey,
  type StatusMessage,
} from '@loadwise/protocol';
import {
  createAgent,
  trackRequests,
  type Agent,
  type AgentOptions,
  type MetricsBody,
} from '@loadwise/health-agent';
import { startEmbeddedBroker, type EmbeddedBroker } from '@loadwise/gateway-plugin';
import { clearRetained, connectClient, endClient, uniquePrefix } from '../kit/brokers';
import { fire, listen, until, type Listening } from '../kit/agent-http';
import { inbox } from '../kit/agent-cli';

/** createAgent() embedded in the app's own process: every queue source against real servers. */
describe('createAgent (library, in-process)', () => {
  const agents: Agent[] = [];
  const servers: Listening[] = [];
  afterEach(async () => {
    await Promise.all(agents.splice(0).map((a) => a.stop({ graceMs: 0 })));
    await Promise.all(servers.splice(0).map((s) => s.close()));
  });

  it('rejects a misspelt option at construction, by its path, with the nearest name', () => {
    // Plain JavaScript callers have no type checker to catch these.
    const typo = { backendId: 'a', qeue: {}, intervalMS: 5 } as unknown as AgentOptions;
    expect(() => createAgent(typo)).toThrow(
      expect.objectContaining({
        code: 'LW_AGENT_INVALID_OPTION',
        option: 'qeue',
        message: 'LW_AGENT_INVALID_OPTION: unknown option qeue (did you mean queue?)',
      }),
    );
    const deep = {
      backendId: 'a',
      queue: { source: 'kernel', port: 8080, timeoutMS: 5 },
    } as unknown as AgentOptions;
    expect(() => createAgent(deep)).toThrow('unknown option queue.timeoutMS');
    // A library user sees the library's names, not the CLI's.
    expect(() => createAgent({ backendId: 'a', queue: { source: 'kernel', port: 0 } })).toThrow(
      'LW_AGENT_INVALID_OPTION: queue.port: must be an integer from 1 to 65535, got 0',
    );
  });

  it('reads an in-process tracker, the probe and thresholds into one sample', async () => {
    const tracker = trackRequests({ concurrencyLimit: 1, maxQueue: 2, bypassPaths: ['/healthz'] });
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
    servers.push(server);
    const reqs = [
      fire(`${server.url}/work`),
      fire(`${server.url}/work`),
      fire(`${server.url}/work`),
    ];
    await until(() => tracker.snapshot().queued === 2);

    const agent = createAgent({
      backendId: 'lib-1',
      queue: { source: 'tracker', tracker },
      probe: { url: `${server.url}/healthz`, expectStatus: [200] },
      service: { pid: process.pid },
      cgroup: false,
    });
    agents.push(agent);
    const s = await agent.sample();
    expect(s.queue).toEqual({
      inFlight: 1,
      queued: 2,
      source: { inFlight: 'tracker', queued: 'tracker' },
    });
    expect(s.concurrencyLimit).toBe(1);
    // The queue is at its maxQueue bound: degraded, not down.
    expect(s.health).toMatchObject({ verdict: 'degraded', probeStatus: 200 });
    expect(s.health.reason).toContain('request queue full (2)'); // (host CPU may be high too: it is real)
    expect(s.traffic).toMatchObject({ rps: 0, errorRate: 0 });
    expect(s.traffic?.latencyP50Ms).toBeUndefined(); // nothing completed yet: no latency, rather than 0
    expect(s.process?.pid).toBe(process.pid);

    while (parked.length > 0 || tracker.snapshot().inFlight > 0) {
      parked.splice(0).forEach((f) => f());
      await new Promise((r) => setTimeout(r, 5));
    }
    await Promise.all(reqs.map((r) => r.done));
    const after = await agent.sample();
    expect(after.queue).toMatchObject({ inFlight: 0, queued: 0 });
    // No longer queue-full (the host itself may be busy with other tests: CPU is real here).
    expect(after.health.verdict).not.toBe('down');
    expect(after.health.reason ?? '').not.toMatch(/queue/);
    expect(after.traffic?.latencyP50Ms).toBeGreaterThan(0);
  });

  it('reports down when the probe fails, and degraded past a memory threshold', async () => {
    const sick = await listen((_req, res) => {
      res.statusCode = 503;
      res.end();
    });
    servers.push(sick);
    const down = createAgent({
      backendId: 'lib-2',
      probe: { url: `${sick.url}/healthz`, timeoutMs: 1000 },
      cgroup: false,
    });
    agents.push(down);
    expect((await down.sample()).health).toMatchObject({
      verdict: 'down',
      reason: 'probe answered 503',
      probeStatus: 503,
    });

    const closed = await listen(() => undefined);
    const deadUrl = `${closed.url}/healthz`;
    await closed.close();
    const refused = createAgent({ backendId: 'lib-3', probe: { url: deadUrl }, cgroup: false });
    agents.push(refused);
    expect((await refused.sample()).health).toMatchObject({ verdict: 'down' });
    expect((await refused.sample()).health.reason).toMatch(/^probe failed: .*ECONNREFUSED/);

    // Any real host uses more than 0.1% of its memory.
    const tight = createAgent({
      backendId: 'lib-4',
      thresholds: { memoryUtilization: 0.001 },
      cgroup: false,
    });
    agents.push(tight);
    expect((await tight.sample()).health).toMatchObject({ verdict: 'degraded' });
    // The real host's CPU may be named first on a busy machine.
    expect((await tight.sample()).health.reason).toMatch(/host memory \d+%/);
  });

  it('reads established connections of a port from the kernel (zero-code source)', async () => {
    const server = net.createServer((s) => s.on('error', () => undefined));
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
    const { port } = server.address() as net.AddressInfo;
    const sockets: net.Socket[] = [];
    try {
      for (let i = 0; i < 4; i++) {
        const s = net.connect(port, '127.0.0.1');
        sockets.push(s);
        await new Promise((r) => s.once('connect', r));
      }
      const agent = createAgent({
        backendId: 'lib-5',
        queue: { source: 'kernel', port },
        cgroup: false,
      });
      agents.push(agent);
      expect((await agent.sample()).queue).toMatchObject({
        openConnections: 4,
        source: { openConnections: 'kernel' },
      });
    } finally {
      sockets.forEach((s) => s.destroy());
      await new Promise((r) => server.close(r));
    }
  });

  /**
   * One sample of an agent whose kernel source reads `procRoot`'s net/tcp, a FIFO: the
   * agent's read of it waits until this writes the kernel's real table of that moment,
   * `readMs` after the read began. The probe asks `app`'s /healthz.
   */
  async function sampleOverFifo(
    backendId: string,
    app: { url: string },
    readMs: number,
    extra: Partial<AgentOptions> = {},
  ): Promise<MetricsBody> {
    const procRoot = mkdtempSync(join(tmpdir(), 'lw-kernel-probe-'));
    mkdirSync(join(procRoot, 'net'));
    execFileSync('mkfifo', [join(procRoot, 'net', 'tcp')]);
    try {
      const agent = createAgent({
        backendId,
        queue: { source: 'kernel', port: Number(new URL(app.url).port) },
        probe: { url: `${app.url}/healthz` },
        cgroup: false,
        procRoot,
        ...extra,
      });
      agents.push(agent);
      const sampled = agent.sample();
      // Opening the FIFO for writing waits for the agent's reader.
      const fifo = await open(join(procRoot, 'net', 'tcp'), 'w');
      if (readMs > 0) await new Promise((r) => setTimeout(r, readMs));
      await fifo.writeFile(readFileSync('/proc/net/tcp', 'utf8'));
      await fifo.close();
      return await sampled;
    } finally {
      rmSync(procRoot, { recursive: true, force: true });
    }
  }

  it("does not count the probe's own connection as the kernel source's load", async () => {
    // Read beside the probe, the probe's connection to the app's port (opened as the read
    // began) was in the table.
    const app = await listen((_req, res) => res.end('ok'));
    servers.push(app);
    const body = await sampleOverFifo('lib-5b', app, 0);
    // The probe answered (the verdict itself may be `degraded` on a busy machine: host CPU).
    expect(body.health).toMatchObject({ probeStatus: 200 });
    expect(body.health.verdict).not.toBe('down');
    expect(body.queue).toMatchObject({ acceptBacklog: 0, openConnections: 0 });
  });

  it('leaves the probe at least half the sample share when the kernel table is slow to read', async () => {
    // A host with many sockets: the table's read takes 800 ms of a 1 s interval. The probe,
    // which goes after it, had what was left of 900 ms: "timed out after 86 ms", `down`.
    const app = await listen((_req, res) => void setTimeout(() => res.end('ok'), 150));
    servers.push(app);
    const { health } = await sampleOverFifo('lib-5c', app, 800, { intervalMs: 1000 });
    // Before: `down`, "probe failed: timed out after 86 ms". (`degraded` is the host's CPU.)
    expect(health).toMatchObject({ probeStatus: 200 });
    expect(health.verdict).not.toBe('down');
  });

  it("pairs the first report's process with the service's cgroup, not the agent's own unit's", async () => {
    // A systemd host: the agent in its unit (CPUQuota=10%, MemoryMax=160M), the app in one without limits.
    const dir = mkdtempSync(join(tmpdir(), 'lw-cgroup-first-'));
    const files: Record<string, string> = {
      'proc/self/cgroup': '0::/system.slice/loadwise-agent.service\n',
      'proc/4242/cgroup': '0::/system.slice/myapp.service\n',
      'proc/4242/stat': `4242 (myapp) S 1 4242 4242 0 -1 4194560 100 0 0 0 500 100 0 0 20 0 1 0 100 1000000 1000 ${'0 '.repeat(20)}\n`,
      'proc/4242/status': 'Name:\tmyapp\nVmRSS:\t  512000 kB\n',
      'cg/cgroup.controllers': 'cpu memory\n',
      'cg/system.slice/loadwise-agent.service/cpu.max': '10000 100000\n',
      'cg/system.slice/loadwise-agent.service/memory.max': '167772160\n',
      'cg/system.slice/loadwise-agent.service/memory.current': '152000000\n',
      'cg/system.slice/myapp.service/cpu.max': 'max 100000\n',
      'cg/system.slice/myapp.service/memory.max': 'max\n',
      'cg/system.slice/myapp.service/memory.current': '524288000\n',
    };
    for (const [rel, text] of Object.entries(files)) {
      mkdirSync(dirname(join(dir, rel)), { recursive: true });
      writeFileSync(join(dir, rel), text);
    }
    try {
      const agent = createAgent({
        backendId: 'lib-cg',
        service: { pid: 4242 },
        cgroup: { root: join(dir, 'cg') },
        procRoot: join(dir, 'proc'),
      });
      agents.push(agent);
      const first = await agent.sample();
      expect(first.process).toMatchObject({ pid: 4242 });
      expect(first.cgroup).toEqual({ memoryUsedBytes: 524288000 });
      expect(first.health.verdict).not.toBe('degraded');
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('reads a gauge from a Prometheus endpoint, and warns (without failing the sample) when it is gone', async () => {
    const prom = await listen((_req, res) => {
      res.setHeader('content-type', 'text/plain; version=0.0.4');
      res.end('# TYPE app_waiting gauge\napp_waiting{pool="a"} 3\napp_waiting{pool="b"} 2\n');
    });
    servers.push(prom);
    const agent = createAgent({
      backendId: 'lib-6',
      queue: { source: 'prometheus', url: `${prom.url}/metrics`, gauge: 'app_waiting' },
      cgroup: false,
    });
    agents.push(agent);
    expect((await agent.sample()).queue).toEqual({ queued: 5, source: { queued: 'prometheus' } });

    const warnings: string[] = [];
    agent.on('warning', (w) => warnings.push(w));
    const missing = createAgent({
      backendId: 'lib-7',
      queue: { source: 'prometheus', url: `${prom.url}/metrics`, gauge: 'absent_gauge' },
      cgroup: false,
    });
    agents.push(missing);
    missing.on('warning', (w) => warnings.push(w));
    const s = await missing.sample();
    expect(s.queue).toBeUndefined();
    // Not down (a busy host may make it degraded): a missing gauge only warns.
    expect(s.health.verdict).not.toBe('down');
    expect(warnings).toEqual([expect.stringContaining('gauge absent_gauge not found')]);
  });

  it('keeps running without an error listener while the broker is unreachable', async () => {
    const closed = await listen(() => undefined);
    const port = new URL(closed.url).port;
    await closed.close();
    const agent = createAgent({
      backendId: 'lib-9',
      broker: { url: `mqtt://127.0.0.1:${port}`, reconnectPeriodMs: 100 },
      intervalMs: 100,
      cgroup: false,
    });
    agents.push(agent);
    const warnings: string[] = [];
    agent.on('warning', (w) => warnings.push(w));
    let dropped = 0;
    agent.on('sample', (_r, { published }) => void (published ? undefined : dropped++));
    await agent.start();
    await until(
      () => dropped >= 2 && warnings.some((w) => w.includes('ECONNREFUSED')),
      5000,
      'dropped samples',
    );
    expect(agent.connected).toBe(false);
    expect(agent.stats.published).toBe(0);
  });

  it('stop() while start() is still priming: nothing connects or runs afterwards', async () => {
    const broker = await startEmbeddedBroker();
    try {
      const sockets = (): number =>
        process.getActiveResourcesInfo().filter((r) => r === 'TCPSocketWrap').length;
      const before = sockets();
      const agent = createAgent({
        backendId: 'lib-10',
        broker: { url: broker.url },
        intervalMs: 100,
        cgroup: false,
      });
      const connects: unknown[] = [];
      agent.on('connect', () => connects.push(1));
      const started = agent.start();
      await agent.stop({ graceMs: 0 });
      await started;
      // mqtt.js opens its socket synchronously: a client made after stop() shows here. At
      // most as many as before: a socket of the test before (its agent stopped) may still
      // have been closing when `before` was read (seen in CI on a busy machine: 1, then 0).
      expect(sockets()).toBeLessThanOrEqual(before);
      expect([connects.length, agent.state]).toEqual([0, 'offline']);
    } finally {
      await broker.close();
    }
  });

  describe('publishing', () => {
    let broker: EmbeddedBroker;
    let sub: MqttClient;
    beforeAll(async () => {
      broker = await startEmbeddedBroker();
      sub = await connectClient(broker.url);
    });
    afterAll(async () => {
      await endClient(sub, true);
      await broker.close();
    });

    /** An agent publishing every 100 ms under `prefix`, connected; its messages land in `box`. */
    async function connectedAgent(
      prefix: string,
      backendId: string,
      extra: { signingKey?: SigningKey } = {},
    ) {
      const box = inbox(sub, prefix, extra.signingKey ? [extra.signingKey] : undefined);
      await sub.subscribeAsync(subscriptionFilter(prefix), { qos: 1 });
      const agent = createAgent({
        backendId,
        broker: { url: broker.url },
        prefix,
        intervalMs: 100,
        cgroup: false,
        ...extra,
      });
      agents.push(agent);
      const states: string[] = [];
      agent.on('state', (s) => states.push(s));
      const connected = new Promise<void>((r) => agent.once('connect', r));
      await agent.start();
      await connected;
      return { box, agent, states };
    }

    it('signs every message with the key, emits typed events, and stops with draining then offline', async () => {
      const prefix = uniquePrefix('agent-signed');
      const key = { keyId: 'k1', secret: Buffer.alloc(32, 7) };
      const { box, agent, states } = await connectedAgent(prefix, 'lib-8', { signingKey: key });
      const m = await box.waitFor((r) => r.message.kind === 'metrics', 5000, 'signed metrics');
      expect((m.message as MetricsReport).intervalMs).toBe(100);
      // A grace of ten intervals: a stall of the test process around the only tick of a
      // shorter one could leave no draining report to see.
      const stopped = agent.stop({ graceMs: 1_000 });
      await box.waitFor(
        (r) => r.message.kind === 'metrics' && (r.message as MetricsReport).state === 'draining',
        3000,
        'a draining report during the grace period',
      );
      await stopped;
      await box.waitFor(
        (r) => r.message.kind === 'status' && r.message.state === 'offline',
        3000,
        'offline',
      );
      expect(box.rejected).toEqual([]); // every message verified against the key
      expect(states).toEqual(['draining', 'offline']);
      const metricsStates = box.received
        .filter((r) => r.message.kind === 'metrics')
        .map((r) => (r.message as MetricsReport).state);
      expect(metricsStates).toContain('draining'); // kept reporting through the grace period
      expect(agent.stats.published).toBeGreaterThan(0);
      await clearRetained(sub, [topicFor(prefix, 'lib-8', 'status')]);
    });

    it('a reading out of the protocol range costs its block, never the report: the down verdict goes out', async () => {
      // A tracker document with a fractional count (the protocol wants integers), and a
      // probe nobody answers. The agent used to publish nothing at all: one warning a minute.
      const tracker = await listen((_req, res) => {
        res.setHeader('content-type', 'application/json');
        res.end(
          JSON.stringify({
            inFlight: 1.5,
            queued: 0,
            rps: 1,
            errorRate: 2,
            windowMs: 1000,
            completed: 1,
          }),
        );
      });
      servers.push(tracker);
      const refused = await listen(() => undefined);
      const probeUrl = `${refused.url}/healthz`;
      await refused.close();
      const prefix = uniquePrefix('agent-bad-reading');
      const box = inbox(sub, prefix);
      await sub.subscribeAsync(subscriptionFilter(prefix), { qos: 1 });
      const agent = createAgent({
        backendId: 'lib-10',
        broker: { url: broker.url },
        prefix,
        intervalMs: 100,
        cgroup: false,
        queue: { source: 'tracker', url: `${tracker.url}/stats` },
        probe: { url: probeUrl },
      });
      agents.push(agent);
      const warnings: string[] = [];
      agent.on('warning', (w) => warnings.push(w));
      await agent.start();
      const m = await box.waitFor((r) => r.message.kind === 'metrics', 5000, 'a report');
      const report = m.message as MetricsReport;
      expect(report.health.verdict).toBe('down');
      expect(report.queue).toBeUndefined();
      expect(report.traffic).toBeUndefined();
      expect(warnings).toEqual(
        expect.arrayContaining([
          expect.stringContaining('sent without queue (queue.inFlight: LW_PROTO_OUT_OF_RANGE)'),
          expect.stringContaining(
            'sent without traffic (traffic.errorRate: LW_PROTO_OUT_OF_RANGE)',
          ),
        ]),
      );
      await agent.stop({ graceMs: 0 });
      await clearRetained(sub, [topicFor(prefix, 'lib-10', 'status')]);
    });

    it('undrain() ends a drain(): online status again, metrics back to online; not during stop()', async () => {
      const prefix = uniquePrefix('agent-undrain');
      const { box, agent, states } = await connectedAgent(prefix, 'lib-9');
      await agent.undrain(); // not draining: nothing to undo
      await agent.drain('kernel upgrade');
      const drained = await box.waitFor(
        (r) => r.message.kind === 'status' && r.message.state === 'draining',
        3000,
        'draining',
      );
      expect((drained.message as StatusMessage).reason).toBe('kernel upgrade');
      await agent.undrain();
      const online = await box.waitFor(
        (r) =>
          r.message.kind === 'status' && r.message.state === 'online' && r.atMs >= drained.atMs,
        3000,
        'online again',
      );
      expect((online.message as StatusMessage).reason).toBeUndefined();
      await box.waitFor(
        (r) =>
          r.message.kind === 'metrics' &&
          (r.message as MetricsReport).state === 'online' &&
          r.atMs > online.atMs,
        3000,
        'online metrics after undrain',
      );
      const stopping = agent.stop({ graceMs: 200 });
      await agent.undrain(); // stop() drains on its way out: undrain must not cancel that
      await stopping;
      expect(states).toEqual(['draining', 'online', 'draining', 'offline']);
      await clearRetained(sub, [topicFor(prefix, 'lib-9', 'status')]);
    });
  });
});
