/**
 * The backend's status line and headers, written to the client in one
 * `writeHead` call. What http-proxy's response passes do (web-outgoing.js:
 * removeChunked, setConnection, writeHeaders, writeStatusCode), with the
 * same result: the backend's parsed headers, lower-case, `Connection` as
 * http-proxy sets it. It runs from the balancer's 'proxyRes' listener, which
 * http-proxy calls before its passes; with the head written
 * (`res.headersSent`) http-proxy skips them and only pipes the body.
 *
 * Why: http-proxy copies the head one `res.setHeader` per header (each
 * validated, lower-cased and stored as a [name, value] pair) and then the
 * status; handing Node the flat list costs one validation per header and
 * nothing else (docs/bench.md, "Where the time goes").
 *
 * Only when the response has no header yet: headers an app middleware set
 * before the proxy (CORS, security headers, Express's X-Powered-By) make Node
 * take a slower merge path for a list; http-proxy's own passes do that merge,
 * so they are left to it.
 */
import type { IncomingMessage, ServerResponse } from 'node:http';

/** Writes the head and returns true, or returns false and leaves it to http-proxy. */
export function writeResponseHead(
  req: IncomingMessage,
  res: ServerResponse,
  proxyRes: IncomingMessage,
  /** A header of the gateway's own (lower-case), which replaces the backend's of that name. */
  extra: string | undefined,
  extraValue: string,
): boolean {
  if (res.headersSent || res.getHeaderNames().length !== 0) return false;
  const h = proxyRes.headers;
  // web-outgoing.js removeChunked and setConnection.
  if (req.httpVersion === '1.0') {
    delete h['transfer-encoding'];
    h.connection = req.headers.connection || 'close';
  } else if (!h.connection) {
    h.connection = req.headers.connection || 'keep-alive';
  }
  const flat: string[] = [];
  for (const name in h) {
    const value = h[name];
    if (value === undefined || name === extra) continue;
    if (typeof value === 'string') flat.push(name, value);
    else for (const v of value) flat.push(name, v);
  }
  if (extra !== undefined) flat.push(extra, extraValue);
  const status = proxyRes.statusCode!;
  const message = proxyRes.statusMessage;
  if (message) res.writeHead(status, message, flat);
  else res.writeHead(status, flat);
  return true;
}
