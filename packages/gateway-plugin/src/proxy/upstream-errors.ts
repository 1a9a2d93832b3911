/**
 * How a failed attempt is classified: the kind decides whether it may be
 * retried (a connection failure may, a timeout may not) and how it is counted.
 */
import type { UpstreamErrorKind } from '../observability';

/** Our own error codes on a destroyed backend request, to tell timeouts from resets. */
export const TIMEOUT_CODE = 'LW_GW_UPSTREAM_TIMEOUT';
export const CONNECT_TIMEOUT_CODE = 'LW_GW_CONNECT_TIMEOUT';

export function classify(err: Error & { code?: string }): UpstreamErrorKind {
  if (err.code === TIMEOUT_CODE || err.code === CONNECT_TIMEOUT_CODE) return 'timeout';
  if (err.code === 'ECONNRESET' || err.code === 'EPIPE') return 'reset';
  return 'connect';
}

export function codedError(message: string, code: string): Error {
  return Object.assign(new Error(message), { code });
}
