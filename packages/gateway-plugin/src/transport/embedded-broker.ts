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
  /**
   * Bytes of retained payloads the broker keeps in all (default 16 MiB; a
   * fleet's retained statuses and registrations are a few hundred bytes a
   * backend). A retained publish past it is refused and its client
   * disconnected: aedes keeps every retained message in this process.
   */
  maxRetainedBytes?: number;
  /** Client connections at once (default 1024); more are refused by the listener. */
  maxConnections?: number;
}

/** Retained bytes kept at most by default: far above any fleet's, far below the process's memory. */
export const DEFAULT_MAX_RETAINED_BYTES = 16 * 1024 * 1024;
export const DEFAULT_MAX_CONNECTIONS = 1024;

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
  const aedes = createBroker({
    ...guardedAuthorizers(opts.maxRetainedBytes ?? DEFAULT_MAX_RETAINED_BYTES),
    ...opts.aedes,
  });
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
  server.maxConnections = opts.maxConnections ?? DEFAULT_MAX_CONNECTIONS;
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

/**
 * The embedded broker's defaults for who may publish and subscribe what
 * (opts.aedes's own handlers replace them):
 * - Retained payloads are counted per topic (an empty one clears its topic,
 *   [MQTT-3.3.1-10]) and a publish that would take the total past
 *   `maxRetainedBytes` is refused: anyone who can connect could otherwise
 *   grow the gateway's memory until it died (2,000 retained 60 KiB messages
 *   kept 118 MB, for good).
 * - `$SYS/#` is not subscribed to: aedes announces every client id there,
 *   and a client that connects with another's id takes its session over (the
 *   gateway's own, every time it reconnected).
 */
function guardedAuthorizers(
  maxRetainedBytes: number,
): Pick<AedesOptions, 'authorizePublish' | 'authorizeSubscribe'> {
  const retained = new Map<string, number>();
  let total = 0;
  return {
    authorizePublish: (_client, packet, cb) => {
      if (!packet.retain) return cb(null);
      const bytes = packet.payload.length;
      const before = retained.get(packet.topic) ?? 0;
      if (bytes > 0 && total - before + bytes > maxRetainedBytes) {
        return cb(new Error(`retained messages over ${maxRetainedBytes} bytes`));
      }
      total += bytes - before;
      if (bytes === 0) retained.delete(packet.topic);
      else retained.set(packet.topic, bytes);
      cb(null);
    },
    authorizeSubscribe: (_client, sub, cb) => {
      if (sub.topic.startsWith('$SYS')) return cb(null, null);
      cb(null, sub);
    },
  };
}
