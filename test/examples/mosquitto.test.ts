/**
 * examples/mosquitto/: the shipped loadwise.conf and loadwise.acl, run by a
 * real Mosquitto with certificates from the shipped gen-certs.sh. TLS with a
 * client certificate is required; each agent publishes for its own backend
 * only; gateways read and publish nothing; the real agent CLI gets through.
 */
import { spawnSync } from 'node:child_process';
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type { MqttClient } from 'mqtt';
import { connect } from 'mqtt';
import { createEncoder, subscriptionFilter } from '@loadwise/protocol';
import { connectClient, endClient } from '../kit/brokers';
import { inbox, spawnAgent, type AgentProcess } from '../kit/agent-cli';
import { canRunTlsMosquitto } from '../kit/tls-mosquitto';
import { MOSQUITTO_EXAMPLE, startExampleBroker, type ExampleBroker } from '../kit/example-broker';
import { have } from '../kit/pki';

const PREFIX = 'loadwise'; // the ACL is written for the default prefix

(canRunTlsMosquitto ? describe : describe.skip)(
  'examples/mosquitto: TLS and per-agent ACLs',
  () => {
    let broker: ExampleBroker;
    const clients: MqttClient[] = [];
    const agents: AgentProcess[] = [];

    beforeAll(async () => {
      broker = await startExampleBroker(['gateway', 'agent-api-1', 'agent-api-2']);
    }, 30_000);
    afterEach(async () => {
      await Promise.all(agents.splice(0).map((a) => a.kill()));
      await Promise.all(clients.splice(0).map((c) => endClient(c, true)));
    });
    afterAll(async () => {
      await broker?.stop();
    });

    async function as(identity: string): Promise<MqttClient> {
      const c = await connectClient(broker.url, broker.tls(identity));
      clients.push(c);
      return c;
    }

    async function gatewayInbox() {
      const gw = await as('gateway');
      const box = inbox(gw, PREFIX);
      const granted = await gw.subscribeAsync(subscriptionFilter(PREFIX), { qos: 1 });
      expect(granted.map((g) => g.qos)).toEqual([1]);
      return box;
    }

    it('refuses a client without a certificate', async () => {
      const c = connect(broker.url, {
        ca: broker.tls('gateway').ca,
        reconnectPeriod: 0,
        connectTimeout: 5000,
      });
      const outcome = await new Promise<string>((resolve) => {
        c.once('connect', () => resolve('connected'));
        c.once('error', (err) => resolve(`error: ${err.message}`));
        c.once('close', () => resolve('closed'));
      });
      c.end(true);
      expect(outcome).not.toBe('connected');
    });

    it('delivers an agent’s messages for its own backend and drops those for another', async () => {
      const box = await gatewayInbox();
      const agent = await as('agent-api-1');
      const forged = createEncoder({ backendId: 'api-2', prefix: PREFIX }).status('draining');
      const own = createEncoder({ backendId: 'api-1', prefix: PREFIX }).status('online');
      // MQTT 3.1.1 has no negative PUBACK: the broker acknowledges and drops.
      await agent.publishAsync(forged.topic, forged.payload, { qos: 1 });
      await agent.publishAsync(own.topic, own.payload, { qos: 1 });
      await box.waitFor((r) => r.message.backendId === 'api-1', 5000, 'api-1 status');
      // Sent first on the same connection, so it would have arrived first.
      expect(box.received.filter((r) => r.message.backendId === 'api-2')).toEqual([]);
    });

    it('lets neither an agent read other backends nor a gateway publish', async () => {
      const agent = await as('agent-api-1');
      const agentBox = inbox(agent, PREFIX);
      // Mosquitto 2.0 grants the subscription and checks read access per message.
      await agent.subscribeAsync(subscriptionFilter(PREFIX), { qos: 1 });

      const box = await gatewayInbox();
      const gw = await as('gateway');
      const forged = createEncoder({ backendId: 'api-1', prefix: PREFIX }).status('offline');
      await gw.publishAsync(forged.topic, forged.payload, { qos: 1 });
      const api2 = await as('agent-api-2');
      const own = createEncoder({ backendId: 'api-2', prefix: PREFIX }).status('online');
      await api2.publishAsync(own.topic, own.payload, { qos: 1 });
      await box.waitFor((r) => r.message.backendId === 'api-2', 5000, 'api-2 status');
      expect(box.received.filter((r) => r.message.backendId === 'api-1')).toEqual([]);
      // The broker fanned api-2's message out before it reads this publish, and
      // writes to one connection in order: anything forwarded to the agent
      // arrived before this PUBACK.
      const mine = createEncoder({ backendId: 'api-1', prefix: PREFIX }).status('online');
      await agent.publishAsync(mine.topic, mine.payload, { qos: 1 });
      expect(agentBox.received.filter((r) => r.message.backendId === 'api-2')).toEqual([]);
    });

    it('carries the real agent CLI over TLS with its certificate (metrics and status)', async () => {
      const box = await gatewayInbox();
      agents.push(
        spawnAgent([
          '--backend-id',
          'api-1',
          '--broker',
          broker.url,
          '--tls-ca',
          `${broker.certs}/ca.pem`,
          '--tls-cert',
          `${broker.certs}/agent-api-1.pem`,
          '--tls-key',
          `${broker.certs}/agent-api-1.key`,
          '--interval-ms',
          '200',
          '--jitter-ms',
          '0',
          '--no-cgroup',
        ]),
      );
      await box.waitFor(
        (r) => r.message.kind === 'metrics' && r.message.backendId === 'api-1',
        10_000,
        'api-1 metrics',
      );
      await box.waitFor(
        (r) => r.message.kind === 'status' && r.message.backendId === 'api-1',
        5000,
        'api-1 status',
      );
    }, 20_000);
  },
);

/**
 * The commands of docs/operations.md run in examples/mosquitto/ of a git
 * clone: `./gen-certs.sh certs-prod ...` left ca.key, server.key and the
 * client keys untracked (.gitignore had certs/ only), one `git add .` away
 * from a commit. Run here in a git repository of its own holding the shipped
 * script and .gitignore.
 */
(have('git') && have('openssl') ? describe : describe.skip)(
  'examples/mosquitto/gen-certs.sh in a git work tree',
  () => {
    let repo: string;
    let dir: string;
    beforeAll(() => {
      repo = mkdtempSync(path.join(os.tmpdir(), 'lw-gen-certs-git-'));
      dir = path.join(repo, 'examples', 'mosquitto');
      mkdirSync(dir, { recursive: true });
      for (const f of ['gen-certs.sh', '.gitignore'])
        copyFileSync(path.join(MOSQUITTO_EXAMPLE, f), path.join(dir, f));
      spawnSync('git', ['init', '-q'], { cwd: repo });
    });
    afterAll(() => rmSync(repo, { recursive: true, force: true }));

    const genCerts = (out: string) =>
      spawnSync('sh', ['./gen-certs.sh', out, 'gateway', 'agent-api-1'], {
        cwd: dir,
        encoding: 'utf8',
      });
    const untracked = (): string =>
      spawnSync('git', ['status', '--porcelain', '--untracked-files=all'], {
        cwd: repo,
        encoding: 'utf8',
      }).stdout;

    it.each(['certs', 'certs-prod'])('writes %s/, which git ignores', (out) => {
      const r = genCerts(out);
      expect(r.status).toBe(0);
      expect(existsSync(path.join(dir, out, 'ca.key'))).toBe(true);
      expect(untracked()).not.toMatch(/\.(key|pem)$/m);
    });

    it('refuses a directory whose keys git would not ignore, before writing anything', () => {
      const r = genCerts('prod/tls');
      expect(r.status).toBe(2);
      expect(r.stderr).toMatch(/^prod\/tls is inside a git work tree that does not ignore ca\.key/);
      expect(r.stderr.split('\n')).toHaveLength(2);
      expect(existsSync(path.join(dir, 'prod'))).toBe(false);
    });
  },
);
