import http, { type IncomingMessage, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { mkdtempSync, rmSync } from 'node:fs';
import { localAddressOf, type LocalAddress } from './listen-address';

/** Starts `server` on `listenArg`, sends one request, and returns what the handler saw. */
async function seen(
  server: Server,
  listenArg: { port?: number; host?: string; path?: string },
): Promise<{ local: LocalAddress; socket: LocalAddress; port: number | undefined }> {
  const got = new Promise<{ local: LocalAddress; socket: LocalAddress }>((resolve) => {
    server.once('request', (req: IncomingMessage, res) => {
      // Ours first: the socket's own fields would fill Node's getsockname cache.
      const local = localAddressOf(req.socket);
      const socket = { port: req.socket.localPort, family: req.socket.localFamily };
      res.end('ok');
      resolve({ local, socket });
    });
  });
  await new Promise<void>((r) => server.listen(listenArg, r));
  const a = server.address();
  const port = typeof a === 'object' && a !== null ? (a as AddressInfo).port : undefined;
  await new Promise<void>((resolve, reject) => {
    const req = http.get(
      listenArg.path !== undefined
        ? { socketPath: listenArg.path, path: '/' }
        : { host: '127.0.0.1', port, path: '/', agent: false },
      (res) => {
        res.resume();
        res.on('end', resolve);
      },
    );
    req.on('error', reject);
  });
  const r = await got;
  await new Promise((r2) => server.close(r2));
  return { ...r, port };
}

describe('localAddressOf: the port and family a client connected to', () => {
  it("is the listening socket's: an IPv4 client on a dual-stack listener", async () => {
    const server = http.createServer();
    const r = await seen(server, { port: 0, host: '::' });
    expect(r.local).toEqual({ port: r.port, family: 'IPv6' });
    expect(r.local).toEqual(r.socket);
  });

  it('is forgotten when the server closes: listening again on another port is seen', async () => {
    const server = http.createServer();
    const first = await seen(server, { port: 0, host: '127.0.0.1' });
    expect(first.local).toEqual({ port: first.port, family: 'IPv4' });
    const second = await seen(server, { port: 0, host: '127.0.0.1' });
    expect(second.port).not.toBe(first.port);
    expect(second.local).toEqual({ port: second.port, family: 'IPv4' });
  });

  const unix = process.platform === 'win32' ? it.skip : it;
  unix('a UNIX socket has no port: the socket answers for itself', async () => {
    const dir = mkdtempSync(path.join(os.tmpdir(), 'lw-listen-'));
    try {
      const r = await seen(http.createServer(), { path: path.join(dir, 's.sock') });
      expect(r.local.port).toBeUndefined();
      expect(r.local).toEqual(r.socket);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('a socket of no server (handed in, or a test double) answers for itself', () => {
    const socket = { localPort: 4321, localFamily: 'IPv4' } as never;
    expect(localAddressOf(socket)).toEqual({ port: 4321, family: 'IPv4' });
  });
});
