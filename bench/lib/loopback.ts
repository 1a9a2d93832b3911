/**
 * Loopback sockets for the benchmarks that time reads of the kernel's socket
 * tables (bench/hostile/accept-queue-read.ts, bench/agent-cost/kernel-read.ts).
 */
import net from 'node:net';

/** A TCP listener on `host`, port 0, that accepts and holds connections. */
async function listener(host: string): Promise<Listener> {
  const server = net.createServer((s) => s.on('error', () => undefined));
  await new Promise<void>((r) => server.listen({ port: 0, host, backlog: 4096 }, r));
  return { server, port: (server.address() as net.AddressInfo).port };
}

/** `n` connections from 127.0.0.1 to `port`, opened 100 at a time, all connected. */
async function connect(port: number, n: number): Promise<net.Socket[]> {
  const sockets: net.Socket[] = [];
  for (let i = 0; i < n; i++) {
    const s = net.connect(port, '127.0.0.1');
    s.on('error', () => undefined);
    sockets.push(s);
    if (i % 100 === 99) await new Promise((r) => s.once('connect', r));
  }
  await Promise.all(
    sockets.map((s) => (s.connecting ? new Promise((r) => s.once('connect', r)) : 0)),
  );
  return sockets;
}

export interface Listener {
  server: net.Server;
  port: number;
}

/**
 * An IPv4 listener (127.0.0.1) and a dual-stack one (`::`), measured by `row`
 * with no connection open and then with `n` open to each; both closed after.
 */
export async function withOpenConnections(
  n: number,
  row: (open: number, v4: Listener, v6: Listener) => Promise<string> | string,
): Promise<string[]> {
  const v4 = await listener('127.0.0.1');
  const v6 = await listener('::');
  const rows: string[] = [];
  try {
    for (const open of [0, n]) {
      const sockets =
        open === 0 ? [] : [...(await connect(v4.port, open)), ...(await connect(v6.port, open))];
      try {
        rows.push(await row(open, v4, v6));
      } finally {
        sockets.forEach((s) => s.destroy());
      }
    }
  } finally {
    v4.server.close();
    v6.server.close();
  }
  return rows;
}
