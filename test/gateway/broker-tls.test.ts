/**
 * The gateway against a Mosquitto that requires TLS, a client certificate and
 * a username/password (certificates made with openssl for this run): the
 * broker options reach mqtt.js, and a refused login leaves routing working.
 */
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { chmodSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { connect as netConnect } from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { createEncoder } from '@loadwise/protocol';
import { connectClient, endClient, uniquePrefix } from '../kit/brokers';
import {
  refusedPort,
  send,
  startBackend,
  startGateway,
  type TestGateway,
  type TestServer,
} from './kit';

function have(cmd: string): boolean {
  try {
    execFileSync('sh', ['-c', `command -v ${cmd}`], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
}

async function waitForPort(port: number): Promise<void> {
  for (let i = 0; i < 250; i++) {
    const ok = await new Promise<boolean>((resolve) => {
      const s = netConnect(port, '127.0.0.1');
      s.once('connect', () => (s.destroy(), resolve(true)));
      s.once('error', () => resolve(false));
    });
    if (ok) return;
    await new Promise((r) => setTimeout(r, 20));
  }
  throw new Error(`mosquitto did not listen on ${port}`);
}

(have('mosquitto') && have('openssl') && have('mosquitto_passwd') ? describe : describe.skip)(
  'gateway over mqtts with a client certificate and a password (own Mosquitto)',
  () => {
    let dir: string;
    let port: number;
    let broker: ChildProcess;
    let a: TestServer;
    let gw: TestGateway | undefined;
    const f = (name: string): string => path.join(dir, name);
    const ssl = (...args: string[]): void =>
      void execFileSync('openssl', args, { stdio: 'ignore' });

    beforeAll(async () => {
      a = await startBackend('a');
      dir = mkdtempSync(path.join(os.tmpdir(), 'lw-gw-tls-'));
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
        '/CN=lw-ca',
      );
      writeFileSync(f('san.ext'), 'subjectAltName=IP:127.0.0.1\n');
      for (const [name, cn] of [
        ['server', '/CN=127.0.0.1'],
        ['client', '/CN=lw-gateway'],
      ] as const) {
        ssl('req', ...ec, '-keyout', f(`${name}.key`), '-out', f(`${name}.csr`), '-subj', cn);
        ssl(
          'x509',
          '-req',
          '-in',
          f(`${name}.csr`),
          '-CA',
          f('ca.pem'),
          '-CAkey',
          f('ca.key'),
          '-CAcreateserial',
          '-out',
          f(`${name}.pem`),
          '-days',
          '1',
          ...(name === 'server' ? ['-extfile', f('san.ext')] : []),
        );
      }
      execFileSync('mosquitto_passwd', ['-b', '-c', f('passwd'), 'gw', 'gw-pass'], {
        stdio: 'ignore',
      });
      port = await refusedPort();
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
      // Mosquitto started as root drops to its own user: let it read the files.
      chmodSync(dir, 0o755);
      for (const name of readdirSync(dir)) chmodSync(f(name), 0o644);
      broker = spawn('mosquitto', ['-c', f('mosquitto.conf')], { stdio: 'ignore' });
      await waitForPort(port);
    });

    afterEach(async () => {
      await gw?.close();
      gw = undefined;
    });

    afterAll(async () => {
      if (broker && broker.exitCode === null) {
        const exited = new Promise((r) => broker.once('exit', r));
        broker.kill('SIGTERM');
        await exited;
      }
      rmSync(dir, { recursive: true, force: true });
      await a.close();
    });

    const tls = (password: string) => ({
      url: `mqtts://127.0.0.1:${port}`,
      ca: readFileSync(f('ca.pem')),
      cert: readFileSync(f('client.pem')),
      key: readFileSync(f('client.key')),
      username: 'gw',
      password,
    });

    it('receives reports over TLS with a client certificate and a password', async () => {
      const prefix = uniquePrefix('gw-tls');
      gw = await startGateway({
        backends: [{ id: 'a', url: a.url }],
        broker: tls('gw-pass'),
        topicPrefix: prefix,
      });
      await gw.lb.ready();
      const { url, ...clientTls } = tls('gw-pass');
      const agent = await connectClient(url, clientTls);
      try {
        const m = createEncoder({ backendId: 'a', prefix }).metrics({
          intervalMs: 1000,
          state: 'online',
          host: { cpuUtilization: 0.2, memoryUtilization: 0.2, memoryAvailableBytes: 1 },
          health: { verdict: 'up' },
        });
        while (!gw.lb.balancer.snapshot().backends[0]!.reportFresh) {
          await agent.publishAsync(m.topic, m.payload, { qos: 1 });
          await new Promise((r) => setTimeout(r, 20));
        }
        expect(gw.lb.balancer.brokerConnected).toBe(true);
      } finally {
        await endClient(agent);
      }
    });

    it('keeps routing on local signals when the broker refuses the login', async () => {
      gw = await startGateway({
        backends: [{ id: 'a', url: a.url }],
        broker: { ...tls('wrong'), reconnectPeriodMs: 100 },
      });
      await new Promise((r) => setTimeout(r, 300));
      expect(gw.lb.balancer.brokerConnected).toBe(false);
      expect((await send(`${gw.url}/`)).status).toBe(200);
    });
  },
);
