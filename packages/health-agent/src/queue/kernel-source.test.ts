import net from 'node:net';
import { countSockets, kernelSource } from './kernel-source';

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
    try {
      for (let i = 0; i < 3; i++) {
        const s = net.connect(port, '127.0.0.1');
        sockets.push(s);
        await new Promise((r) => s.once('connect', r));
      }
      const reading = await kernelSource(port, '/proc').read();
      // Only the server-side end of each loopback connection has the port as its local port.
      expect(reading.queue).toMatchObject({
        openConnections: 3,
        source: { openConnections: 'kernel', acceptBacklog: 'kernel' },
      });
      expect(reading.queue?.acceptBacklog).toBeGreaterThanOrEqual(0);
    } finally {
      sockets.forEach((s) => s.destroy());
      await new Promise((r) => server.close(r));
    }
  });

  it('rejects when nothing listens on the port', async () => {
    await expect(kernelSource(1, '/proc').read()).rejects.toThrow('nothing listens on port 1');
  });
});
