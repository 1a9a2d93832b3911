import type { MqttClient } from 'mqtt';
import { subscriptionFilter } from '@loadwise/protocol';
import { connectClient, endClient, uniquePrefix } from '../kit/brokers';
import { inbox, spawnAgent, type AgentProcess } from '../kit/agent-cli';
import { canRunTlsMosquitto, startTlsMosquitto, type TlsMosquitto } from '../kit/tls-mosquitto';

/**
 * The agent against a Mosquitto that requires TLS, a client certificate and a
 * username/password: certificates are made with openssl for this test run.
 */
(canRunTlsMosquitto ? describe : describe.skip)(
  'agent over TLS with client certificates and a password (own Mosquitto)',
  () => {
    let broker: TlsMosquitto;
    let port: number;
    const agents: AgentProcess[] = [];
    const clients: MqttClient[] = [];
    const f = (name: 'ca.pem' | 'client.pem' | 'client.key' | 'password'): string =>
      broker.file(name);

    beforeAll(async () => {
      broker = await startTlsMosquitto({ username: 'agent', password: 'agent-pass' });
      port = broker.port;
    });

    afterEach(async () => {
      await Promise.all(agents.splice(0).map((a) => a.kill()));
      await Promise.all(clients.splice(0).map((c) => endClient(c, true)));
    });

    afterAll(async () => {
      await broker?.stop();
    });

    const tls = () => broker.clientOptions();

    it('publishes metrics over mqtts with a client certificate and a password file', async () => {
      const prefix = uniquePrefix('agent-tls');
      const sub = await connectClient(`mqtts://127.0.0.1:${port}`, tls());
      clients.push(sub);
      const box = inbox(sub, prefix);
      await sub.subscribeAsync(subscriptionFilter(prefix), { qos: 1 });
      const agent = spawnAgent([
        '--backend-id',
        'tls-1',
        '--broker',
        `mqtts://127.0.0.1:${port}`,
        '--prefix',
        prefix,
        '--interval-ms',
        '200',
        '--tls-ca',
        f('ca.pem'),
        '--tls-cert',
        f('client.pem'),
        '--tls-key',
        f('client.key'),
        '--username',
        'agent',
        '--password-file',
        f('password'),
        '--no-cgroup',
      ]);
      agents.push(agent);
      await box.waitFor(
        (r) => r.message.kind === 'status' && r.message.state === 'online',
        8000,
        'online over TLS',
      );
      await box.waitFor((r) => r.message.kind === 'metrics', 8000, 'metrics over TLS');
    });

    it('logs the refusal and keeps retrying when the password is wrong', async () => {
      const agent = spawnAgent(
        [
          '--backend-id',
          'tls-2',
          '--broker',
          `mqtts://127.0.0.1:${port}`,
          '--interval-ms',
          '200',
          '--tls-ca',
          f('ca.pem'),
          '--tls-cert',
          f('client.pem'),
          '--tls-key',
          f('client.key'),
          '--username',
          'agent',
          '--reconnect-ms',
          '200',
          '--no-cgroup',
        ],
        { LOADWISE_PASSWORD: 'wrong' },
      );
      agents.push(agent);
      const deadline = Date.now() + 8000;
      while (
        !/Not authorized|Bad User Name or Password/i.test(agent.stderr()) &&
        Date.now() < deadline
      ) {
        await new Promise((r) => setTimeout(r, 50));
      }
      expect(agent.stderr()).toMatch(/Not authorized|Bad User Name or Password/i);
      expect(agent.child.exitCode).toBeNull(); // a daemon keeps trying; it does not exit
    });
  },
);
