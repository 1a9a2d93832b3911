import { isIP } from 'node:net';

/**
 * A backend's server, for "one id per server": host and port (the scheme's default port
 * when none is given), not `URL.origin`, which has the scheme. Keyed by origin,
 * `http://10.0.0.5:8443` was another server than an https backend's
 * `https://10.0.0.5:8443`: a key holder could register it for another id, and that id's
 * requests, cookies and tokens went in cleartext to the TLS port (retried on the real
 * backend, so no client saw it).
 */
export function serverOf(url: URL): string {
  return `${serverHost(url.hostname)}:${portOf(url)}`;
}

/**
 * A host as a server key: every loopback address and the unspecified ones are one
 * (`loopback`), and an IPv6 address is bracketed whether given so or not. A server
 * listening on all addresses (Node's default) answers on each of them, so `127.0.0.2:P` or
 * `[::1]:P` beside `127.0.0.1:P` was a second id on one server (a review of the change
 * that compared a configured name's addresses). Two servers bound to two loopback
 * addresses on one port are told apart no longer, which only a host's own tests do.
 */
export function serverHost(hostname: string): string {
  const h = hostname.startsWith('[') ? hostname.slice(1, -1) : hostname;
  const family = isIP(h);
  if (family === 4) return h.startsWith('127.') || h === '0.0.0.0' ? 'loopback' : h;
  if (family === 6) return h === '::1' || h === '::' ? 'loopback' : `[${h}]`;
  return hostname;
}

/** The scheme's default port when the URL has none (URL drops a default port). */
export function portOf(url: URL): number {
  return url.port === '' ? (url.protocol === 'https:' ? 443 : 80) : Number(url.port);
}
