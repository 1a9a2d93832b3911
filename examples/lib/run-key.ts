/**
 * A signing key for one run of an example. The gateway refuses unsigned
 * reports by default (SECURITY.md): the agents sign with this key
 * (`--key-file`) and the gateway verifies with it (`keys`). In production the
 * key file comes from `openssl rand -base64 32` and your secret store.
 */
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';

export interface RunKey {
  /** For `loadBalance({ keys })`. */
  key: { keyId: string; secret: Buffer };
  /** The key file, mode 0600, for `loadwise-agent --key-file` and `LOADWISE_GW_KEY_FILE`. */
  file: string;
  /** Removes the key file and its directory. */
  remove(): void;
}

export function createRunKey(keyId: string): RunKey {
  const key = { keyId, secret: randomBytes(32) };
  const dir = mkdtempSync(path.join(tmpdir(), `loadwise-${keyId}-`));
  const file = path.join(dir, 'keys');
  writeFileSync(file, `${key.keyId} ${key.secret.toString('base64')}\n`, { mode: 0o600 });
  return { key, file, remove: () => rmSync(dir, { recursive: true, force: true }) };
}
