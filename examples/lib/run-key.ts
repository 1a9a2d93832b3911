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
  key: { keyId: string; secret: Buffer; backends?: string[] };
  /** The key file, mode 0600, for `loadwise-agent --key-file` and `LOADWISE_GW_KEY_FILE`. */
  file: string;
  /** Removes the key file and its directory (done on process exit too). */
  remove(): void;
}

/** Key directories not removed yet: the process's 'exit' removes them. */
const pending = new Set<string>();
let exitHooked = false;

function removeDir(dir: string): void {
  pending.delete(dir);
  rmSync(dir, { recursive: true, force: true });
}

/**
 * Whatever ends the process short of SIGKILL (or a signal it does not handle), its
 * key directories go with it: an error, a process.exit() before the cleanups ran,
 * a lost stdout. `npm start | head -3` left three of them in the temp directory.
 */
function removeOnExit(dir: string): void {
  pending.add(dir);
  if (exitHooked) return;
  exitHooked = true;
  process.on('exit', () => {
    for (const d of pending) {
      try {
        removeDir(d);
      } catch {
        // exiting anyway: nothing more to do about it
      }
    }
  });
}

/**
 * `backends`: the backend ids the key may sign for, written into the key file
 * as its third field (docs/protocol.md, "Signing and replay protection"); the
 * gateway drops what it signs for any other, and an agent refuses to start
 * with a key bound to other backends. Without: any backend.
 */
export function createRunKey(keyId: string, backends?: string[]): RunKey {
  const key = { keyId, secret: randomBytes(32), ...(backends && { backends }) };
  const dir = mkdtempSync(path.join(tmpdir(), `loadwise-${keyId}-`));
  const file = path.join(dir, 'keys');
  const scope = backends ? ` ${backends.join(',')}` : '';
  writeFileSync(file, `${key.keyId} ${key.secret.toString('base64')}${scope}\n`, { mode: 0o600 });
  removeOnExit(dir);
  return { key, file, remove: () => removeDir(dir) };
}
