/**
 * A broker that refuses the connection (CONNACK "Not authorized": a password
 * file being rolled out, an auth plugin not loaded yet after a restart) and
 * accepts it later. mqtt.js stops reconnecting after one refused CONNACK
 * unless told otherwise: the agent published nothing more and the gateway
 * routed on local signals for good, both alive and silent about it.
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { createAgent, type Agent } from '@loadwise/health-agent';
import { canRunTlsMosquitto, runMosquitto } from '../kit/tls-mosquitto';
import { startLocalGateway, type TestGateway } from '../kit/gateway';
import { startBackend, type TestServer } from '../kit/http';
import { uniquePrefix } from '../kit/brokers';
import { until } from '../kit/agent-http';
import { freePort } from '../kit/ports';

const maybe = canRunTlsMosquitto ? describe : describe.skip;

maybe('a broker that refuses the connection, then accepts it', () => {
  let dir: string;
  let port: number;
  let broker: { stop(): Promise<void> } | undefined;
  let agent: Agent | undefined;
  let gw: TestGateway | undefined;
  let backend: TestServer | undefined;

  /** Mosquitto on the test's port: anonymous clients refused, or let in. */
  async function start(anonymous: boolean): Promise<void> {
    const conf = path.join(dir, `${anonymous}.conf`);
    writeFileSync(conf, `listener ${port} 127.0.0.1\nallow_anonymous ${anonymous}\n`);
    broker = await runMosquitto(conf, port, dir);
  }

  beforeAll(async () => {
    dir = mkdtempSync(path.join(os.tmpdir(), 'lw-refused-'));
    port = await freePort();
    backend = await startBackend('a');
  });
  afterAll(async () => {
    await agent?.stop({ graceMs: 0 });
    await gw?.close();
    await backend?.close();
    await broker?.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  it('the agent and the gateway both connect once the broker lets them in', async () => {
    await start(false);
    const url = `mqtt://127.0.0.1:${port}`;
    const prefix = uniquePrefix('refused');
    const agentErrors: string[] = [];
    agent = createAgent({
      backendId: 'a',
      broker: { url, reconnectPeriodMs: 100 },
      prefix,
      intervalMs: 200,
      cgroup: false,
    });
    agent.on('error', (err: Error) => agentErrors.push(err.message));
    await agent.start();
    gw = await startLocalGateway({
      backends: [{ id: 'a', url: backend!.url }],
      broker: { url, reconnectPeriodMs: 100 },
      topicPrefix: prefix,
      allowUnsigned: true,
    });
    await until(() => agentErrors.some((m) => /not authori[sz]ed/i.test(m)), 5000, 'a refusal');
    expect(agent.connected).toBe(false);
    expect(gw.lb.balancer.brokerConnected).toBe(false);

    await broker!.stop();
    await start(true);
    await until(() => agent!.connected, 10_000, 'the agent to connect');
    await until(() => gw!.lb.balancer.brokerConnected === true, 10_000, 'the gateway to connect');
  }, 30_000);
});
