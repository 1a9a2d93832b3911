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

/** The client address as the gateway trusts it (first X-Forwarded-For hop only when trusted). */
export function clientAddress(req: IncomingMessage, trust: boolean): string {
  if (trust) {
    const xff = req.headers['x-forwarded-for'];
    const first = (Array.isArray(xff) ? xff[0] : xff)?.split(',')[0]?.trim();
    if (first) return first;
  }
  return req.socket.remoteAddress ?? '';
}
