/**
 * Exact bytes over a raw TCP socket, for the hostile-request tests: an HTTP
 * client (curl, node:http) would tidy what these tests must send as is
 * (a Trailer header on a GET, two Host lines, `..\` in a path, a body after a
 * request the parser thinks has none). Responses are parsed just enough to
 * know where each ends: status, headers, Content-Length or chunked body.
 */
import { connect, type Socket } from 'node:net';

export interface RawResponse {
  status: number;
  headers: Record<string, string>;
  body: string;
}

export interface RawExchange {
  /** Final responses, in order (interim 1xx ones are in `interim`). */
  responses: RawResponse[];
  interim: number[];
  /** The server closed (or reset) the connection. */
  closed: boolean;
  raw: string;
}

export interface RawOptions {
  /** Resolve once this many final responses arrived (default: when the server closes). */
  responses?: number;
  /** Source address (any 127.0.0.0/8 address works on loopback): another client. */
  localAddress?: string;
  /** Indexes of responses that have no body whatever their headers say (answers to HEAD). */
  bodiless?: number[];
  /** Writes after the first, each once the previous response arrived (or at once when undefined). */
  then?: Array<string | Buffer>;
  /** Give up after this long (default 10 s): a hang fails the test instead of stalling it. */
  guardMs?: number;
}

/** Parses as many complete responses as `buf` holds. */
export function parseResponses(
  buf: string,
  bodiless: number[] = [],
  closed = false,
): { responses: RawResponse[]; interim: number[] } {
  const responses: RawResponse[] = [];
  const interim: number[] = [];
  let at = 0;
  while (at < buf.length) {
    const headEnd = buf.indexOf('\r\n\r\n', at);
    if (headEnd < 0) break;
    const lines = buf.slice(at, headEnd).split('\r\n');
    const status = Number(/^HTTP\/1\.[01] (\d{3})/.exec(lines[0] ?? '')?.[1] ?? 0);
    const headers: Record<string, string> = {};
    for (const line of lines.slice(1)) {
      const c = line.indexOf(':');
      if (c > 0) headers[line.slice(0, c).trim().toLowerCase()] = line.slice(c + 1).trim();
    }
    let next = headEnd + 4;
    if (status >= 100 && status < 200) {
      interim.push(status);
      at = next;
      continue;
    }
    let body = '';
    if (bodiless.includes(responses.length) || status === 204 || status === 304) {
      // no body
    } else if (headers['content-length'] !== undefined) {
      const len = Number(headers['content-length']);
      if (buf.length < next + len) break;
      body = buf.slice(next, next + len);
      next += len;
    } else if (/chunked/i.test(headers['transfer-encoding'] ?? '')) {
      let p = next;
      let complete = false;
      while (true) {
        const lineEnd = buf.indexOf('\r\n', p);
        if (lineEnd < 0) break;
        const size = parseInt(buf.slice(p, lineEnd), 16);
        if (size === 0) {
          const end = buf.indexOf('\r\n\r\n', lineEnd);
          if (end < 0) break;
          next = end + 4;
          complete = true;
          break;
        }
        if (buf.length < lineEnd + 2 + size + 2) break;
        body += buf.slice(lineEnd + 2, lineEnd + 2 + size);
        p = lineEnd + 2 + size + 2;
      }
      if (!complete) break;
    } else {
      if (!closed) break; // delimited by the close
      body = buf.slice(next);
      next = buf.length;
    }
    responses.push({ status, headers, body });
    at = next;
  }
  return { responses, interim };
}

/** Sends `data` (latin1 when a string) and collects what comes back. */
export function rawExchange(
  port: number,
  data: string | Buffer,
  opts: RawOptions = {},
): Promise<RawExchange> {
  return new Promise((resolve, reject) => {
    const socket: Socket = connect({ port, host: '127.0.0.1', localAddress: opts.localAddress });
    let raw = '';
    let closed = false;
    let settled = false;
    const pending = [...(opts.then ?? [])];
    let answered = 0;
    const finish = (): void => {
      if (settled) return;
      settled = true;
      clearTimeout(guard);
      const parsed = parseResponses(raw, opts.bodiless, closed);
      socket.destroy();
      resolve({ ...parsed, closed, raw });
    };
    const guard = setTimeout(() => {
      if (settled) return;
      settled = true;
      socket.destroy();
      reject(new Error(`no complete answer within ${opts.guardMs ?? 10_000} ms; got ${raw}`));
    }, opts.guardMs ?? 10_000);
    socket.on('data', (d: Buffer) => {
      raw += d.toString('latin1');
      const { responses } = parseResponses(raw, opts.bodiless);
      while (answered < responses.length) {
        answered++;
        const next = pending.shift();
        if (next !== undefined)
          socket.write(typeof next === 'string' ? Buffer.from(next, 'latin1') : next);
      }
      if (opts.responses !== undefined && responses.length >= opts.responses) finish();
    });
    socket.on('error', () => undefined); // a reset is a close here
    socket.on('close', () => {
      closed = true;
      finish();
    });
    socket.write(typeof data === 'string' ? Buffer.from(data, 'latin1') : data);
  });
}

/** Opens a connection and writes `head` without finishing the request: a slow client. */
export interface SlowClient {
  socket: Socket;
  /** Final responses received so far. */
  responses(): RawResponse[];
  /** Every byte received so far, as latin1 (an answer still streaming included). */
  raw(): string;
  /** Everything received, once the server closed the connection. */
  closed: Promise<RawExchange>;
}

export function openSlow(port: number, head: string, localAddress?: string): Promise<SlowClient> {
  return new Promise((resolve, reject) => {
    const socket = connect({ port, host: '127.0.0.1', localAddress });
    let raw = '';
    socket.on('data', (d: Buffer) => (raw += d.toString('latin1')));
    const closed = new Promise<RawExchange>((done) => {
      socket.on('close', () => done({ ...parseResponses(raw, [], true), closed: true, raw }));
    });
    socket.on('error', () => undefined);
    socket.once('connect', () => {
      socket.write(Buffer.from(head, 'latin1'), () =>
        resolve({ socket, responses: () => parseResponses(raw).responses, raw: () => raw, closed }),
      );
    });
    socket.once('error', reject);
  });
}

/** Polls a condition on the event loop (real sockets have no fake clock). */
export async function until(cond: () => boolean, guardMs = 5_000): Promise<void> {
  const deadline = Date.now() + guardMs;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error('condition not met');
    await new Promise((r) => setTimeout(r, 10));
  }
}

/**
 * The sum of a counter's series in Prometheus text (`loadwise_<name>`), or of
 * those with `code="<code>"`; 0 when there is none.
 */
export function counterValue(metrics: string, name: string, code?: string): number {
  let sum = 0;
  for (const m of metrics.matchAll(new RegExp(`^loadwise_${name}(\\{[^}]*\\})? (\\d+)`, 'gm'))) {
    if (code === undefined || (m[1] ?? '').includes(`code="${code}"`)) sum += Number(m[2]);
  }
  return sum;
}

/**
 * A client that sends its whole upload before it reads, as Python's requests and many
 * SDKs do: its socket (plain or TLS, just made) paused meanwhile, so the answer waits in
 * its kernel. `size` bytes in 1 MiB writes, one each `paceMs` (0: as fast as the socket
 * takes them). What it read once the connection closed, and the socket's error code.
 */
export function uploadThenRead(
  s: Socket,
  size: number,
  paceMs = 0,
): Promise<{ answer: string; error?: string }> {
  return new Promise((resolve) => {
    let answer = '';
    let error: string | undefined;
    s.pause();
    s.on('data', (d: Buffer) => (answer += d.toString('latin1')));
    s.on('error', (e: Error & { code?: string }) => (error = e.code));
    s.on('close', () => resolve({ answer, error }));
    s.write(`PUT /upload HTTP/1.1\r\nHost: a\r\nContent-Length: ${size}\r\n\r\n`);
    const chunk = Buffer.alloc(1 << 20, 1);
    let sent = 0;
    const pump = (): void => {
      while (sent < size && !s.destroyed) {
        sent += chunk.length;
        const more = s.write(chunk);
        if (paceMs > 0) return void setTimeout(pump, paceMs);
        if (!more) return void s.once('drain', pump);
      }
      s.resume();
    };
    pump();
  });
}
