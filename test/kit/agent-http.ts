import http from 'node:http';
import { createServer, type AddressInfo, type Socket } from 'node:net';

/** Small HTTP helpers for the health-agent tests: real servers on port 0, one connection per request. */

export interface Listening {
  server: http.Server;
  url: string;
  close(): Promise<void>;
}

export async function listen(
  handler: http.RequestListener,
  host = '127.0.0.1',
): Promise<Listening> {
  const server = http.createServer(handler);
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, host, () => resolve());
  });
  const { port } = server.address() as AddressInfo;
  const h = host.includes(':') ? `[${host}]` : host;
  return {
    server,
    url: `http://${h}:${port}`,
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}

export interface Reply {
  status: number;
  body: string;
  headers: http.IncomingHttpHeaders;
}

export interface InFlightRequest {
  /** Settles with the reply, or with undefined when the request was aborted or failed. */
  done: Promise<Reply | undefined>;
  abort(): void;
}

/** Starts a GET on its own connection (agent: false), so a queued request holds its own socket. */
export function fire(url: string, headers?: http.OutgoingHttpHeaders): InFlightRequest {
  let req!: http.ClientRequest;
  const done = new Promise<Reply | undefined>((resolve) => {
    req = http.get(url, { agent: false, headers }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (c: string) => (body += c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body, headers: res.headers }));
      res.on('error', () => resolve(undefined));
      res.on('aborted', () => resolve(undefined));
    });
    req.on('error', () => resolve(undefined));
  });
  return { done, abort: () => req.destroy() };
}

export async function get(url: string): Promise<Reply> {
  const reply = await fire(url).done;
  if (!reply) throw new Error(`GET ${url} failed`);
  return reply;
}

/** Polls a condition (every 5 ms, up to timeoutMs); for waiting on real I/O, not for time logic. */
export async function until(
  cond: () => boolean,
  timeoutMs = 5000,
  what = 'condition',
): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

/**
 * A raw TCP "app" on 127.0.0.1, port 0: each request head it reads gets the
 * bytes `answer(path)` returns, written as they are (a 101 nobody asked for,
 * which node:http would not let a test server send), and the connection
 * stays open. close() cuts its connections.
 */
export async function rawHttpApp(
  answer: (path: string) => string,
): Promise<{ url: string; close(): Promise<void> }> {
  const sockets = new Set<Socket>();
  const server = createServer((s) => {
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
    s.on('error', () => undefined);
    let head = '';
    s.on('data', (d: Buffer) => {
      head += d.toString('latin1');
      if (!head.includes('\r\n\r\n')) return;
      const path = head.split(' ')[1] ?? '';
      head = '';
      s.write(answer(path));
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}`,
    close: () =>
      new Promise<void>((r) => {
        for (const s of sockets) s.destroy();
        server.close(() => r());
      }),
  };
}

/** `p`'s value, or 'still pending' after `ms`: a hang fails the test instead of stalling it. */
export async function within<T>(p: Promise<T>, ms: number): Promise<T | 'still pending'> {
  let timer: NodeJS.Timeout | undefined;
  try {
    return await Promise.race([
      p,
      new Promise<'still pending'>((r) => {
        timer = setTimeout(() => r('still pending'), ms);
      }),
    ]);
  } finally {
    clearTimeout(timer);
  }
}

/** `p`, or a rejection naming `what` once `ms` have passed (within(), failing the test). */
export async function withinOrFail<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  const r = await within(p, ms);
  if (r === 'still pending') throw new Error(`${what} not within ${ms} ms`);
  return r;
}
