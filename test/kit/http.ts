/**
 * HTTP pieces of the test kit (http-proxy-middleware's `createApp` style): real
 * servers on port 0 that close every socket they accepted, JSON echo backends,
 * a refused port, and a request helper that opens no keep-alive sockets, so
 * every test can close everything it opened and jest exits by itself. The
 * gateway itself is in gateway.ts.
 */
import {
  createServer,
  request,
  type IncomingMessage,
  type Server,
  type ServerResponse,
} from 'node:http';
import { readFileSync } from 'node:fs';
import type { AddressInfo, Socket } from 'node:net';

export interface TestServer {
  url: string;
  port: number;
  server: Server;
  close(): Promise<void>;
}

export async function listen(server: Server): Promise<TestServer> {
  const sockets = new Set<Socket>();
  server.on('connection', (s: Socket) => {
    sockets.add(s);
    s.once('close', () => sockets.delete(s));
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = (server.address() as AddressInfo).port;
  return {
    url: `http://127.0.0.1:${port}`,
    port,
    server,
    close: () =>
      new Promise<void>((resolve) => {
        for (const s of sockets) s.destroy();
        server.close(() => resolve());
      }),
  };
}

/** A backend answering `{ id, method, url, headers, body }` as JSON (or via a custom handler). */
export function startBackend(
  id: string,
  handler?: (req: IncomingMessage, res: ServerResponse, body: string) => void,
): Promise<TestServer> {
  const server = createServer((req, res) => {
    let body = '';
    req.setEncoding('utf8');
    req.on('data', (c: string) => (body += c));
    req.on('end', () => {
      if (handler) return handler(req, res, body);
      res.setHeader('content-type', 'application/json');
      res.end(JSON.stringify({ id, method: req.method, url: req.url, headers: req.headers, body }));
    });
  });
  return listen(server);
}

/**
 * A loopback port nothing listens on (connections are refused), and which
 * stays so for the test. It is taken below the kernel's ephemeral range: a
 * port that a server on port 0 had and gave back is soon handed to the next
 * server on port 0, in this jest worker or another, and the "refused"
 * backend then answers 200 (seen in CI). Servers on port 0 and outgoing
 * connections use the ephemeral range only, and a port some service holds
 * fails the check below.
 */
export async function refusedPort(): Promise<number> {
  const low = ephemeralLow();
  for (let i = 0; i < 100; i++) {
    const port = REFUSED_FROM + Math.floor(Math.random() * (low - REFUSED_FROM));
    if (await canListen(port)) return port;
  }
  throw new Error(`no free loopback port between ${REFUSED_FROM} and ${low}`);
}

/** Below this are well-known and registered services; the range up to the ephemeral one is free. */
const REFUSED_FROM = 10_000;

/** The first port of the kernel's ephemeral range (Linux's default when unreadable). */
function ephemeralLow(): number {
  try {
    const low = Number(
      readFileSync('/proc/sys/net/ipv4/ip_local_port_range', 'utf8').split(/\s+/)[0],
    );
    if (low > REFUSED_FROM + 1000) return low;
  } catch {
    // not Linux: its default range below
  }
  return 32_768;
}

function canListen(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = createServer();
    s.once('error', () => resolve(false));
    s.listen(port, '127.0.0.1', () => s.close(() => resolve(true)));
  });
}

export interface Reply {
  status: number;
  statusMessage: string;
  headers: IncomingMessage['headers'];
  body: string;
  json<T = Record<string, unknown>>(): T;
}

export function send(
  url: string,
  opts: {
    method?: string;
    headers?: Record<string, string>;
    body?: string | Buffer;
    /** Source address (any 127.0.0.0/8 address works on loopback): another client. */
    localAddress?: string;
  } = {},
): Promise<Reply> {
  return new Promise((resolve, reject) => {
    const { method = 'GET', headers, localAddress } = opts;
    const req = request(url, { method, headers, localAddress, agent: false }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (c: string) => (body += c));
      res.on('end', () =>
        resolve({
          status: res.statusCode ?? 0,
          statusMessage: res.statusMessage ?? '',
          headers: res.headers,
          body,
          json: <T>() => JSON.parse(body) as T,
        }),
      );
      res.on('error', reject);
    });
    req.on('error', reject);
    req.end(opts.body);
  });
}
