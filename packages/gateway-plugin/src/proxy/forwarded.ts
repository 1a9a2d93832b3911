/**
 * X-Forwarded-* for the backend. By default the client's values are not
 * trusted: a client could claim any address, so we overwrite (and drop the
 * RFC 7239 `Forwarded` header we do not maintain). With trustForwarded (the
 * gateway sits behind proxies of the user's), we append to X-Forwarded-For and
 * keep the proto/host the previous proxy set, like nginx's
 * `$proxy_add_x_forwarded_for`. X-Real-IP is always the client address as the
 * gateway trusts it (clientAddress), never a value the request brought.
 *
 * http-proxy's own `xfwd` always appends to whatever the client sent, so it is
 * off and this module does the job.
 */
import type { IncomingMessage } from 'node:http';
import { isIPv4, isIPv6 } from 'node:net';
import type { TLSSocket } from 'node:tls';
import { TOKEN_HEADER } from '../observability/handlers';
import { localAddressOf } from './listen-address';
import { isHostValue } from './request-checks';

/**
 * Forwarding headers the gateway does not set, dropped unless the user's trusted proxies
 * set them (`trustHeaders`): other spellings of the scheme and base path, and of the
 * client's address, which address helpers read before X-Forwarded-For (request-ip takes
 * `X-Client-IP` first) and CDNs set (Cloudflare, Fastly, Akamai): a client posed as any
 * address to them while the gateway overwrote X-Real-IP. Trusting the proxies in front
 * (`trustForwarded`) does not vouch for these: nginx and an AWS ALB append to
 * X-Forwarded-For but pass a client's `True-Client-IP` or `X-Forwarded-Ssl` on untouched.
 */
export const FORWARDING_ALIASES: readonly string[] = [
  'x-forwarded-ssl',
  'x-forwarded-scheme',
  'x-forwarded-prefix',
  'x-forwarded-server',
  'x-forwarded-protocol',
  'x-url-scheme',
  'front-end-https',
  'x-client-ip',
  'client-ip',
  'true-client-ip',
  'cf-connecting-ip',
  'fastly-client-ip',
  'x-cluster-client-ip',
  // RFC 7239's: the gateway appends to X-Forwarded-For, not to this, and nginx and an ALB
  // do not set it, so with trusted proxies a client's `for=10.0.0.1;host=evil.example`
  // reached the backend as the only Forwarded element (Spring and Jetty read it before
  // X-Forwarded-*: an internal address for allow-lists, a host for reset links).
  'forwarded',
];

/** X-Forwarded-Proto's values: a URI scheme (RFC 3986 §3.1), as RFC 7239's `proto`. */
const SCHEME = /^[a-z][a-z0-9+.-]*$/i;
const PORT = /^[0-9]{1,5}$/;

/** Every comma-separated entry of a header the request brought passes `valid`. */
function everyEntry(value: string | string[], valid: (entry: string) => boolean): boolean {
  for (const part of Array.isArray(value) ? value : [value]) {
    for (const entry of part.split(',')) if (!valid(entry.trim())) return false;
  }
  return true;
}

/** An RFC 7239 token or quoted-string value, unquoted; undefined when it is neither. */
const FORWARDED_PAIR = /^([!#$%&'*+.^_`|~0-9a-z-]+)=([!#$%&'*+.^_`|~0-9a-z-]+|"(?:[^"\\]|\\.)*")$/i;

/**
 * A Forwarded header (RFC 7239) whose `host` and `proto` are what X-Forwarded-Host and
 * -Proto may be, and that parses: Spring's ForwardedHeaderFilter builds the request's URL
 * from it before X-Forwarded-*. A quoted string with a comma or semicolon inside is not
 * split as the grammar allows; nothing sends one (a `for=` IPv6 literal has neither).
 */
function soundForwarded(value: string | string[]): boolean {
  return everyEntry(value, (element) =>
    element.split(';').every((pair) => {
      const m = FORWARDED_PAIR.exec(pair.trim());
      if (!m) return false;
      const name = m[1]!.toLowerCase();
      const raw = m[2]!;
      const v = raw.startsWith('"') ? raw.slice(1, -1).replace(/\\(.)/g, '$1') : raw;
      if (name === 'host') return isHostValue(v);
      if (name === 'proto') return SCHEME.test(v);
      return true;
    }),
  );
}

/**
 * Another path for the request than its own (IIS URL Rewrite, and the
 * frameworks that honour them: Symfony, Laminas). Dropped even from trusted
 * proxies, which pass a client's copy on unless they set their own (nginx
 * and an AWS ALB set neither): the app's routes and the gateway's path
 * checks saw the request's URL, and a backend routing by one of these served
 * `/admin` to a request for `/public` that the app's `/admin` guard never saw.
 */
const PATH_OVERRIDES = ['x-original-url', 'x-rewrite-url'];

/**
 * The headers the gateway sets, drops or vouches for, as CGI-style servers
 * also read them spelled with underscores: PHP-FPM, uWSGI and older gunicorn
 * map `X_Real_IP` and `X-Real-IP` alike to `HTTP_X_REAL_IP`, so a client's
 * `X_Real_IP: 10.0.0.1` sent next to the gateway's `X-Real-IP` won or was
 * merged there (the last of a repeated key wins), and `X_Original_URL`
 * routed by Symfony as the dropped `X-Original-URL` would. nginx drops every
 * header with an underscore by default (`underscores_in_headers off`); the
 * gateway drops those that spell one of these, and passes the others.
 */
const UNDERSCORE_SPELLED = new Set([
  'x-real-ip',
  'x-forwarded-for',
  'x-forwarded-proto',
  'x-forwarded-host',
  'x-forwarded-port',
  'forwarded',
  'proxy-authorization',
  'content-length',
  'transfer-encoding',
  ...FORWARDING_ALIASES,
  ...PATH_OVERRIDES,
]);

function dropUnderscoreSpellings(h: IncomingMessage['headers']): void {
  for (const name in h) {
    if (name.includes('_') && UNDERSCORE_SPELLED.has(name.replaceAll('_', '-'))) delete h[name];
  }
}

function dropUnless(
  h: IncomingMessage['headers'],
  name: string,
  sound: (value: string | string[]) => boolean,
): void {
  const v = h[name];
  if (v !== undefined && !sound(v)) delete h[name];
}

/**
 * `client`: the flow's clientAddress(req, hops), taken before this appends to
 * X-Forwarded-For; `hops`: the resolved trustForwarded (0: trust nothing);
 * `kept`: the resolved trustHeaders, the FORWARDING_ALIASES the trusted proxies
 * set (lower case; empty without trust); `h`: the headers the backend gets
 * (request-flow.ts sets them on a copy, so the app's middleware keeps reading
 * the request as it came).
 */
export function setForwardedHeaders(
  req: IncomingMessage,
  hops: number,
  kept: readonly string[],
  client: string,
  h: IncomingMessage['headers'] = req.headers,
): void {
  const remote = req.socket.remoteAddress ?? '';
  const encrypted = (req.socket as TLSSocket).encrypted === true;
  // An HTTP/1.0 request may come without one: then no X-Forwarded-Host (it was sent empty).
  const host = h.host;
  // The port the client actually connected to, not one claimed in Host.
  const port = String(localAddressOf(req.socket).port ?? (encrypted ? 443 : 80));
  // Credentials for a proxy are for this gateway (RFC 9110 §11.7.4): a
  // backend must not see, log or act on them.
  delete h['proxy-authorization'];
  // httpoxy (CVE-2016-5385): CGI-style servers make `Proxy:` HTTP_PROXY, which the
  // backend's own HTTP clients then use as their proxy. No proxy sets it; nginx's and
  // HAProxy's advice is to remove it.
  delete h.proxy;
  dropUnderscoreSpellings(h);
  // So is the status endpoint's token: a near miss of its path (`/_lb/status/`, `/_LB/status`)
  // is an ordinary request, and the backend would log the token.
  delete h[TOKEN_HEADER];
  // X-Real-IP (nginx's `proxy_set_header X-Real-IP $remote_addr`) is
  // overwritten even behind trusted proxies: one that does not set it (an AWS
  // ALB does not) passes the client's own, and backends act on it (allow-lists,
  // audit logs).
  h['x-real-ip'] = client;
  for (const name of PATH_OVERRIDES) delete h[name];
  // The other spellings of "how the client reached the proxy" that frameworks read:
  // Rack takes its scheme from X-Forwarded-Ssl before X-Forwarded-Proto, Spring's
  // ForwardedHeaderFilter honours X-Forwarded-Prefix, request-ip believes X-Client-IP.
  // A client's copy would pose as HTTPS, move the app's base path or claim an address;
  // kept only where the user says their proxies set them.
  for (const name of FORWARDING_ALIASES) if (!kept.includes(name)) delete h[name];
  if (hops > 0) {
    h['x-forwarded-for'] = h['x-forwarded-for'] ? `${h['x-forwarded-for']}, ${remote}` : remote;
    // Kept from a trusted proxy only when they are what they claim to be: one that sets
    // none of them (an AWS ALB sets no X-Forwarded-Host, nginx none without
    // proxy_set_header) passes the client's copy on, and `X-Forwarded-Host:
    // example.com/admin?x=`, refused as Host, made a backend that builds its URL from it
    // serve `/admin` to a request the app judged as `/public`. The gateway's own instead.
    dropUnless(h, 'x-forwarded-host', (v) => everyEntry(v, isHostValue));
    dropUnless(h, 'x-forwarded-proto', (v) => everyEntry(v, (e) => SCHEME.test(e)));
    dropUnless(h, 'x-forwarded-port', (v) => everyEntry(v, (e) => PORT.test(e)));
    // Named in trustHeaders (above): still only when sound.
    dropUnless(h, 'forwarded', soundForwarded);
    h['x-forwarded-proto'] ??= encrypted ? 'https' : 'http';
    if (host !== undefined) h['x-forwarded-host'] ??= host;
    h['x-forwarded-port'] ??= port;
    return;
  }
  delete h.forwarded;
  h['x-forwarded-for'] = remote;
  h['x-forwarded-proto'] = encrypted ? 'https' : 'http';
  if (host === undefined) delete h['x-forwarded-host'];
  else h['x-forwarded-host'] = host;
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
export function stripHopByHop(h: IncomingMessage['headers']): void {
  for (const name of HOP_BY_HOP) delete h[name];
}

/**
 * The same for an upgrade, but Upgrade, which the handshake needs, and a
 * Connection of the gateway's own that names it alone: a `Trailer` made
 * Node's ClientRequest throw on the upgrade too (charged to the backend), and
 * `te`, `expect`, `keep-alive` describe the client's hop, not the backend's.
 * The client's Connection went out as it came (`Upgrade, X-Forwarded-For,
 * Host`), and a backend or proxy that honours the names in it (Go's
 * ReverseProxy, Apache, Traefik) dropped the X-Forwarded-For the gateway had
 * set, or a header the app added after its auth (above).
 */
export function stripHopByHopForUpgrade(req: IncomingMessage): void {
  const h = req.headers;
  for (const name of UPGRADE_HOP_BY_HOP) delete h[name];
  h.connection = 'Upgrade';
}
const UPGRADE_HOP_BY_HOP = HOP_BY_HOP.filter((n) => n !== 'connection' && n !== 'upgrade');

/** The first entry of a comma-separated X-Forwarded-* header (what the outermost proxy saw). */
export function firstForwarded(req: IncomingMessage, name: string): string | undefined {
  const v = req.headers[name];
  return (Array.isArray(v) ? v[0] : v)?.split(',')[0]?.trim();
}

/**
 * The client address as the gateway trusts it. `hops` (the resolved
 * trustForwarded) is the number of trusted proxies in front: each appends the
 * address it got the request from to X-Forwarded-For, so the right-most entry
 * is what the nearest one saw and the `hops`-th from the right what the
 * farthest trusted one saw: the client. Entries further left are whatever the
 * client sent, so the left-most entry is never believed unless there are no
 * more entries than trusted proxies (then it is the left-most present one).
 * The rule of Envoy's `xff_num_trusted_hops` and Express's numeric
 * `trust proxy`, so an app's `req.ip` and the backend's X-Real-IP agree.
 * Empty entries (`a, , b`, or the `, b` nginx makes of an empty header) are
 * skipped, as Express does. Without trust, or with no entry, the socket's.
 *
 * Called on every request: scans from the right, allocating only the entries
 * it passes.
 */
export function clientAddress(req: IncomingMessage, hops: number): string {
  const remote = req.socket.remoteAddress ?? '';
  if (hops === 0) return remote;
  const v = req.headers['x-forwarded-for'];
  if (v === undefined) return remote;
  // Node joins repeated X-Forwarded-For lines with ", " already; an array can
  // only come from a middleware before the balancer.
  const entry = nthFromRight(Array.isArray(v) ? v.join(',') : v, hops);
  return entry === undefined ? remote : withoutPort(entry);
}

/**
 * An X-Forwarded-For entry without the port some proxies add (Azure
 * Application Gateway and IIS ARR write `203.0.113.7:51234`, others
 * `[2001:db8::7]:51234`): with it, each connection of one client was a
 * client of its own to `maxInFlightPerClient`, `webSockets.maxPerClient`
 * and address affinity, which a client then escaped by opening
 * connections. Anything that is not an address with a port stays as it is.
 */
function withoutPort(entry: string): string {
  const last = entry.charCodeAt(entry.length - 1);
  // Fast path: most entries end in neither a port's digit nor ']'.
  if (!(last >= 0x30 && last <= 0x39) && last !== 0x5d) return entry;
  if (entry.charCodeAt(0) === 0x5b) {
    const close = entry.indexOf(']');
    const rest = entry.slice(close + 1);
    const ip = entry.slice(1, close);
    return close > 1 && (rest === '' || /^:\d{1,5}$/.test(rest)) && isIPv6(ip) ? ip : entry;
  }
  const m = /^(\d{1,3}(?:\.\d{1,3}){3}):\d{1,5}$/.exec(entry);
  return m && isIPv4(m[1]!) ? m[1]! : entry;
}

/** The `n`-th non-empty entry from the right of a comma-separated list, else its left-most one. */
function nthFromRight(list: string, n: number): string | undefined {
  let found: string | undefined;
  let seen = 0;
  let end = list.length;
  while (end > 0) {
    const comma = list.lastIndexOf(',', end - 1);
    const entry = list.slice(comma + 1, end).trim();
    if (entry !== '') {
      found = entry;
      if (++seen === n) return found;
    }
    end = comma;
  }
  return found;
}
