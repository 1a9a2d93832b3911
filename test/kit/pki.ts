/**
 * A throwaway PKI made by the `openssl` binary for one test run: CAs and the
 * certificates they sign, EC P-256 keys, valid for a day, as files in a
 * directory (`<name>.pem`, `<name>.key`). The Mosquitto TLS kit
 * (tls-mosquitto.ts) and the backend TLS tests use it; gate a suite on
 * `canRunOpenssl`.
 */
import { execFileSync } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';

/** Whether a command is on PATH. */
export function have(cmd: string): boolean {
  try {
    execFileSync('sh', ['-c', `command -v ${cmd}`], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
}

export const canRunOpenssl = have('openssl');

export interface Pki {
  /** A file of the PKI's directory by name (`ca.pem`, `server.key`). */
  file(name: string): string;
  /** `<name>.pem` or, with `.key`, the key: a file's bytes. */
  read(name: string): Buffer;
  /** A self-signed CA: `<name>.pem` and `<name>.key`. */
  ca(name: string): void;
  /**
   * A certificate `<name>.pem` (and its key) with subject CN `cn`, signed by
   * the CA named `ca`; `san` is its subjectAltName, e.g. `IP:127.0.0.1` or
   * `DNS:backend.internal` (none without it).
   */
  issue(name: string, cn: string, ca: string, san?: string): void;
}

/** A PKI whose files go into `dir` (the caller makes and removes it). */
export function createPki(dir: string): Pki {
  const file = (name: string): string => path.join(dir, name);
  const ssl = (...args: string[]): void => void execFileSync('openssl', args, { stdio: 'ignore' });
  const ec = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes'];
  return {
    file,
    read: (name) => readFileSync(file(name)),
    ca(name) {
      ssl(
        'req',
        '-x509',
        ...ec,
        '-keyout',
        file(`${name}.key`),
        '-out',
        file(`${name}.pem`),
        '-days',
        '1',
        '-subj',
        `/CN=lw-test-${name}`,
      );
    },
    issue(name, cn, ca, san) {
      ssl(
        'req',
        ...ec,
        '-keyout',
        file(`${name}.key`),
        '-out',
        file(`${name}.csr`),
        '-subj',
        `/CN=${cn}`,
      );
      if (san !== undefined) writeFileSync(file(`${name}.ext`), `subjectAltName=${san}\n`);
      ssl(
        'x509',
        '-req',
        '-in',
        file(`${name}.csr`),
        '-CA',
        file(`${ca}.pem`),
        '-CAkey',
        file(`${ca}.key`),
        '-CAcreateserial',
        '-out',
        file(`${name}.pem`),
        '-days',
        '1',
        ...(san !== undefined ? ['-extfile', file(`${name}.ext`)] : []),
      );
    },
  };
}
