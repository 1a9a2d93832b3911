/**
 * The backend's status line and headers, written to the client by the
 * balancer (request-flow.ts, relayHead) in place of http-proxy's response
 * passes (web-outgoing.js: removeChunked, setConnection, writeHeaders,
 * writeStatusCode), which `selfHandleResponse` turns off.
 *
 * What differs from those passes: what the backend says about its own
 * connection is not relayed (RFC 9110 §7.6.1, as nginx and Envoy do):
 * `Connection` and the headers it names (but the body's framing),
 * `Keep-Alive`, `Proxy-Connection`, and `Upgrade` outside a 101. Relayed, a
 * backend's `Keep-Alive: timeout=65` told clients to keep idle connections
 * the gateway closes after its own keepAliveTimeout, and its `Connection:
 * close` closed the client's connection with the backend's. The gateway says
 * its own `Connection` instead: `close` when it closes (`close`), else the
 * client's (HTTP/1.0: its `Connection`, else `close`; 1.1: `keep-alive`).
 * `proxyRes.headers` is read, never changed: Node's agent reads the backend's
 * Keep-Alive hint there when the answer ends, to retire the pooled socket
 * before the backend does.
 *
 * Why not http-proxy's passes: they copy the head one `res.setHeader` per
 * header (each validated, lower-cased and stored as a [name, value] pair);
 * when the response has no header yet, handing Node the flat list costs one
 * validation per header and nothing else (docs/bench.md, "Where the time
 * goes"). Headers an app middleware set before the proxy (CORS, security
 * headers, Express's X-Powered-By) are merged as http-proxy merged them, the
 * backend's replacing the app's of the same name, but two (`mergeHeader`):
 * `Set-Cookie` lines add up, and `Vary` joins both lists.
 */
import { ServerResponse, type IncomingMessage } from 'node:http';

/** Node's own writeHead, which takes a flat [name, value, name, value...] array. */
const NODE_WRITE_HEAD = ServerResponse.prototype.writeHead;

/** A `close` token in a Connection value (an array of values reads as their join). */
const CLOSE_TOKEN = /(?:^|,)[ \t]*close[ \t]*(?:,|$)/i;

/**
 * The names a backend's `Connection` header lists, lower-case, but the body's
 * framing (which Node writes from the answer itself) and the connection
 * options `close` and `keep-alive`; undefined when there are none.
 */
export function namedByConnection(value: string | undefined): Set<string> | undefined {
  if (value === undefined) return undefined;
  let named: Set<string> | undefined;
  for (const token of value.split(',')) {
    const name = token.trim().toLowerCase();
    if (
      name === '' ||
      name === 'close' ||
      name === 'keep-alive' ||
      name === 'content-length' ||
      name === 'transfer-encoding'
    )
      continue;
    (named ??= new Set()).add(name);
  }
  return named;
}

/** A reason phrase as RFC 9112 §4 allows it: HTAB, SP, VCHAR, obs-text. */
const REASON_RE = /^[\t\x20-\x7e\x80-\xff]*$/;

/**
 * Whether a backend's Transfer-Encoding ends with chunked. Any other (gzip, identity,
 * `chunked, gzip`) means a body delimited by the backend closing (RFC 9112 §6.3); relayed
 * as it came, Node added no framing and kept the client connection alive, so the next
 * answer ran into this body. Dropped, Node frames the body itself.
 */
function endsChunked(value: string | string[]): boolean {
  const last = (Array.isArray(value) ? value.join(',') : value).split(',').pop();
  return last?.trim().toLowerCase() === 'chunked';
}

/**
 * A Transfer-Encoding of codings other than chunked (`gzip`) frames its body by the
 * backend's close (RFC 9112 §6.1), and the body is still in those codings: relayed with
 * chunked added last, the framing the gateway gives it. Dropped, as it was, the client
 * read gzip bytes as the body. Undefined (dropped) for a list with chunked or identity
 * in it, which chunked added again would make invalid (RFC 9112 §7: chunked once, last).
 */
function relayedCodings(value: string | string[]): string | undefined {
  const codings = (Array.isArray(value) ? value.join(',') : value)
    .split(',')
    .map((c) => c.trim().toLowerCase())
    .filter((c) => c !== '');
  // Ending in chunked, Node has taken one chunked off: the codings before it stay, chunked
  // once after them (a repeated chunked at the end, `gzip, chunked, chunked`, is that one
  // chunked said twice: the gzip stays). `chunked, chunked` (two Transfer-Encoding lines
  // of a body chunked once) went out as it came, over a body the gateway chunked once:
  // RFC 9112 §6.1 allows chunked once, and a strict client refused the answer.
  if (endsChunked(value)) while (codings.at(-1) === 'chunked') codings.pop();
  if (codings.some((c) => c === 'chunked' || c === 'identity')) return undefined;
  return codings.length === 0 ? 'chunked' : `${codings.join(', ')}, chunked`;
}

/**
 * The tokens of `Vary` values, joined: each once (field names are
 * case-insensitive), in the order first seen; `*` (varies on more than
 * headers) alone when any says it.
 */
export function joinVary(
  ...values: Array<number | string | readonly string[] | undefined>
): string {
  const seen = new Map<string, string>();
  for (const value of values) {
    if (value === undefined) continue;
    for (const line of typeof value === 'object' ? value : [String(value)]) {
      for (const raw of line.split(',')) {
        const token = raw.trim();
        if (token === '*') return '*';
        if (token !== '' && !seen.has(token.toLowerCase())) seen.set(token.toLowerCase(), token);
      }
    }
  }
  return [...seen.values()].join(', ');
}

/**
 * Sets a backend header on a response an app middleware already gave
 * headers. The backend's replaces the app's of the same name (http-proxy's
 * rule), but for two whose values add up. `Set-Cookie`: replaced, an
 * auth or CSRF middleware's rotated cookie never reached the client.
 * `Vary`: replaced, a CORS middleware's `Vary: Origin` was lost while its
 * reflected Access-Control-Allow-Origin stayed, so a shared cache could
 * serve one origin's grant to another.
 */
function mergeHeader(res: ServerResponse, name: string, value: string | string[]): void {
  if (name === 'set-cookie') res.appendHeader(name, value);
  else if (name === 'vary') res.setHeader(name, joinVary(res.getHeader(name), value));
  else res.setHeader(name, value);
}

/**
 * Writes the head; false only when it was already out (a user's proxyRes hook
 * wrote it), which http-proxy then leaves alone too.
 */
export function writeResponseHead(
  req: IncomingMessage,
  res: ServerResponse,
  proxyRes: IncomingMessage,
  /** A header of the gateway's own (lower-case), which replaces the backend's of that name. */
  extra: string | undefined,
  extraValue: string,
  /** The gateway closes this client connection after the answer. */
  close: boolean,
): boolean {
  if (res.headersSent) return false;
  const h = proxyRes.headers;
  const status = proxyRes.statusCode!;
  const http10 = req.httpVersion === '1.0';
  const named = namedByConnection(h.connection);
  // An HTTP/1.0 client that asked for keep-alive (Node read its Connection into
  // shouldKeepAlive, so `close` is false) keeps its connection only when the answer's end
  // is known without chunking, which 1.0 lacks: a Content-Length, or no body at all.
  // Otherwise the body ends with the connection, and the head says so. The client's own
  // Connection value is never echoed (it named whatever the client put there).
  const bodiless = req.method === 'HEAD' || status === 204 || status === 304;
  // The app's own `Connection: close`, set before the answer (a graceful-shutdown tool
  // marks the answers in flight so, as http-terminator does): it closes the connection.
  // The head said keep-alive over it, and the connection stayed open.
  const appCloses = CLOSE_TOKEN.test(String(res.getHeader('connection') ?? ''));
  const keep = !close && !appCloses && (!http10 || h['content-length'] !== undefined || bodiless);
  if (!keep) res.shouldKeepAlive = false;
  const connection = keep ? 'keep-alive' : 'close';
  // The flat array is one writeHead call, but only Node's own writeHead reads it as such:
  // on-headers before 1.1.0 (behind morgan, compression, express-session, response-time in
  // many lockfiles) wraps writeHead and took the array as [name, value] pairs, so the
  // answer went out with headers named 'c', 'o'... and without its own.
  const merge = res.getHeaderNames().length !== 0 || res.writeHead !== NODE_WRITE_HEAD;
  const flat: string[] = [];
  for (const name in h) {
    const value = h[name];
    if (
      value === undefined ||
      name === extra ||
      name === 'connection' ||
      name === 'keep-alive' ||
      name === 'proxy-connection' ||
      // Hop-by-hop too (RFC 9110 §7.6.1; §11.7.1: a proxy challenge is for the client that
      // chose the proxy, which is the gateway here, not the gateway's client).
      name === 'te' ||
      name === 'proxy-authenticate' ||
      (name === 'upgrade' && status !== 101) ||
      (name === 'transfer-encoding' && (http10 || status === 204)) ||
      (name === 'content-length' && status === 204) ||
      named?.has(name)
    )
      continue;
    if (name === 'transfer-encoding' && value !== 'chunked') {
      const codings = relayedCodings(value);
      if (codings !== undefined) {
        if (merge) res.setHeader(name, codings);
        else flat.push(name, codings);
      }
      continue;
    }
    if (merge) mergeHeader(res, name, value);
    else if (typeof value === 'string') flat.push(name, value);
    else for (const v of value) flat.push(name, v);
  }
  if (merge) {
    // A wrapped writeHead may still change the framing: compression() drops the
    // Content-Length an HTTP/1.0 client's keep-alive rested on, and the body then ends with
    // the connection while the head said keep-alive. Node decides from the final headers.
    // (Unset, not removed: removeHeader would tell Node to send no Connection header at all.)
    // Not for an answer without a body (HEAD, 204, 304), which keeps its connection anyway.
    if (!(http10 && keep && !bodiless && res.writeHead !== NODE_WRITE_HEAD))
      res.setHeader('connection', connection);
    if (extra !== undefined) res.setHeader(extra, extraValue);
  } else {
    flat.push('connection', connection);
    if (extra !== undefined) flat.push(extra, extraValue);
  }
  // A reason phrase Node's writeHead refuses (a control byte) made the client's answer a
  // 400 blamed on the client; without it Node writes the standard one.
  const message = REASON_RE.test(proxyRes.statusMessage ?? '') ? proxyRes.statusMessage : '';
  if (merge) {
    if (message) res.writeHead(status, message);
    else res.writeHead(status);
  } else if (message) res.writeHead(status, message, flat);
  else res.writeHead(status, flat);
  return true;
}
