/**
 * A Mosquitto of a test's own that requires TLS, a client certificate and a
 * username/password, with a throwaway PKI made by openssl for the run (EC
 * P-256 keys, one-day certificates, the server's SAN is 127.0.0.1). Agent and
 * gateway TLS tests both use it.
 */
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import {
  chmodSync,
  mkdtempSync,
  readFileSync,
  readdirSync,
  rmSync,
  statSync,
  writeFileSync,
} from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { freePort, waitForPort } from './ports';

function have(cmd: string): boolean {
  try {
    execFileSync('sh', ['-c', `command -v ${cmd}`], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
}

/** The binaries these tests need; .ci/run installs mosquitto (which brings mosquitto_passwd). */
export const canRunTlsMosquitto = have('mosquitto') && have('openssl') && have('mosquitto_passwd');

export interface TlsMosquitto {
  port: number;
  /** `mqtts://127.0.0.1:<port>` */
  url: string;
  /** A file of the run: ca.pem, client.pem, client.key, password (the right password). */
  file(name: 'ca.pem' | 'client.pem' | 'client.key' | 'password'): string;
  /** mqtt.js TLS and login options for a client, with the given password. */
  clientOptions(password?: string): {
    ca: Buffer;
    cert: Buffer;
    key: Buffer;
    username: string;
    password: string;
  };
  stop(): Promise<void>;
}

/**
 * Starts `mosquitto -c conf` and waits until it accepts TCP connections on
 * `port`. `dir` holds the files the configuration names: Mosquitto started
 * as root drops to its own user, so they are made readable to it.
 */
export async function runMosquitto(
  conf: string,
  port: number,
  dir: string,
): Promise<{ stop(): Promise<void>; output(): string }> {
  chmodSync(dir, 0o755);
  for (const name of readdirSync(dir, { recursive: true }) as string[]) {
    const p = path.join(dir, name);
    chmodSync(p, statSync(p).isDirectory() ? 0o755 : 0o644);
  }
  const broker: ChildProcess = spawn('mosquitto', ['-c', conf], {
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  let output = '';
  broker
    .stderr!.setEncoding('utf8')
    .on('data', (c: string) => (output = (output + c).slice(-4000)));
  const stop = async (): Promise<void> => {
    if (broker.exitCode === null && broker.signalCode === null) {
      const exited = new Promise((r) => broker.once('exit', r));
      broker.kill('SIGTERM');
      await exited;
    }
  };
  try {
    await waitForPort(port);
  } catch (err) {
    await stop();
    throw new Error(`${(err as Error).message}; mosquitto said: ${output}`);
  }
  return { stop, output: () => output };
}

export async function startTlsMosquitto(login: {
  username: string;
  password: string;
}): Promise<TlsMosquitto> {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'lw-tls-'));
  const f = (name: string): string => path.join(dir, name);
  const ssl = (...args: string[]): void => void execFileSync('openssl', args, { stdio: 'ignore' });
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
  for (const [name, cn] of [
    ['server', '/CN=127.0.0.1'],
    ['client', `/CN=${login.username}`],
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
  execFileSync('mosquitto_passwd', ['-b', '-c', f('passwd'), login.username, login.password], {
    stdio: 'ignore',
  });
  writeFileSync(f('password'), `${login.password}\n`);
  const port = await freePort();
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
  let broker: Awaited<ReturnType<typeof runMosquitto>>;
  try {
    broker = await runMosquitto(f('mosquitto.conf'), port, dir);
  } catch (err) {
    rmSync(dir, { recursive: true, force: true });
    throw err;
  }
  const stop = async (): Promise<void> => {
    await broker.stop();
    rmSync(dir, { recursive: true, force: true });
  };
  return {
    port,
    url: `mqtts://127.0.0.1:${port}`,
    file: f,
    clientOptions: (password = login.password) => ({
      ca: readFileSync(f('ca.pem')),
      cert: readFileSync(f('client.pem')),
      key: readFileSync(f('client.key')),
      username: login.username,
      password,
    }),
    stop,
  };
}
