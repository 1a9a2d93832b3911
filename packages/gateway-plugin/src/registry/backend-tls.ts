/**
 * The TLS options of every connection to an https backend: its keep-alive
 * pool (requests, WebSocket upgrades through the dispatcher, the warm-up's
 * preconnects) and the active health checks, which open connections of their
 * own. One object per backend, so they all verify the same name with the
 * same trust.
 *
 * The name is the point. Node's https Agent takes the TLS servername (the SNI
 * it sends and the name it verifies the certificate against) from the
 * request's `Host` header unless the options name one
 * (`_http_agent.js` calculateServerName). The gateway forwards the client's
 * `Host` (changeOrigin is false by default), so a client sending
 * `Host: evil.example` made the gateway verify the backend's certificate
 * against evil.example: the handshake failed, counted as the backend's
 * failure, and five such requests ejected a healthy backend. Every distinct
 * `Host` was a pool key of its own too, so a client could also make the
 * gateway open a TLS connection per request. Here the name always comes from
 * the backend's configured URL (or `backendTls.servername`); the agent's
 * options win over a request's in Agent.createSocket, so no request can
 * change it.
 */
import { isIP } from 'node:net';
import type { BackendTlsOptions } from '../options';

/** `backendTls` as resolved (options-validate.ts): rejectUnauthorized defaulted. */
export type BackendTls = BackendTlsOptions & { rejectUnauthorized: boolean };

/** What https.Agent and https.request take for one backend: the name always set. */
export type BackendTlsConnectOptions = Omit<BackendTls, 'servername'> & {
  servername: string;
  ALPNProtocols: string[];
};

/**
 * The name a backend's certificate is verified against, from its URL: the
 * hostname without a trailing dot (SNI carries none, RFC 6066 §3), or '' for
 * an IP literal. An IP must not be sent as SNI, and with '' Node sends none
 * and verifies the certificate against the host it connected to, the IP
 * (tls.connect: `servername || host`).
 */
export function backendServerName(url: URL): string {
  const host = urlHost(url);
  return isIP(host) === 0 ? host.replace(/\.$/, '') : '';
}

/** A URL's host as a name or an address: WHATWG URL keeps an IPv6 literal's brackets. */
export function urlHost(url: URL): string {
  return url.hostname.replace(/^\[|\]$/g, '');
}

/**
 * The TLS options of an https backend's connections. ALPN offers HTTP/1.1 alone, what
 * the gateway speaks: a backend that serves only HTTP/2 refuses the handshake at once
 * (`no_application_protocol`), a failure before any byte of the request, so another
 * backend is tried. Offered nothing, such a backend took the request and answered it
 * with an HTTP/1 403 or an HTTP/2 frame (502), or held it until requestTimeoutMs (504).
 */
export function backendTlsOptions(url: URL, tls: BackendTls): BackendTlsConnectOptions {
  const { servername, ...trust } = tls;
  return {
    ...trust,
    servername: servername ?? backendServerName(url),
    ALPNProtocols: ['http/1.1'],
  };
}
