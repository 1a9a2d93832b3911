/**
 * Runs the Mosquitto configuration of examples/mosquitto/ as shipped, with
 * certificates from its own gen-certs.sh: only the absolute paths (to a temp
 * directory) and the listener (to a free loopback port) are rewritten, and
 * the rewrite checks that nothing else changed.
 */
import { execFileSync } from 'node:child_process';
import { copyFileSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { freePort } from './ports';
import { runMosquitto } from './tls-mosquitto';

export const EXAMPLES = path.resolve(__dirname, '../../examples');
export const MOSQUITTO_EXAMPLE = path.join(EXAMPLES, 'mosquitto');

export interface ExampleBroker {
  port: number;
  /** mqtts://127.0.0.1:<port> (the server certificate's SAN includes 127.0.0.1). */
  url: string;
  /** Directory gen-certs.sh wrote: ca.pem, server.*, <client>.pem/.key. */
  certs: string;
  /** mqtt.js TLS options for a client certificate made by gen-certs.sh. */
  tls(client: string): { ca: Buffer; cert: Buffer; key: Buffer };
  stop(): Promise<void>;
}

/** Runs examples/mosquitto/gen-certs.sh into `dir` for these client names. */
export function genCerts(dir: string, clients: string[]): void {
  execFileSync('sh', [path.join(MOSQUITTO_EXAMPLE, 'gen-certs.sh'), dir, ...clients], {
    stdio: 'ignore',
  });
}

/** loadwise.conf with its paths under `dir` and its listener on `port`; throws if anything else would change. */
export function rewriteConfig(text: string, dir: string, port: number): string {
  const lines = text.split('\n');
  const out = lines.map((l) =>
    l.startsWith('#')
      ? l
      : l
          .replace(/^listener 8883$/, `listener ${port} 127.0.0.1`)
          .replaceAll('/etc/mosquitto/certs/', `${dir}/certs/`)
          .replaceAll('/etc/mosquitto/loadwise.acl', `${dir}/loadwise.acl`),
  );
  const changed = out.filter((l, i) => l !== lines[i]).map((l) => l.split(' ')[0]);
  const expected = ['listener', 'cafile', 'certfile', 'keyfile', 'acl_file'];
  if (changed.join() !== expected.join())
    throw new Error(`unexpected rewrite of loadwise.conf: changed ${changed.join()}`);
  return out.join('\n');
}

export async function startExampleBroker(clients: string[]): Promise<ExampleBroker> {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'lw-example-mqtt-'));
  try {
    const certs = path.join(dir, 'certs');
    genCerts(certs, clients);
    copyFileSync(path.join(MOSQUITTO_EXAMPLE, 'loadwise.acl'), path.join(dir, 'loadwise.acl'));
    const port = await freePort();
    const conf = path.join(dir, 'loadwise.conf');
    writeFileSync(
      conf,
      rewriteConfig(readFileSync(path.join(MOSQUITTO_EXAMPLE, 'loadwise.conf'), 'utf8'), dir, port),
    );
    const broker = await runMosquitto(conf, port, dir);
    return {
      port,
      url: `mqtts://127.0.0.1:${port}`,
      certs,
      tls: (client) => ({
        ca: readFileSync(path.join(certs, 'ca.pem')),
        cert: readFileSync(path.join(certs, `${client}.pem`)),
        key: readFileSync(path.join(certs, `${client}.key`)),
      }),
      async stop() {
        await broker.stop();
        rmSync(dir, { recursive: true, force: true });
      },
    };
  } catch (err) {
    rmSync(dir, { recursive: true, force: true });
    throw err;
  }
}
