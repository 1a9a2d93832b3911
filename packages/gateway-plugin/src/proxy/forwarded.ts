/**
 * X-Forwarded-* for the backend. By default the client's values are not
 * trusted: a client could claim any address, so we overwrite (and drop the
 * RFC 7239 `Forwarded` header we do not maintain). With trustForwarded (the
 * gateway sits behind a proxy of the user's), we append to X-Forwarded-For and
 * keep the proto/host the previous proxy set, like nginx's
 * `$proxy_add_x_forwarded_for`. X-Real-IP follows the same rule: the socket
 * address, or a trusted proxy's value.
 *
 * http-proxy's own `xfwd` always appends to whatever the client sent, so it is
 * off and this module does the job.
 */
import type { IncomingMessage } from 'node:http';
import type { TLSSocket } from 'node:tls';
import { TOKEN_HEADER } from '../observability/handlers';
import { localAddressOf } from './listen-address';

/** Forwarding headers the gateway does not set, dropped when the client is not trusted. */
const UNTRUSTED_FORWARDING = [
  'x-forwarded-ssl',
  'x-forwarded-scheme',
  'x-forwarded-prefix',
  'x-forwarded-server',
  'x-forwarded-protocol',
  'x-url-scheme',
  'front-end-https',
  'x-original-url',
  'x-rewrite-url',
];

export function setForwardedHeaders(req: IncomingMessage, trust: boolean): void {
  const h = req.headers;
  const remote = req.socket.remoteAddress ?? '';
  const encrypted = (req.socket as TLSSocket).encrypted === true;
  const host = h.host ?? '';
  // The port the client actually connected to, not one claimed in Host.
  const port = String(localAddressOf(req.socket).port ?? (encrypted ? 443 : 80));
  // Credentials for a proxy are for this gateway (RFC 9110 §11.7.4): a
  // backend must not see, log or act on them.
  delete h['proxy-authorization'];
  // So is the status endpoint's token: a near miss of its path (`/_lb/status/`, `/_LB/status`)
  // is an ordinary request, and the backend would log the token.
  delete h[TOKEN_HEADER];
  if (trust) {
    // X-Real-IP (nginx's `proxy_set_header X-Real-IP $remote_addr`): the
    // same rule as X-Forwarded-For, a trusted proxy's value is kept.
    h['x-real-ip'] ??= clientAddress(req, true);
    h['x-forwarded-for'] = h['x-forwarded-for'] ? `${h['x-forwarded-for']}, ${remote}` : remote;
    h['x-forwarded-proto'] ??= encrypted ? 'https' : 'http';
    h['x-forwarded-host'] ??= host;
    h['x-forwarded-port'] ??= port;
    return;
  }
  delete h.forwarded;
  // The other spellings of "how the client reached the proxy" that frameworks read:
  // Rack takes its scheme from X-Forwarded-Ssl before X-Forwarded-Proto, Spring's
  // ForwardedHeaderFilter honours X-Forwarded-Prefix. Untrusted, a client's copy
  // would pose as HTTPS or move the app's base path.
  for (const name of UNTRUSTED_FORWARDING) delete h[name];
  h['x-real-ip'] = remote;
  h['x-forwarded-for'] = remote;
  h['x-forwarded-proto'] = encrypted ? 'https' : 'http';
  h['x-forwarded-host'] = host;
  h['x-forwarded-port'] = port;
}

/**
 * Headers that describe this hop, not the request (RFC 9110 §7.6.1), plus
 * those the gateway has already acted on:
 * - `te`, `trailer`: http-proxy forwards the body, never the client's
 *   trailer fields, so announcing trailers would be false; and a `Trailer`
 *   header on a request that is not chunked makes Node's ClientRequest throw
 *   ERR_HTTP_TRAILER_INVALID while writing the head (_http_outgoing.js
 *   `_storeHeader`), outside any handler: one `curl -H 'Trailer: X'` used to
 *   kill the process.
 * - `expect`: Node's server has answered `100-continue` already (or the
 *   user's 'checkContinue' listener decided), and http-proxy skips its
 *   'proxyReq' event for a request with Expect (web-incoming.js), which would
 *   leave the attempt without its connect timer.
 * - `upgrade`, `http2-settings`: an upgrade is handled by lb.upgrade; on a
 *   plain request they would ask the backend to switch protocols under us.
 */
const HOP_BY_HOP = [
  'connection',
  'keep-alive',
  'proxy-connection',
  'upgrade',
  'http2-settings',
  'te',
  'trailer',
  'expect',
];

/**
 * Removes the client's hop-by-hop headers before the request goes to a
 * backend. http-proxy forwards them when an agent is set, so a client
 * sending `Connection: close` (HTTP/1.0 tools, some load balancers) would
 * make the backend close the pooled connection after every response:
 * connection churn, the p99 tail the keep-alive pool exists to avoid. The
 * gateway's agent sets its own `Connection: keep-alive`. Not for upgrades,
 * which need Connection and Upgrade.
 *
 * The headers a client's Connection header *names* are not removed, as in
 * nginx and Envoy, although RFC 9110 §7.6.1 asks for it: every header a
 * client can name there is either one it sent, which the app's middleware
 * may already have checked (`Connection: authorization` would strip the
 * credentials the app verified), or one the app added. Honouring it let a
 * client delete Content-Length (`Connection: content-length`) so the body
 * reached the backend unframed and was parsed as a second request — request
 * smuggling past the app and outside the mount path — and let it drop
 * X-Forwarded-For before a proxy re-adds it (Apache CVE-2022-31813).
 * Framing headers (Content-Length, Transfer-Encoding) and Host are never
 * touched here; request-checks.ts refuses framing that cannot be forwarded.
 */
export function stripHopByHop(req: IncomingMessage): void {
  const h = req.headers;
  for (const name of HOP_BY_HOP) delete h[name];
}

/**
 * The same for an upgrade, but Connection and Upgrade, which the handshake
 * needs: a `Trailer` made Node's ClientRequest throw on the upgrade too
 * (charged to the backend), and `te`, `expect`, `keep-alive` describe the
 * client's hop, not the backend's.
 */
export function stripHopByHopForUpgrade(req: IncomingMessage): void {
  const h = req.headers;
  for (const name of UPGRADE_HOP_BY_HOP) delete h[name];
}
const UPGRADE_HOP_BY_HOP = HOP_BY_HOP.filter((n) => n !== 'connection' && n !== 'upgrade');

/** The first entry of a comma-separated X-Forwarded-* header (what the outermost proxy saw). */
export function firstForwarded(req: IncomingMessage, name: string): string | undefined {
  const v = req.headers[name];
  return (Array.isArray(v) ? v[0] : v)?.split(',')[0]?.trim();
}

/** The client address as the gateway trusts it (first X-Forwarded-For hop only when trusted). */
export function clientAddress(req: IncomingMessage, trust: boolean): string {
  if (trust) {
    const first = firstForwarded(req, 'x-forwarded-for');
    if (first) return first;
  }
  return req.socket.remoteAddress ?? '';
}
