import http from 'node:http';
import https from 'node:https';
import type { Duplex } from 'node:stream';

export interface HttpGetResult {
  status: number;
  body: string;
  latencyMs: number;
}

/** Bodies of stats, metrics and health endpoints are small; a runaway one is cut off. */
export const MAX_BODY_BYTES = 1024 * 1024;

export interface HttpGetOptions {
  signal?: AbortSignal;
  agent?: http.Agent;
  /**
   * Resolve as soon as the response head arrives, with an empty body, and
   * destroy the response: for a caller that needs only the status (the probe),
   * a large or endless body is neither read nor a failure. The timeout then
   * covers connect and headers, and `latencyMs` is the time to the head.
   */
  headOnly?: boolean;
  /**
   * Each piece of the body as it arrives, for a caller that reads it as a
   * stream (the Prometheus source): the body is then not kept, `body` is '',
   * and `maxBodyBytes` still cuts the response off. Returning `'done'` ends
   * the read there: the result resolves at once and the rest is not read.
   */
  onData?: (chunk: Buffer) => 'done' | void;
  /**
   * Called with the status as soon as the response head arrives, before any of the body
   * is read. An Error it returns fails the GET with that error, and the response is
   * destroyed unread. The Prometheus source checked the status only after the body: an
   * endless 503 page was read to the byte bound every interval (64 MiB then; ~10% of a
   * core and +50 MB RSS), and the warning said "response body over 67108864 bytes", not
   * the status.
   */
  onHead?: (status: number) => Error | undefined;
}

/**
 * An `onHead` that fails every status but 200 as `<what> answered <status>`, with what
 * `detail` says of that status after it: the sources that read a page (Prometheus, a
 * tracker) name the status at the head rather than read an error page to their bound.
 */
export function only200(
  what: string,
  detail: (status: number) => string = () => '',
): (status: number) => Error | undefined {
  return (status) =>
    status === 200 ? undefined : new Error(`${what} answered ${status}${detail(status)}`);
}

/**
 * A GET with a hard timeout covering connect, headers and body. node:http
 * rather than fetch: at one request a second the difference is small, but it
 * keeps undici's pool and its memory out of a daemon that must stay lean.
 * No keep-alive by default: one fresh connection per probe also tests that the
 * service still accepts connections. The early-report watch, which may ask
 * several times a second, passes a keep-alive `agent` (tracker-source.ts).
 */
export function httpGet(
  url: URL,
  timeoutMs: number,
  maxBodyBytes = MAX_BODY_BYTES,
  opts: HttpGetOptions = {},
): Promise<HttpGetResult> {
  const started = performance.now();
  const mod = url.protocol === 'https:' ? https : http;
  return new Promise((resolve, reject) => {
    let responded = false;
    const req = mod.get(
      url,
      {
        agent: opts.agent ?? false,
        headers: { 'user-agent': 'loadwise-agent' },
        ...(opts.signal ? { signal: opts.signal } : {}),
      },
      (res) => {
        responded = true;
        const refused = opts.onHead?.(res.statusCode ?? 0);
        if (refused) {
          clearTimeout(timer);
          reject(refused);
          res.destroy();
          return;
        }
        const done = (body: string): void => {
          clearTimeout(timer);
          resolve({ status: res.statusCode ?? 0, body, latencyMs: performance.now() - started });
        };
        if (opts.headOnly) {
          done('');
          res.destroy();
          return;
        }
        const chunks: Buffer[] = [];
        let size = 0;
        res.on('data', (chunk: Buffer) => {
          size += chunk.length;
          if (size > maxBodyBytes) {
            req.destroy(new Error(`response body over ${maxBodyBytes} bytes`));
            return;
          }
          if (!opts.onData) return void chunks.push(chunk);
          if (opts.onData(chunk) !== 'done') return;
          done('');
          req.destroy();
        });
        res.on('end', () => done(Buffer.concat(chunks).toString('utf8')));
        res.on('error', (err) => {
          clearTimeout(timer);
          reject(err);
        });
      },
    );
    const timer = setTimeout(
      () => req.destroy(new Error(`timed out after ${timeoutMs} ms`)),
      timeoutMs,
    );
    timer.unref();
    req.on('error', (err) => {
      clearTimeout(timer);
      reject(err);
    });
    // A `101 Switching Protocols` nobody asked for: node:http hands the socket
    // to an 'upgrade' listener, or destroys it when there is none, and emits
    // no 'error' either way; the timeout's destroy() then does nothing to the
    // request already destroyed. The promise never settled: the scheduler
    // skipped every later tick (status still `online`, no report), `--once`
    // printed nothing, and stop() waited forever on the early-report watch
    // (a server answering 101 to the probe, tracker or Prometheus read).
    req.on('upgrade', (_res, socket: Duplex) => {
      socket.destroy();
      clearTimeout(timer);
      reject(
        httpGetError(
          'LW_HTTP_UNEXPECTED_UPGRADE',
          'answered 101 Switching Protocols, an upgrade not asked for',
        ),
      );
    });
    // Any other end before a response without an 'error': settled, not left pending.
    req.on('close', () => {
      if (responded) return;
      clearTimeout(timer);
      reject(httpGetError('LW_HTTP_CLOSED', 'connection closed before a response'));
    });
  });
}

/** Codes of the failures httpGet names itself (the rest are node:http's: ECONNREFUSED...). */
export type HttpGetErrorCode = 'LW_HTTP_UNEXPECTED_UPGRADE' | 'LW_HTTP_CLOSED';

function httpGetError(code: HttpGetErrorCode, message: string): NodeJS.ErrnoException {
  return Object.assign(new Error(message), { code });
}
