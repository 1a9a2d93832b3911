import { mkdtempSync, mkdirSync, rmSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { countSockets, kernelSource, TABLES_RECHECK_MS } from './kernel-source';

// Lines in the format of net/ipv4/tcp_ipv4.c get_tcp4_sock (trailing fields cut).
const TCP = `  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:0BB8 00000000:0000 0A 00000200:00000003 00:00000000 00000000     0        0 1 1 0
   1: 0100007F:0BB8 0100007F:D431 01 00000000:00000000 00:00000000 00000000     0        0 2 1 0
   2: 0100007F:0BB8 0100007F:D432 01 00000000:00000000 00:00000000 00000000     0        0 3 1 0
   3: 0100007F:D431 0100007F:0BB8 01 00000000:00000000 00:00000000 00000000     0        0 4 1 0
   4: 0100007F:1F90 00000000:0000 0A 00000080:00000000 00:00000000 00000000     0        0 5 1 0
`;
const TCP6 = `  sl  local_address                         remote_address                        st tx_queue rx_queue
   0: 00000000000000000000000000000000:0BB8 00000000000000000000000000000000:0000 0A 00000200:00000001 00:00000000
`;

describe('kernel queue source', () => {
  it('counts the accept backlog of listeners and established connections on a port', () => {
    expect(countSockets([TCP, TCP6], 3000)).toEqual({
      acceptBacklog: 4,
      openConnections: 2,
      listening: true,
    });
    expect(countSockets([TCP], 9999).listening).toBe(false);
  });

  it('reads a real listening socket from /proc/net/tcp', async () => {
    const server = net.createServer((s) => s.on('error', () => undefined));
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
    const { port } = server.address() as net.AddressInfo;
    const sockets: net.Socket[] = [];
    // The table is the whole host's: a connection of another test's, left on a server that
    // had this port before (Node listens with SO_REUSEADDR), counts too. Counted from here.
    const before = (await kernelSource(port, '/proc').read()).queue?.openConnections ?? 0;
    try {
      for (let i = 0; i < 3; i++) {
        const s = net.connect(port, '127.0.0.1');
        sockets.push(s);
        await new Promise((r) => s.once('connect', r));
      }
      const reading = await kernelSource(port, '/proc').read();
      // Only the server-side end of each loopback connection has the port as its local port.
      expect(reading.queue).toMatchObject({
        openConnections: before + 3,
        source: { openConnections: 'kernel', acceptBacklog: 'kernel' },
      });
      expect(reading.queue?.acceptBacklog).toBeGreaterThanOrEqual(0);
    } finally {
      sockets.forEach((s) => s.destroy());
      await new Promise((r) => server.close(r));
    }
  });

  it("reads only the table of the port's listener, both again every TABLES_RECHECK_MS", async () => {
    const dir = mkdtempSync(path.join(os.tmpdir(), 'lw-kernel-'));
    mkdirSync(path.join(dir, 'net'));
    const v6Listener = TCP6.split('\n')[0] + '\n';
    // One established connection on 3000 in tcp6, which a v4-only listener cannot have:
    // counted only when tcp6 is read.
    const v6Conn =
      '   1: 0000000000000000FFFF00000100007F:0BB8 0000000000000000FFFF00000100007F:D433 01 00000000:00000000 00:00000000\n';
    const write = (tcp: string, tcp6: string): void => {
      writeFileSync(path.join(dir, 'net/tcp'), tcp);
      writeFileSync(path.join(dir, 'net/tcp6'), tcp6);
    };
    try {
      let t = 1_000;
      const source = kernelSource(3000, dir, () => t);
      write(TCP, v6Listener); // the listener in tcp only
      expect((await source.read()).queue).toMatchObject({ acceptBacklog: 3, openConnections: 2 });
      write(TCP, v6Listener + v6Conn);
      t += TABLES_RECHECK_MS - 1;
      expect((await source.read()).queue?.openConnections).toBe(2); // tcp6 not read
      t += 1;
      expect((await source.read()).queue?.openConnections).toBe(3); // both again
      // The listener moves to tcp6 (restarted on `::`): found at once, not after the recheck.
      write(TCP.split('\n')[0] + '\n', TCP6 + v6Conn);
      expect((await source.read()).queue).toMatchObject({ acceptBacklog: 1, openConnections: 1 });
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('rejects when nothing listens on the port', async () => {
    await expect(kernelSource(1, '/proc').read()).rejects.toThrow('nothing listens on port 1');
  });
});
