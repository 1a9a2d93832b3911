/**
 * X-Forwarded-* for the backend. By default the client's values are not
 * trusted: a client could claim any address, so we overwrite (and drop the
 * RFC 7239 `Forwarded` header we do not maintain). With trustForwarded (the
 * gateway sits behind a proxy of the user's), we append to X-Forwarded-For and
 * keep the proto/host the previous proxy set, like nginx's
 * `$proxy_add_x_forwarded_for`.
 *
 * http-proxy's own `xfwd` always appends to whatever the client sent, so it is
 * off and this module does the job.
 */
import type { IncomingMessage } from 'node:http';
import type { TLSSocket } from 'node:tls';

export function setForwardedHeaders(req: IncomingMessage, trust: boolean): void {
  const h = req.headers;
  const remote = req.socket.remoteAddress ?? '';
  const encrypted = (req.socket as TLSSocket).encrypted === true;
  const host = h.host ?? '';
  // The port the client actually connected to, not one claimed in Host.
  const port = String(req.socket.localPort ?? (encrypted ? 443 : 80));
  if (trust) {
    h['x-forwarded-for'] = h['x-forwarded-for'] ? `${h['x-forwarded-for']}, ${remote}` : remote;
    h['x-forwarded-proto'] ??= encrypted ? 'https' : 'http';
    h['x-forwarded-host'] ??= host;
    h['x-forwarded-port'] ??= port;
    return;
  }
  delete h.forwarded;
  h['x-forwarded-for'] = remote;
  h['x-forwarded-proto'] = encrypted ? 'https' : 'http';
  h['x-forwarded-host'] = host;
  h['x-forwarded-port'] = port;
}

const HOP_BY_HOP = ['connection', 'keep-alive', 'proxy-connection', 'upgrade'];

/**
 * Removes the client's hop-by-hop headers (RFC 9110 §7.6.1), and those its
 * Connection header names, before the request goes to a backend.
 * http-proxy forwards them when an agent is set, so a client sending
 * `Connection: close` (HTTP/1.0 tools, some load balancers) would make the
 * backend close the pooled connection after every response: connection
 * churn, the p99 tail the keep-alive pool exists to avoid. The gateway's
 * agent sets its own `Connection: keep-alive`. Transfer-Encoding stays: it
 * frames the body being streamed through. Not for upgrades, which need
 * Connection and Upgrade.
 */
export function stripHopByHop(req: IncomingMessage): void {
  const h = req.headers;
  const named = h.connection;
  if (named) {
    for (const token of named.split(',')) {
      const name = token.trim().toLowerCase();
      if (name && name !== 'transfer-encoding' && name !== 'host') delete h[name];
    }
  }
  for (const name of HOP_BY_HOP) delete h[name];
}

/** The client address as the gateway trusts it (first X-Forwarded-For hop only when trusted). */
export function clientAddress(req: IncomingMessage, trust: boolean): string {
  if (trust) {
    const xff = req.headers['x-forwarded-for'];
    const first = (Array.isArray(xff) ? xff[0] : xff)?.split(',')[0]?.trim();
    if (first) return first;
  }
  return req.socket.remoteAddress ?? '';
}
