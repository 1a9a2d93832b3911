/**
 * A tiny round-robin TCP front (node:net): every accepted connection goes to
 * the next gateway in turn and bytes are copied both ways. It stands for what
 * sits in front of several gateways in production (DNS round robin, an L4
 * load balancer, a cloud TCP balancer): it knows nothing about HTTP or load;
 * the gateways behind it share one broker and make the routing decisions.
 *
 * A gateway that refuses the connection is skipped for that connection (the
 * next one is tried), so one stopped gateway does not fail clients.
 */
import net from 'node:net';

export interface Upstream {
  host: string;
  port: number;
}

export interface RoundRobinFront {
  port: number;
  /** Connections handed to each upstream so far, in the order given. */
  readonly handed: number[];
  close(): Promise<void>;
}

export async function startRoundRobinFront(
  upstreams: Upstream[],
  listen: { port: number; host?: string } = { port: 0 },
): Promise<RoundRobinFront> {
  if (upstreams.length === 0) throw new Error('the front needs at least one upstream');
  const handed = upstreams.map(() => 0);
  const sockets = new Set<net.Socket>();
  let next = 0;

  const track = (s: net.Socket): void => {
    sockets.add(s);
    s.once('close', () => sockets.delete(s));
  };

  const server = net.createServer((client) => {
    track(client);
    client.pause(); // hold the request bytes until the upstream is connected
    const first = next;
    next = (next + 1) % upstreams.length;
    const attempt = (tries: number, index: number): void => {
      const u = upstreams[index]!;
      const upstream = net.connect(u.port, u.host);
      track(upstream);
      let connected = false;
      upstream.on('error', (err: NodeJS.ErrnoException) => {
        if (!connected && err.code === 'ECONNREFUSED' && tries > 1) {
          attempt(tries - 1, (index + 1) % upstreams.length);
        } else {
          client.destroy();
        }
      });
      upstream.once('connect', () => {
        connected = true;
        handed[index]!++;
        client.on('error', () => upstream.destroy());
        client.pipe(upstream);
        upstream.pipe(client);
        client.resume();
      });
    };
    attempt(upstreams.length, first);
  });

  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(listen.port, listen.host ?? '127.0.0.1', resolve);
  });
  return {
    port: (server.address() as net.AddressInfo).port,
    handed,
    close: () =>
      new Promise<void>((resolve) => {
        for (const s of sockets) s.destroy();
        server.close(() => resolve());
      }),
  };
}
