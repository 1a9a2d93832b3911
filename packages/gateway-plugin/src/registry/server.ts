/**
 * A backend's server, for "one id per server": host and port (the scheme's default port
 * when none is given), not `URL.origin`, which has the scheme. Keyed by origin,
 * `http://10.0.0.5:8443` was another server than an https backend's
 * `https://10.0.0.5:8443`: a key holder could register it for another id, and that id's
 * requests, cookies and tokens went in cleartext to the TLS port (retried on the real
 * backend, so no client saw it).
 */
export function serverOf(url: URL): string {
  return `${url.hostname}:${portOf(url)}`;
}

/** The port a backend URL reaches: its own, or its scheme's default (URL drops a default port). */
export function portOf(url: URL): number {
  return url.port === '' ? (url.protocol === 'https:' ? 443 : 80) : Number(url.port);
}
