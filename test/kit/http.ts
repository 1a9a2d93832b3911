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

/** A port with nothing listening (connections are refused). */
export async function refusedPort(): Promise<number> {
  const s = await listen(createServer());
  await s.close();
  return s.port;
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
    body?: string;
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
