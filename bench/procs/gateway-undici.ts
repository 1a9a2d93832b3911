/**
 * A peer that proxies with undici instead of Node's http client: an Express
 * app whose catch-all handler sends each request, round robin, to one
 * `undici.Pool` per backend (keep-alive, pipelining 1, as many connections per
 * backend as the keep-alive http-proxy-middleware peer's `maxSockets` in
 * bench/procs/gateway-hpm.ts). It measures whether an engine on undici would
 * beat Node's http client, which bench/profile/run.ts finds to be most of a
 * proxied request's CPU (docs/bench.md "Where the time goes").
 *
 * The proxy path is `Pool.stream` with a factory that writes the status and
 * headers to the Express response and returns it as the writable the body is
 * written to (undici's Dispatcher.stream, no intermediate Readable); the
 * request body, when there is one, is streamed to the backend as `body`.
 * Hop-by-hop headers (RFC 9110 7.6.1, and those the Connection header names)
 * are dropped both ways; everything else, Host included, passes as it is, as
 * http-proxy-middleware does at its defaults. No answer from the backend: 502.
 */
import type { ServerResponse } from 'node:http';
import express, { type Request, type Response } from 'express';
import { Pool, type Dispatcher } from 'undici';
import { fail, readConfig } from './child';
import { servePeerGateway } from './gateway-diag';

interface UndiciConfig {
  backends: Array<{ id: string; url: string }>;
  port?: number;
}

/** Connections per backend: the keep-alive HPM peer's agent has maxSockets 256 per host. */
const CONNECTIONS = 256;

const HOP_BY_HOP = new Set([
  'connection',
  'keep-alive',
  'proxy-connection',
  'proxy-authenticate',
  'proxy-authorization',
  'te',
  'trailer',
  'transfer-encoding',
  'upgrade',
  // Node's server has already answered a 100-continue; undici refuses the header.
  'expect',
]);

type Headers = Record<string, string | string[] | undefined>;

/** `headers` without hop-by-hop ones; undefined values left out. */
function endToEnd(headers: Headers): Record<string, string | string[]> {
  const connection = headers.connection;
  // The usual values name no other header: no set to build per request.
  const named =
    typeof connection === 'string' && connection !== 'keep-alive' && connection !== 'close'
      ? new Set(connection.split(',').map((t) => t.trim().toLowerCase()))
      : undefined;
  const out: Record<string, string | string[]> = {};
  for (const name in headers) {
    const value = headers[name];
    if (value === undefined || HOP_BY_HOP.has(name) || named?.has(name)) continue;
    out[name] = value;
  }
  return out;
}

/** Status and headers onto the client's response, which then takes the body (the stream factory). */
function respond({
  statusCode,
  headers,
  opaque,
}: {
  statusCode: number;
  headers: Headers;
  opaque: unknown;
}): ServerResponse {
  const res = opaque as ServerResponse;
  res.writeHead(statusCode, endToEnd(headers));
  return res;
}

function hasBody(req: Request): boolean {
  const length = req.headers['content-length'];
  return length !== undefined ? length !== '0' : req.headers['transfer-encoding'] !== undefined;
}

async function main(): Promise<void> {
  const cfg = readConfig<UndiciConfig>();
  const pools = cfg.backends.map(
    (b) => new Pool(b.url, { connections: CONNECTIONS, pipelining: 1 }),
  );
  let i = 0;
  const app = express();
  app.disable('x-powered-by');
  app.use((req: Request, res: Response) => {
    const pool = pools[i++ % pools.length]!;
    pool.stream(
      {
        path: req.originalUrl,
        method: req.method as Dispatcher.HttpMethod,
        headers: endToEnd(req.headers),
        // No body: nothing to stream (a stream would make undici send a chunked GET).
        body: hasBody(req) ? req : null,
        opaque: res,
      },
      respond,
      (err) => {
        if (!err) return;
        // After the headers, undici has destroyed the response already.
        if (res.headersSent) res.destroy();
        else res.status(502).end('bad gateway');
      },
    );
  });
  await servePeerGateway(app, cfg.port, () => Promise.all(pools.map((p) => p.destroy())));
}

main().catch(fail);
