import { readFile } from 'node:fs/promises';
import * as v from 'valibot';
import { int, strictObject } from '../option-errors';
import { defineQueueSource } from './source';
import type { QueueReading, QueueSourceReader } from './types';

/**
 * Zero-code queue figures from the kernel's socket tables, /proc/net/tcp and
 * /proc/net/tcp6 (proc(5); format from net/ipv4/tcp_ipv4.c get_tcp4_sock):
 * `sl local_address rem_address st tx_queue:rx_queue ...`, ports in hex.
 * For a socket in LISTEN (st 0A) rx_queue is the accept queue's current length
 * (sk_ack_backlog); tx_queue is 0 there (only inet_diag, `ss`'s Send-Q, gives
 * the backlog limit, checked on Linux 6.1: backlog 7 with 8 waiting reads
 * `00000000:00000008`); ESTABLISHED is st 01.
 */
const ESTABLISHED = '01';
const LISTEN = '0A';

export interface KernelCounts {
  acceptBacklog: number;
  openConnections: number;
  listening: boolean;
}

export function countSockets(tables: readonly string[], port: number): KernelCounts {
  const portHex = port.toString(16).toUpperCase().padStart(4, '0');
  const counts: KernelCounts = {
    acceptBacklog: 0,
    openConnections: 0,
    listening: false,
  };
  // The port as either address of a line prints it: most lines of a busy host's table are
  // other ports', and splitting each of them cost 7 ms per 6,000 lines (against 16 ms of the
  // kernel's formatting); skipping them first, 0.1 ms.
  const token = `:${portHex} `;
  for (const table of tables) {
    let start = table.indexOf('\n') + 1; // skip the header line
    while (start > 0 && start < table.length) {
      let end = table.indexOf('\n', start);
      if (end < 0) end = table.length;
      const at = table.indexOf(token, start);
      if (at < 0) break; // no line left mentions the port
      if (at > end) {
        // The next line that mentions it: jump to its start.
        start = table.lastIndexOf('\n', at) + 1;
        continue;
      }
      const line = table.slice(start, end);
      start = end + 1;
      const f = line.trim().split(/\s+/);
      const local = f[1];
      const st = f[3];
      const queues = f[4];
      if (!local || !st || !queues) continue;
      if (local.slice(local.indexOf(':') + 1) !== portHex) continue;
      if (st === ESTABLISHED) {
        counts.openConnections++;
      } else if (st === LISTEN) {
        const colon = queues.indexOf(':');
        const rx = colon < 0 ? '' : queues.slice(colon + 1);
        counts.listening = true;
        counts.acceptBacklog += parseInt(rx, 16) || 0;
      }
    }
  }
  return counts;
}

/**
 * A full read of both tables re-checks which of them list the port's
 * listeners this often (kernelSource).
 */
export const TABLES_RECHECK_MS = 30_000;
const TABLES = ['tcp', 'tcp6'] as const;

/**
 * Reads the tables every interval. Both tables are whole-table reads (every
 * established connection on the port must be counted), and each costs the
 * kernel a line per socket of its family plus a walk of its whole connection
 * hash: 3.5-5 ms each with few connections, 7-19 ms with 1,500 open
 * (`npm run bench:accept-queue-read`, "whole" columns). A listener's
 * connections are all in its own table (an IPv4 client of a dual-stack `::`
 * listener has a v4-mapped IPv6 socket), so after a read of both, only the
 * tables that list a listener on the port are read, with both again every
 * TABLES_RECHECK_MS, or at once when the listener is no longer where it was.
 */
export function kernelSource(
  port: number,
  procRoot: string,
  now: () => number = Date.now,
): QueueSourceReader {
  let known: { tables: readonly string[]; atMs: number } | undefined;
  const readTables = (names: readonly string[]): Promise<string[]> =>
    Promise.all(names.map((name) => readFile(`${procRoot}/net/${name}`, 'utf8').catch(() => '')));
  const reading = (c: KernelCounts): QueueReading => ({
    queue: {
      acceptBacklog: c.acceptBacklog,
      openConnections: c.openConnections,
      source: { acceptBacklog: 'kernel', openConnections: 'kernel' },
    },
  });
  return {
    countsConnections: true,
    async read(): Promise<QueueReading> {
      const t = now();
      if (known && t - known.atMs < TABLES_RECHECK_MS && t >= known.atMs) {
        const c = countSockets(await readTables(known.tables), port);
        if (c.listening) return reading(c);
        // Not where it was (restarted on another address): read both now.
      }
      const tables = await readTables(TABLES);
      if (tables.every((x) => x === '')) throw new Error(`cannot read ${procRoot}/net/tcp`);
      // Each table counted on its own: the sum is the reading, and where a listener is
      // is what the next reads need.
      const each = tables.map((table) => countSockets([table], port));
      if (!each.some((c) => c.listening)) {
        known = undefined;
        throw new Error(`nothing listens on port ${port}`);
      }
      known = { tables: TABLES.filter((_, i) => each[i]!.listening), atMs: t };
      return reading({
        acceptBacklog: each.reduce((sum, c) => sum + c.acceptBacklog, 0),
        openConnections: each.reduce((sum, c) => sum + c.openConnections, 0),
        listening: true,
      });
    },
  };
}

/** `{ source: 'kernel', port }`, --kernel-port. */
export const kernelQueueSource = defineQueueSource('kernel', {
  schema: strictObject({ source: v.literal('kernel'), port: int(1, 65535) }),
  resolve: (q) => q,
  create: (q, ctx) => kernelSource(q.port, ctx.procRoot),
  cli: [
    {
      flag: 'kernel-port',
      option: 'queue.port',
      implies: { 'queue.source': 'kernel' },
      kind: 'int',
      arg: 'port',
      help: 'Queue source: read accept backlog and established connections of this port from /proc/net/tcp*',
    },
  ],
});
