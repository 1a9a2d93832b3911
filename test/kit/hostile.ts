/**
 * An attacker with publish rights on the broker, in a process of its own
 * (bench/procs/hostile-publisher.ts), so that producing a flood or a 20 MB
 * message never costs the test process (where the gateway runs) CPU or
 * memory. Needs the build (`npx tsc -b`), like every e2e test that spawns a
 * child.
 */
import { fork } from 'node:child_process';
import path from 'node:path';
import type { HostilePublisherConfig } from '../../bench/procs/hostile-publisher';

const SCRIPT = path.resolve(__dirname, '../../bench/dist/procs/hostile-publisher.js');

export interface HostileResult {
  sent: number;
  /** Connections the broker closed on the publisher (e.g. for an oversized packet). */
  closedByBroker: number;
}

/** Runs the publisher to completion; rejects if it fails or takes longer than `timeoutMs`. */
export function runHostile(
  cfg: HostilePublisherConfig,
  timeoutMs = 30_000,
): Promise<HostileResult> {
  const child = fork(SCRIPT, [JSON.stringify(cfg)], { stdio: ['ignore', 'ignore', 'pipe', 'ipc'] });
  let stderr = '';
  child.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`hostile publisher still running after ${timeoutMs} ms`));
    }, timeoutMs);
    let result: HostileResult | undefined;
    child.on('message', (m: { type?: string; sent?: number; closedByBroker?: number }) => {
      if (m.type === 'done') result = { sent: m.sent ?? 0, closedByBroker: m.closedByBroker ?? 0 };
    });
    child.once('exit', (code) => {
      clearTimeout(timer);
      if (result) resolve(result);
      else reject(new Error(`hostile publisher exited ${String(code)}: ${stderr.slice(-500)}`));
    });
  });
}
