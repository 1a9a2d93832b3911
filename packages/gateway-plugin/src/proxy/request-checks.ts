/**
 * What a request must satisfy before it is proxied: framing the gateway can
 * forward as it was meant, and a path that cannot leave the backend's base
 * path. Node's own parser (llhttp, strict by default) already refuses most
 * broken framing with a 400 before the app sees it; these checks are the
 * gateway's second line, for what strict Node lets through (`Transfer-Encoding:
 * gzip, chunked`, a duplicate Host) and for servers created with
 * `insecureHTTPParser` or middleware that rewrote headers.
 */
import type { IncomingMessage } from 'node:http';

/** How the request body is delimited, decided once at admission (http-proxy rewrites the headers later). */
export type BodyFraming = 'none' | 'length' | 'chunked';

export type Framing = { ok: true; framing: BodyFraming } | { ok: false; detail: string };

const DIGITS = /^[0-9]+$/;

/**
 * A Host header (RFC 9112 §3.2, "MUST respond with a 400" to an invalid one): a DNS name
 * (letters, digits, `-`, `.`, `_`, `~`), an IPv4 address or an `[IPv6]` literal, then an
 * optional port. Backends build absolute URLs from Host (`http://${host}${req.url}`, as
 * many Node adapters do) and the gateway copies it into X-Forwarded-Host: `Host:
 * example.com/admin?x=` made a request the app judged as `GET /public` reach the backend's
 * `/admin`. Stricter than RFC 3986's reg-name (no sub-delims, no %-encoding), which no
 * real host name uses; `..` is refused too (nginx does: vhost directories named by Host).
 * Empty is refused (nginx does); absent, Node has already refused HTTP/1.1.
 */
const HOST = /^(?:\[[0-9a-f:.]+\]|[a-z0-9._~-]+)(?::[0-9]*)?$/i;

/** `value` is a Host header the gateway would accept (HOST, and no `..`). */
export function isHostValue(value: string): boolean {
  return HOST.test(value) && !value.includes('..');
}

// The answers for a sound request, shared: checkFraming runs on every request.
const NO_BODY: Framing = Object.freeze({ ok: true, framing: 'none' });
const BY_LENGTH: Framing = Object.freeze({ ok: true, framing: 'length' });
const CHUNKED: Framing = Object.freeze({ ok: true, framing: 'chunked' });

/**
 * RFC 9112 §6.1-6.3 and §3.2: a body is framed by exactly one of
 * `Transfer-Encoding: chunked` or one Content-Length; anything else could be
 * read differently by the backend than by the gateway (request smuggling),
 * so it is refused, and a request with more than one Host is refused too
 * ("MUST respond with a 400").
 */
export function checkFraming(req: IncomingMessage): Framing {
  const h = req.headers;
  // llhttp reads `HTTP/2.0` (or 1.9) on a request line; forwarded, it went as HTTP/1.1 and
  // was answered as 1.1. Not HTTP/1.x: refused (nginx answers 505).
  if (req.httpVersionMajor !== 1) return { ok: false, detail: 'not an HTTP/1.x request' };
  const te = h['transfer-encoding'];
  const cl = h['content-length'];
  if (te !== undefined && cl !== undefined) {
    return { ok: false, detail: 'both Transfer-Encoding and Content-Length' };
  }
  // HTTP/1.0 has no chunked coding: RFC 9112 §6.1 has a 1.0 request with
  // Transfer-Encoding treated as faulty framing, and nginx answers it 400. Node
  // reads it as chunked and keeps the connection open, so a proxy in front that
  // reads 1.0 framing (the body ends with the connection) sees one request where
  // the backend gets two.
  if (te !== undefined && req.httpVersionMajor === 1 && req.httpVersionMinor === 0) {
    return { ok: false, detail: 'Transfer-Encoding in an HTTP/1.0 request' };
  }
  // Transfer coding names are case-insensitive (RFC 9112 §7). Any other
  // coding ("gzip, chunked", "identity") would be forwarded under a
  // re-chunked body by Node's ClientRequest: refuse rather than guess.
  if (te !== undefined && te.trim().toLowerCase() !== 'chunked') {
    return { ok: false, detail: 'Transfer-Encoding other than chunked' };
  }
  if (cl !== undefined && !DIGITS.test(cl)) {
    return { ok: false, detail: 'Content-Length is not a single number' };
  }
  // Node keeps the first of several Host (and Content-Length) lines and
  // drops the rest; a proxy in front may have used another one.
  const raw = req.rawHeaders;
  let hosts = 0;
  let lengths = 0;
  for (let i = 0; i < raw.length; i += 2) {
    const name = raw[i]!;
    if (name.length === 4 && name.toLowerCase() === 'host') hosts++;
    else if (name.length === 14 && name.toLowerCase() === 'content-length') lengths++;
  }
  if (hosts > 1) return { ok: false, detail: 'more than one Host header' };
  const host = h.host;
  if (host !== undefined && !isHostValue(host)) {
    return { ok: false, detail: 'Host is not a host name or address with an optional port' };
  }
  if (lengths > 1) return { ok: false, detail: 'more than one Content-Length header' };
  if (te !== undefined) return CHUNKED;
  return cl !== undefined && cl !== '0' ? BY_LENGTH : NO_BODY;
}

/**
 * A dot-segment ("." or "..") anywhere in the path, in any spelling a backend
 * might decode: "." as `%2e`, "/" as a backslash (url.parse, which http-proxy
 * uses for the outgoing path, turns `\` into `/`; Windows servers do too),
 * `%2f` or `%5c`, and with a `;parameter` (Tomcat reads `/..;/` as `/../`).
 * The path is refused, not normalised: browsers and curl remove dot-segments
 * before sending (RFC 3986 §5.2.4), so a request that still has one was made
 * that way on purpose, and the app's own middleware (auth, routing) has
 * already judged the unnormalised path. Forwarded, `/api/..\..\secret` became
 * `/base/../../secret` at a backend whose target URL has the base path `/base`.
 */
const DOT_SEGMENT = /(?:^|[/\\]|%2f|%5c)(?:\.|%2e){1,2}(?:;[^/\\]*)?(?:[/\\]|%2f|%5c|$)/i;

/** origin-form (`/path`) or absolute-form (`http://host/path`), RFC 9112 §3.2. */
const PATH_OR_ABSOLUTE = /^(?:\/|[a-z][a-z0-9+.-]*:\/\/)/i;

/**
 * What http-proxy would change on the way to the backend: it joins the
 * outgoing path with `common.urlJoin`, which merges every run of slashes
 * (`//admin` becomes `/admin`), after url.parse turned each `\` before the
 * query into `/`. The app's middleware matched the path as it came, so
 * `GET //admin` passed `app.use('/admin', guard)` and reached the backend as
 * `/admin`. Refused for the same reason as a dot-segment: the backend must
 * get the path the app judged, and http-proxy has no way to send it as is.
 */
const REWRITTEN_BY_PROXY = /\/\/|\\/;

/**
 * http-proxy's urlJoin also turns the first `http:/` of the joined path into
 * `http://` (and `https:/` into `https://`): `/go/http:/evil.example/x`,
 * judged by the app as it came, reached the backend as
 * `/go/http://evil.example/x`, the empty segment a client cannot send.
 * Case-sensitive, as that replace is.
 */
const SCHEME_REWRITTEN_BY_PROXY = /https?:\//;

/**
 * The authority of an absolute-form target (RFC 3986 §3.2): userinfo, a
 * registered name, IPv4 or an IP literal, and a port of digits. url.parse,
 * which both Express's router and http-proxy read the target with, ends the
 * host at the first other character (`%`, a space, a quote) and makes the
 * rest the path; checked after the first `/`, `http://x%2e%2e%2fsecret`
 * passed with an empty path and reached the backend as
 * `/base/%2e%2e%2fsecret`, outside its base path once decoded. And
 * `http://x:abc/y` was checked as `/y` and forwarded as `/:abc/y`. Such a
 * target is refused, not re-read. So is a host with `;` or `'`, which url.parse
 * also ends the host at though RFC 3986 allows them there: `GET http://a;b/admin`
 * without a Host was checked as `/admin`, routed by Express as `;b/admin` past an
 * `app.use('/admin', guard)`, and reached the backend as `/;b/admin`, which Tomcat
 * and Spring read as `/admin` (a re-review, 2026-12-07). And userinfo with a `%`
 * not followed by two hex digits, on which url.parse throws: http-proxy-middleware
 * then declined the upgrade without a word, which held its client's places for good.
 */
const AUTHORITY =
  /^(?:(?:[\w.~!$&'()*+,;=:-]|%[0-9a-f]{2})*@)?(?:\[[0-9a-f:.]+\]|[\w.~!$&()*+,=-]*)(?::\d*)?$/i;

/**
 * The path of an origin- or absolute-form target (after `scheme://authority`),
 * or undefined for an absolute-form target whose authority url.parse would
 * read differently (AUTHORITY).
 */
function pathOf(target: string): string | undefined {
  if (target.charCodeAt(0) === 47 /* / */) return target;
  const authority = authorityOf(target);
  if (!AUTHORITY.test(authority)) return undefined;
  return target.slice(target.indexOf('://') + 3 + authority.length);
}

/** The authority of an absolute-form target cut before its query (`scheme://authority/...`). */
function authorityOf(target: string): string {
  const from = target.indexOf('://') + 3;
  const slash = target.indexOf('/', from);
  return target.slice(from, slash < 0 ? target.length : slash);
}

/**
 * `host:port` lower-cased, the port left out when it is the scheme's default and a
 * root dot (`example.com.`) dropped. A Host header has no userinfo: only a target's
 * authority is read past its `@`.
 */
function hostAndPort(authority: string, https: boolean, userinfo: boolean): string {
  const a = (userinfo ? authority.slice(authority.lastIndexOf('@') + 1) : authority).toLowerCase();
  const port = /:(\d*)$/.exec(a);
  let host = a;
  let n: number | undefined;
  if (port) {
    host = a.slice(0, port.index);
    n = port[1] === '' ? undefined : Number(port[1]);
  }
  if (host.endsWith('.')) host = host.slice(0, -1);
  return n === undefined || n === (https ? 443 : 80) ? host : `${host}:${n}`;
}

/**
 * An absolute-form target names its host, and a server takes that one, not Host (RFC
 * 9112 §3.2.2), as nginx does; the app in front of the balancer routed and guarded by
 * Host, and so does the backend, which gets the path only. A request whose two hosts
 * differ (`GET http://admin.internal/x` with `Host: www.example`) is one the app and an
 * RFC-reading proxy ahead of it read differently: refused.
 */
function otherHost(target: string, host: string | undefined): boolean {
  if (host === undefined || target.charCodeAt(0) === 47 /* / */) return false;
  const https = /^https:/i.test(target);
  return hostAndPort(authorityOf(target), https, true) !== hostAndPort(host, https, false);
}

/**
 * Why this request target must not be forwarded, or undefined. `host`: the request's Host
 * header, which an absolute-form target's authority must name too.
 */
export function checkPath(url: string | undefined, host?: string): string | undefined {
  if (url === undefined) return undefined;
  // `OPTIONS *` (asterisk-form) asks about this server, not a resource: no
  // backend path can be made of it (http-proxy would send `/base*`).
  if (!PATH_OR_ABSOLUTE.test(url)) return 'request target is not a path';
  // Only the path: a query may carry "../" as data.
  let end = url.length;
  const q = url.indexOf('?');
  if (q >= 0) end = q;
  const f = url.indexOf('#');
  if (f >= 0 && f < end) end = f;
  const target = end === url.length ? url : url.slice(0, end);
  const path = pathOf(target);
  if (path === undefined) return 'malformed authority in an absolute-form target';
  if (otherHost(target, host)) return 'an absolute-form target naming another host than Host';
  if (DOT_SEGMENT.test(path)) return 'dot-segment in the path';
  // An encoded NUL: C backends (PHP, CGI) end a file name there, Node's fs throws on it;
  // no real path has one (nginx answers 400).
  if (path.includes('%00')) return 'encoded NUL (%00) in the path';
  const rewritten = REWRITTEN_BY_PROXY.exec(path);
  if (rewritten)
    return rewritten[0] === '\\' ? 'backslash in the path' : 'empty segment (//) in the path';
  if (SCHEME_REWRITTEN_BY_PROXY.test(path)) return "'http:/' in the path";
  return undefined;
}

/**
 * A method the gateway answers itself instead of proxying, and why; undefined
 * for every other. TRACE makes the backend echo the request as it received
 * it, so the client would read what the gateway added on the way: an
 * internal credential an `on.proxyReq` hook sets, the identity an auth
 * middleware put in a header, X-Forwarded-*. nginx refuses it the same way
 * (405). Node's parser hands over methods in upper case only.
 */
export function refusedMethod(method: string | undefined): string | undefined {
  return method === 'TRACE'
    ? 'TRACE is not proxied: the backend would echo the headers the gateway added'
    : undefined;
}
