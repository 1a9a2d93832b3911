/**
 * Mosquitto instances of a test's own.
 *
 * startTlsMosquitto: requires TLS, a client certificate and a
 * username/password, with a throwaway PKI made by openssl for the run (EC
 * P-256 keys, one-day certificates, the server's SAN is 127.0.0.1). Every
 * user gets a password entry (mosquitto_passwd) and a client certificate
 * whose CN is the username; an optional ACL file says who may publish or
 * subscribe where. A second CA ("rogue") signs certificates the broker must
 * refuse. Agent and gateway TLS tests, and the broker security tests, use it.
 *
 * startMosquitto: a plain loopback listener with extra configuration lines
 * (e.g. a bridge to a TLS one).
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
import { createPki, have } from './pki';
import { freePort, waitForPort } from './ports';

/** The binaries these tests need; .ci/run installs mosquitto (which brings mosquitto_passwd). */
export const canRunTlsMosquitto = have('mosquitto') && have('openssl') && have('mosquitto_passwd');

export interface MosquittoUser {
  username: string;
  password: string;
}

export interface TlsMosquittoOptions {
  /** The first user's files are also client.pem, client.key and password. */
  users: MosquittoUser[];
  /** Lines of an ACL file (acl_file); without one, every authenticated user may do anything. */
  acl?: string[];
  /** Further mosquitto.conf lines (e.g. `max_packet_size 65536`). */
  config?: string[];
}

export interface TlsClientOptions {
  ca: Buffer;
  cert: Buffer;
  key: Buffer;
  username: string;
  password: string;
}

export interface TlsMosquitto {
  port: number;
  /** `mqtts://127.0.0.1:<port>` */
  url: string;
  /**
   * A file of the run: ca.pem; client.pem, client.key, password (the first
   * user's); <user>.pem, <user>.key, <user>.password; rogue-<user>.pem and
   * .key (signed by a CA the broker does not trust).
   */
  file(name: string): string;
  /** mqtt.js TLS and login options of the first user, with the given password. */
  clientOptions(password?: string): TlsClientOptions;
  /** The same for any user; `rogue`: a certificate from the untrusted CA. */
  clientOptionsFor(
    username: string,
    opts?: { password?: string; rogue?: boolean },
  ): TlsClientOptions;
  stop(): Promise<void>;
}

function makeDir(label: string): { dir: string; f: (name: string) => string } {
  const dir = mkdtempSync(path.join(os.tmpdir(), label));
  return { dir, f: (name) => path.join(dir, name) };
}

/**
 * Starts `mosquitto -c conf` and waits until it accepts TCP connections on
 * `port`. `dir` holds the files the configuration names: Mosquitto started
 * as root drops to its own user, so they are made readable to it. stop()
 * ends the broker; the caller owns `dir`.
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

/** runMosquitto for a directory of the kit's own: stop() removes it too. */
async function runOwnMosquitto(
  dir: string,
  conf: string,
  port: number,
): Promise<{ stop(): Promise<void> }> {
  try {
    const broker = await runMosquitto(conf, port, dir);
    return {
      stop: async () => {
        await broker.stop();
        rmSync(dir, { recursive: true, force: true });
      },
    };
  } catch (err) {
    rmSync(dir, { recursive: true, force: true });
    throw err;
  }
}

export async function startTlsMosquitto(
  opts: MosquittoUser | TlsMosquittoOptions,
): Promise<TlsMosquitto> {
  const o: TlsMosquittoOptions = 'users' in opts ? opts : { users: [opts] };
  const first = o.users[0];
  if (!first) throw new Error('startTlsMosquitto needs at least one user');
  const { dir, f } = makeDir('lw-tls-');
  const pki = createPki(dir);
  pki.ca('ca');
  pki.ca('rogue-ca');
  pki.issue('server', '127.0.0.1', 'ca', 'IP:127.0.0.1');
  o.users.forEach((u, i) => {
    pki.issue(u.username, u.username, 'ca');
    pki.issue(`rogue-${u.username}`, u.username, 'rogue-ca');
    execFileSync(
      'mosquitto_passwd',
      ['-b', ...(i === 0 ? ['-c'] : []), f('passwd'), u.username, u.password],
      { stdio: 'ignore' },
    );
    writeFileSync(f(`${u.username}.password`), `${u.password}\n`);
  });
  writeFileSync(f('client.pem'), readFileSync(f(`${first.username}.pem`)));
  writeFileSync(f('client.key'), readFileSync(f(`${first.username}.key`)));
  writeFileSync(f('password'), `${first.password}\n`);
  if (o.acl) writeFileSync(f('acl'), `${o.acl.join('\n')}\n`);
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
      ...(o.acl ? [`acl_file ${f('acl')}`] : []),
      ...(o.config ?? []),
      '',
    ].join('\n'),
  );
  const { stop } = await runOwnMosquitto(dir, f('mosquitto.conf'), port);
  const clientOptionsFor: TlsMosquitto['clientOptionsFor'] = (username, opt = {}) => {
    const user = o.users.find((u) => u.username === username);
    if (!user) throw new Error(`no user ${username}`);
    const prefix = opt.rogue ? `rogue-${username}` : username;
    return {
      ca: readFileSync(f('ca.pem')),
      cert: readFileSync(f(`${prefix}.pem`)),
      key: readFileSync(f(`${prefix}.key`)),
      username,
      password: opt.password ?? user.password,
    };
  };
  return {
    port,
    url: `mqtts://127.0.0.1:${port}`,
    file: f,
    clientOptions: (password) => clientOptionsFor(first.username, { password }),
    clientOptionsFor,
    stop,
  };
}

export interface PlainMosquitto {
  port: number;
  /** `mqtt://127.0.0.1:<port>` */
  url: string;
  stop(): Promise<void>;
}

/** A plain loopback Mosquitto (anonymous clients allowed) with `config` lines added. */
export async function startMosquitto(config: string[] = []): Promise<PlainMosquitto> {
  const { dir, f } = makeDir('lw-mosq-');
  const port = await freePort();
  writeFileSync(
    f('mosquitto.conf'),
    [`listener ${port} 127.0.0.1`, 'allow_anonymous true', ...config, ''].join('\n'),
  );
  const { stop } = await runOwnMosquitto(dir, f('mosquitto.conf'), port);
  return { port, url: `mqtt://127.0.0.1:${port}`, stop };
}
