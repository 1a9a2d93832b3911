import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { chmodSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { connect as netConnect, createServer, type AddressInfo } from 'node:net';
import os from 'node:os';
import path from 'node:path';
import type { MqttClient } from 'mqtt';
import { subscriptionFilter } from '@loadwise/protocol';
import { connectClient, endClient, uniquePrefix } from '../kit/brokers';
import { inbox, spawnAgent, type AgentProcess } from '../kit/agent-cli';

/**
 * The agent against a Mosquitto that requires TLS, a client certificate and a
 * username/password: certificates are made with openssl for this test run.
 */
function have(cmd: string): boolean {
  try {
    execFileSync('sh', ['-c', `command -v ${cmd}`], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
}
const canRun = have('mosquitto') && have('openssl') && have('mosquitto_passwd');

async function freePort(): Promise<number> {
  const srv = createServer();
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', () => r()));
  const { port } = srv.address() as AddressInfo;
  await new Promise<void>((r) => srv.close(() => r()));
  return port;
}

async function waitForPort(port: number, timeoutMs = 5000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const ok = await new Promise<boolean>((resolve) => {
      const s = netConnect(port, '127.0.0.1');
      s.once('connect', () => (s.destroy(), resolve(true)));
      s.once('error', () => resolve(false));
    });
    if (ok) return;
    if (Date.now() > deadline) throw new Error(`mosquitto did not listen on ${port}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

(canRun ? describe : describe.skip)(
  'agent over TLS with client certificates and a password (own Mosquitto)',
  () => {
    let dir: string;
    let port: number;
    let broker: ChildProcess;
    const agents: AgentProcess[] = [];
    const clients: MqttClient[] = [];
    const f = (name: string): string => path.join(dir, name);
    const ssl = (...args: string[]): void =>
      void execFileSync('openssl', args, { stdio: 'ignore' });

    beforeAll(async () => {
      dir = mkdtempSync(path.join(os.tmpdir(), 'lw-tls-'));
      const ec = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes'];
      ssl(
        'req',
        '-x509',
        ...ec,
        '-keyout',
        f('ca.key'),
        '-out',
        f('ca.pem'),
        '-days',
        '1',
        '-subj',
        '/CN=lw-test-ca',
      );
      writeFileSync(f('san.ext'), 'subjectAltName=IP:127.0.0.1\n');
      ssl(
        'req',
        ...ec,
        '-keyout',
        f('server.key'),
        '-out',
        f('server.csr'),
        '-subj',
        '/CN=127.0.0.1',
      );
      ssl(
        'x509',
        '-req',
        '-in',
        f('server.csr'),
        '-CA',
        f('ca.pem'),
        '-CAkey',
        f('ca.key'),
        '-CAcreateserial',
        '-out',
        f('server.pem'),
        '-days',
        '1',
        '-extfile',
        f('san.ext'),
      );
      ssl(
        'req',
        ...ec,
        '-keyout',
        f('client.key'),
        '-out',
        f('client.csr'),
        '-subj',
        '/CN=lw-agent',
      );
      ssl(
        'x509',
        '-req',
        '-in',
        f('client.csr'),
        '-CA',
        f('ca.pem'),
        '-CAkey',
        f('ca.key'),
        '-CAcreateserial',
        '-out',
        f('client.pem'),
        '-days',
        '1',
      );
      execFileSync('mosquitto_passwd', ['-b', '-c', f('passwd'), 'agent', 'agent-pass'], {
        stdio: 'ignore',
      });
      writeFileSync(f('password'), 'agent-pass\n');
      port = await freePort();
      writeFileSync(
        f('mosquitto.conf'),
        [
          `listener ${port} 127.0.0.1`,
          `cafile ${f('ca.pem')}`,
          `certfile ${f('server.pem')}`,
          `keyfile ${f('server.key')}`,
          'require_certificate true',
          'allow_anonymous false',
          `password_file ${f('passwd')}`,
          '',
        ].join('\n'),
      );
      // Mosquitto started as root drops to its own user: let it read the test files.
      chmodSync(dir, 0o755);
      for (const name of readdirSync(dir)) chmodSync(f(name), 0o644);
      broker = spawn('mosquitto', ['-c', f('mosquitto.conf')], { stdio: 'ignore' });
      await waitForPort(port);
    });

    afterEach(async () => {
      await Promise.all(agents.splice(0).map((a) => a.kill()));
      await Promise.all(clients.splice(0).map((c) => endClient(c, true)));
    });

    afterAll(async () => {
      if (broker && broker.exitCode === null) {
        const exited = new Promise((r) => broker.once('exit', r));
        broker.kill('SIGTERM');
        await exited;
      }
      rmSync(dir, { recursive: true, force: true });
    });

    const tls = () => ({
      ca: readFileSync(f('ca.pem')),
      cert: readFileSync(f('client.pem')),
      key: readFileSync(f('client.key')),
      username: 'agent',
      password: 'agent-pass',
    });

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
