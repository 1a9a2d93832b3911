/**
 * How a failed attempt is classified: the kind decides whether it may be
 * retried (a connection failure may, a timeout may not) and how it is counted.
 */
import type { ClientRequest } from 'node:http';
import type { Socket } from 'node:net';
import { TLSSocket } from 'node:tls';
import type { UpstreamErrorKind } from '../observability';

/** Our own error codes on a destroyed backend request, to tell timeouts from resets. */
export const TIMEOUT_CODE = 'LW_GW_UPSTREAM_TIMEOUT';
export const CONNECT_TIMEOUT_CODE = 'LW_GW_CONNECT_TIMEOUT';
/** The backend's answer waited on the client (it stopped reading), not the other way round. */
export const CLIENT_STALLED_CODE = 'LW_GW_CLIENT_STALLED';

/**
 * The event by which a new connection to a backend is made: to an https backend, once its
 * TLS handshake is (a TLS terminator that accepts and never answers the ClientHello has
 * not connected); Node writes the request only after it.
 */
export function connectedEvent(socket: Socket): 'secureConnect' | 'connect' {
  return socket instanceof TLSSocket ? 'secureConnect' : 'connect';
}

/**
 * A reset (or a write to a closed socket) of a backend request that was given a pooled
 * connection: the idle-close race when no answer came yet (request-flow.ts
 * staleConnection, upgrade-flow.ts).
 */
export function resetOnPooledConnection(err: Error, proxyReq: ClientRequest | undefined): boolean {
  const code = (err as { code?: string }).code;
  return (code === 'ECONNRESET' || code === 'EPIPE') && proxyReq?.reusedSocket === true;
}

export function classify(err: Error & { code?: string }): UpstreamErrorKind {
  if (err.code === TIMEOUT_CODE || err.code === CONNECT_TIMEOUT_CODE) return 'timeout';
  if (err.code === 'ECONNRESET' || err.code === 'EPIPE') return 'reset';
  return 'connect';
}

/**
 * The gateway's own resources ran out making the attempt (file descriptors, buffers, memory):
 * nothing about the backend. Counted as the backend's connect failures, a gateway out of
 * descriptors (an idle-connection flood) ejected healthy backends for 30 s, past the moment
 * it had descriptors again, and its alerts and logs blamed them. Not EADDRNOTAVAIL: on a
 * connect it belongs to the destination (no source address for it, as `http://[::1]` where
 * IPv6 is off, or the local ports towards that one address and port used up), so another
 * backend may well be reached. Taken as the gateway's, such a backend was never charged nor
 * ejected, kept half the picks of two, and each of them got 503 instead of a retry.
 */
const LOCAL_RESOURCE_CODES = new Set(['EMFILE', 'ENFILE', 'ENOBUFS', 'ENOMEM']);

export function isLocalResourceError(err: Error): boolean {
  return LOCAL_RESOURCE_CODES.has((err as { code?: string }).code ?? '');
}

/** A backend request's error for a 101 to a request that asked for no upgrade. */
export const UNASKED_UPGRADE_CODE = 'LW_UNASKED_UPGRADE';

/**
 * The backend answered, and the answer could not be relayed: Node's parser
 * refused its bytes (llhttp's `HPE_*`: a status below 100, a broken head), or
 * it switched protocols unasked. Not a backend that could not be reached.
 */
export function isBadAnswer(err: Error & { code?: string }): boolean {
  const code = err.code ?? '';
  return code.startsWith('HPE_') || code === UNASKED_UPGRADE_CODE;
}

/**
 * The backend ended a new TLS connection with an alert (`ERR_SSL_TLSV13_ALERT_CERTIFICATE_REQUIRED`,
 * `ERR_SSL_SSLV3_ALERT_BAD_CERTIFICATE`, `..._UNKNOWN_CA`): it refused the handshake, and
 * nothing written after the gateway's side of it reached its application.
 */
export function isTlsRefusal(err: Error & { code?: string }): boolean {
  const code = err.code ?? '';
  return code.startsWith('ERR_SSL_') && code.includes('_ALERT_');
}

export function codedError(message: string, code: string): Error {
  return Object.assign(new Error(message), { code });
}

/**
 * Errors Node's ClientRequest throws for a request it refuses to send as
 * given: the client's doing (a 400), not the backend's or the gateway's.
 * Not ERR_HTTP_INVALID_HEADER_VALUE: Node throws it for a header whose value
 * is `undefined`, which no client can send; only the app's code can set one
 * (`req.headers['x-user'] = user.email` for a user without one), and a 400
 * blamed the client for the gateway's bug.
 */
const INVALID_REQUEST_CODES = new Set([
  'ERR_INVALID_CHAR', // a header value with a byte Node will not write
  'ERR_INVALID_HTTP_TOKEN', // a header name or method that is not a token
  'ERR_UNESCAPED_CHARACTERS', // a request path with characters Node will not write
  'ERR_HTTP_TRAILER_INVALID', // a Trailer header on a request that is not chunked
]);

export function isInvalidRequestError(err: Error): boolean {
  return INVALID_REQUEST_CODES.has((err as { code?: string }).code ?? '');
}

/** Not `instanceof Error`: Node's own errors may come from another realm (vm, jest). */
/** What a log line or a reason names a failure by: its code (`ECONNREFUSED`), else its message. */
export function errnoOf(err: unknown): string {
  const e = asError(err) as Error & { code?: unknown };
  return String(e.code ?? e.message);
}

export function asError(err: unknown): Error {
  return typeof err === 'object' && err !== null && 'message' in err
    ? (err as Error)
    : new Error(String(err));
}
