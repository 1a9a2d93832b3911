import http from 'node:http';
import type { AddressInfo } from 'node:net';

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
export function fire(url: string): InFlightRequest {
  let req!: http.ClientRequest;
  const done = new Promise<Reply | undefined>((resolve) => {
    req = http.get(url, { agent: false }, (res) => {
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
