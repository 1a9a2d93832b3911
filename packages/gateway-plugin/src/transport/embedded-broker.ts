import { createServer, type AddressInfo, type Server, type Socket } from 'node:net';
import { createBroker, type AedesOptions } from 'aedes';
import { DEFAULTS } from '../options';
import { PacketSizeGuard } from './packet-size-guard';

/** Largest MQTT packet the embedded broker reads (a full signed report is about 1 KiB). */
export const DEFAULT_MAX_PACKET_BYTES = DEFAULTS.messageLimits.maxPacketBytes;

export interface EmbeddedBrokerOptions {
  /** TCP port; 0 (the default) lets the OS choose, so it never collides with a broker on 1883. */
  port?: number;
  host?: string;
  aedes?: AedesOptions;
  /**
   * A client announcing a larger packet is disconnected before its body is
   * read (transport/packet-size-guard.ts). Default 64 KiB.
   */
  maxPacketBytes?: number;
  /** Called for every client disconnected for an oversized packet. */
  onPacketTooLarge?: (packetBytes: number, remoteAddress: string | undefined) => void;
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
  const maxPacketBytes = opts.maxPacketBytes ?? DEFAULT_MAX_PACKET_BYTES;
  if (!Number.isSafeInteger(maxPacketBytes) || maxPacketBytes < 1024) {
    throw new RangeError(
      `maxPacketBytes must be an integer >= 1024, got ${String(maxPacketBytes)}`,
    );
  }
  const aedes = createBroker(opts.aedes);
  const sockets = new Set<Socket>();
  const server: Server = createServer((socket) => {
    sockets.add(socket);
    socket.once('close', () => sockets.delete(socket));
    const guarded = new PacketSizeGuard(socket, maxPacketBytes, (bytes) =>
      opts.onPacketTooLarge?.(bytes, socket.remoteAddress),
    );
    // aedes.handle takes any Duplex (its Connection type is Duplex | Socket).
    aedes.handle(guarded);
  });
  try {
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(opts.port ?? 0, host, () => {
        server.off('error', reject);
        resolve();
      });
    });
  } catch (err) {
    // aedes runs a heartbeat timer from its creation: left open, a process whose broker
    // could not listen (EADDRINUSE) never exited by itself.
    await new Promise<void>((resolve) => aedes.close(() => resolve()));
    throw err;
  }
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
