import { createServer, type AddressInfo, type Server, type Socket } from 'node:net';
import { createBroker, type AedesOptions } from 'aedes';

export interface EmbeddedBrokerOptions {
  /** TCP port; 0 (the default) lets the OS choose, so it never collides with a broker on 1883. */
  port?: number;
  host?: string;
  aedes?: AedesOptions;
}

export interface EmbeddedBroker {
  readonly url: string;
  readonly port: number;
  close(): Promise<void>;
}

/**
 * An MQTT broker (aedes) inside this process, for a single gateway or a quick
 * start. Production with several gateways points `broker` at a real one.
 */
export async function startEmbeddedBroker(
  opts: EmbeddedBrokerOptions = {},
): Promise<EmbeddedBroker> {
  const host = opts.host ?? '127.0.0.1';
  const aedes = createBroker(opts.aedes);
  const sockets = new Set<Socket>();
  const server: Server = createServer((socket) => {
    sockets.add(socket);
    socket.once('close', () => sockets.delete(socket));
    aedes.handle(socket);
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(opts.port ?? 0, host, () => {
      server.off('error', reject);
      resolve();
    });
  });
  const port = (server.address() as AddressInfo).port;
  let closing: Promise<void> | undefined;
  return {
    port,
    url: `mqtt://${host}:${port}`,
    close() {
      closing ??= new Promise<void>((resolve) => {
        server.close();
        // Destroy client sockets so server.close() and aedes.close() complete
        // without waiting for clients' keepalive to time out.
        for (const socket of sockets) socket.destroy();
        aedes.close(() => resolve());
      });
      return closing;
    },
  };
}
