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
import { networkInterfaces } from 'node:os';

interface ListeningServer {
  address(): AddressInfo | string | null;
  once(event: 'close', listener: () => void): unknown;
}

export interface LocalAddress {
  port: number | undefined;
  family: string | undefined;
}

/** Per listening server: its address (a server with none to give, a pipe or closed, is not kept). */
const byServer = new WeakMap<ListeningServer, LocalAddress>();

export function localAddressOf(socket: Socket): LocalAddress {
  const server = (socket as { server?: Partial<ListeningServer> }).server;
  if (server && typeof server.address === 'function' && typeof server.once === 'function') {
    const s = server as ListeningServer;
    let known = byServer.get(s);
    if (known === undefined) {
      const a = s.address();
      // Only a listening server's address is kept: forgotten at its 'close'.
      if (a !== null && typeof a === 'object') {
        known = { port: a.port, family: a.family };
        byServer.set(s, known);
        s.once('close', () => byServer.delete(s));
      }
    }
    if (known !== undefined) return known;
  }
  return { port: socket.localPort, family: socket.localFamily };
}

/** `::ffff:127.0.0.1` as `127.0.0.1`: a dual-stack listener sees IPv4 peers mapped. */
export function unmapped(address: string | undefined): string | undefined {
  return address?.startsWith('::ffff:') ? address.slice(7) : address;
}

/**
 * Whether a server whose `address()` is `bound` listens at `host`:`port` (both as libuv,
 * WHATWG URL and os.networkInterfaces() write them: lower case): its bound address, or,
 * bound to every address (`::`, `0.0.0.0`), loopback or one of the host's own interfaces.
 */
export function boundAt(bound: AddressInfo | string | null, host: string, port: number): boolean {
  if (bound === null || typeof bound === 'string' || bound.port !== port) return false;
  const at = unmapped(bound.address);
  const h = unmapped(host)!;
  if (at !== '::' && at !== '0.0.0.0') return h === at;
  if (h === '::1' || h.startsWith('127.')) return true;
  for (const list of Object.values(networkInterfaces()))
    for (const i of list ?? []) if (unmapped(i.address) === h) return true;
  return false;
}
