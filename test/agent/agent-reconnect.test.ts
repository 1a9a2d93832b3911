import { spawn, type ChildProcess } from 'node:child_process';
import { chmodSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { execFileSync } from 'node:child_process';
import { subscriptionFilter, type MetricsReport } from '@loadwise/protocol';
import { startEmbeddedBroker } from '@loadwise/gateway-plugin';
import { createAgent, type Agent } from '@loadwise/health-agent';
import type { MqttClient } from 'mqtt';
import { connectClient, endClient, uniquePrefix } from '../kit/brokers';
import { inbox } from '../kit/agent-cli';
import { until } from '../kit/agent-http';
import { freePort, waitForPort } from '../kit/ports';

/** A broker the test can stop and start again on the same port. */
interface RestartableBroker {
  url: string;
  stop(): Promise<void>;
  start(): Promise<void>;
  /** Removes whatever the broker left on disk. */
  dispose(): void;
}

async function embedded(): Promise<RestartableBroker> {
  let broker = await startEmbeddedBroker();
  const port = broker.port;
  return {
    url: broker.url,
    stop: () => broker.close(),
    start: async () => {
      broker = await startEmbeddedBroker({ port });
    },
    dispose: () => undefined,
  };
}

/** Our own Mosquitto on a free port (never the shared one on 1883, which must not be restarted). */
async function mosquitto(): Promise<RestartableBroker> {
  const port = await freePort();
  // Loopback only, anonymous, no persistence: a restart loses retained state, like aedes.
  const dir = mkdtempSync(path.join(os.tmpdir(), 'lw-mosq-'));
  const conf = path.join(dir, 'mosquitto.conf');
  writeFileSync(conf, `listener ${port} 127.0.0.1\nallow_anonymous true\n`);
  chmodSync(dir, 0o755); // mosquitto started as root drops to its own user
  chmodSync(conf, 0o644);
  let proc: ChildProcess | undefined;
  const start = async (): Promise<void> => {
    proc = spawn('mosquitto', ['-c', conf], { stdio: 'ignore' });
    await waitForPort(port);
  };
  await start();
  return {
    url: `mqtt://127.0.0.1:${port}`,
    start,
    dispose: () => rmSync(dir, { recursive: true, force: true }),
    stop: async () => {
      const p = proc;
      if (!p || p.exitCode !== null || p.signalCode !== null) return;
      const exited = new Promise((r) => p.once('exit', r));
      p.kill('SIGTERM');
      await exited;
    },
  };
}

function hasMosquitto(): boolean {
  try {
    execFileSync('sh', ['-c', 'command -v mosquitto'], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
}

const targets: Array<[string, () => Promise<RestartableBroker>]> = [['embedded aedes', embedded]];
if (hasMosquitto()) targets.push(['own mosquitto', mosquitto]);

describe.each(targets)('agent reconnect after a broker restart: %s', (_name, make) => {
  let broker: RestartableBroker;
  let agent: Agent | undefined;
  const clients: MqttClient[] = [];

  afterEach(async () => {
    await agent?.stop({ graceMs: 0 });
    await Promise.all(clients.splice(0).map((c) => endClient(c, true)));
    await broker?.stop().catch(() => undefined);
    broker?.dispose();
  });

  it('publishes fresh metrics after reconnecting and never the samples taken while disconnected', async () => {
    broker = await make();
    const prefix = uniquePrefix('agent-reconnect');
    const samples: Array<{ seq: number; ts: number; published: boolean }> = [];
    agent = createAgent({
      backendId: 'api-r',
      broker: { url: broker.url, reconnectPeriodMs: 200 },
      prefix,
      intervalMs: 200,
      cgroup: false,
    });
    agent.on('sample', (r, { published }) => samples.push({ seq: r.seq, ts: r.ts, published }));
    agent.on('error', () => undefined); // ECONNREFUSED while the broker is down is expected

    const sub1 = await connectClient(broker.url);
    clients.push(sub1);
    const before = inbox(sub1, prefix);
    await sub1.subscribeAsync(subscriptionFilter(prefix), { qos: 1 });
    await agent.start();
    await before.waitFor((r) => r.message.kind === 'metrics', 5000, 'metrics before the restart');

    await broker.stop();
    await until(() => !agent!.connected, 5000, 'the agent to notice');
    const droppedFrom = samples.length;
    await until(
      () => samples.slice(droppedFrom).filter((s) => !s.published).length >= 3,
      5000,
      'samples while down',
    );
    await broker.start();
    const restartedAtMs = Date.now();

    const sub2 = await connectClient(broker.url);
    clients.push(sub2);
    const after = inbox(sub2, prefix);
    await sub2.subscribeAsync(subscriptionFilter(prefix), { qos: 1 });
    // The broker lost its retained state; the agent republishes `online` on reconnect.
    const status = await after.waitFor(
      (r) => r.message.kind === 'status',
      8000,
      'status after reconnect',
    );
    expect(status.message).toMatchObject({ state: 'online' });
    await until(
      () => after.received.filter((r) => r.message.kind === 'metrics').length >= 3,
      8000,
      'fresh metrics',
    );

    const dropped = samples.filter((s) => !s.published);
    expect(dropped.length).toBeGreaterThanOrEqual(3);
    expect(agent.stats.dropped).toBe(dropped.length);
    const droppedSeqs = new Set(dropped.map((s) => s.seq));
    const maxDropped = Math.max(...droppedSeqs);
    const fresh = after.received
      .filter((r) => r.message.kind === 'metrics')
      .map((r) => r.message as MetricsReport);
    for (const m of fresh) {
      expect(droppedSeqs.has(m.seq)).toBe(false);
      expect(m.seq).toBeGreaterThan(maxDropped);
      expect(m.ts).toBeGreaterThanOrEqual(restartedAtMs - 50);
    }
    // The first subscriber was cut off with the old broker and got nothing late either.
    expect(before.received.every((r) => !droppedSeqs.has(r.message.seq))).toBe(true);
    expect(agent.stats.connects).toBe(2);
  });
});
