/**
 * The port and family a client connected to. An accepted socket's local
 * address is its listening socket's, so it is read once per server
 * (`server.address()`, forgotten at the server's 'close', as a server that
 * listens again may get another port) instead of once per connection: the
 * first read of `socket.localPort` on a socket is a getsockname(2), 1.8% of
 * the gateway's CPU under a burst of one request per connection (a V8 profile
 * of `npm run bench:burst`, docs/bench.md). A socket of no listening server's
 * (a UNIX socket, a socket handed in with `emit('connection')` to a server
 * that does not listen) answers for itself.
 */
import type { AddressInfo, Socket } from 'node:net';

interface ListeningServer {
  address(): AddressInfo | string | null;
  once(event: 'close', listener: () => void): unknown;
}

export interface LocalAddress {
  port: number | undefined;
  family: string | undefined;
}

/** Per server: its listening address, or null when it has none to give (a pipe, not listening). */
const byServer = new WeakMap<ListeningServer, LocalAddress | null>();

export function localAddressOf(socket: Socket): LocalAddress {
  const server = (socket as { server?: Partial<ListeningServer> }).server;
  if (server && typeof server.address === 'function' && typeof server.once === 'function') {
    const s = server as ListeningServer;
    let known = byServer.get(s);
    if (known === undefined) {
      const a = s.address();
      known = a !== null && typeof a === 'object' ? { port: a.port, family: a.family } : null;
      // Only a listening server's address is kept (a null one would not be forgotten on a
      // 'close' that never comes).
      if (known !== null) {
        byServer.set(s, known);
        s.once('close', () => byServer.delete(s));
      }
    }
    if (known !== null) return known;
  }
  return { port: socket.localPort, family: socket.localFamily };
}
