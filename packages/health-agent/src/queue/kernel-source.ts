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
  for (const table of tables) {
    let start = table.indexOf('\n') + 1; // skip the header line
    while (start > 0 && start < table.length) {
      let end = table.indexOf('\n', start);
      if (end < 0) end = table.length;
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

export function kernelSource(port: number, procRoot: string): QueueSourceReader {
  return {
    async read(): Promise<QueueReading> {
      const tables = await Promise.all(
        ['tcp', 'tcp6'].map((name) => readFile(`${procRoot}/net/${name}`, 'utf8').catch(() => '')),
      );
      if (tables.every((t) => t === '')) throw new Error(`cannot read ${procRoot}/net/tcp`);
      const c = countSockets(tables, port);
      if (!c.listening) throw new Error(`nothing listens on port ${port}`);
      return {
        queue: {
          acceptBacklog: c.acceptBacklog,
          openConnections: c.openConnections,
          source: { acceptBacklog: 'kernel', openConnections: 'kernel' },
        },
      };
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
