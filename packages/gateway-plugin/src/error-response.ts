/**
 * The gateway's own answers: a coded JSON error, so a request is never
 * silently lost. Never throws; when headers are already out (a response
 * failed mid-stream) the only honest signal left is to cut the connection.
 */
import type { ServerResponse } from 'node:http';
import { GATEWAY_ERRORS, type GatewayErrorCode } from './errors';

export const ERROR_CODE_HEADER = 'x-loadwise-error';

export function sendError(
  res: ServerResponse,
  code: GatewayErrorCode,
  retryAfterSec?: number,
  detail?: string,
): void {
  if (res.headersSent || res.writableEnded || res.destroyed) {
    if (!res.writableEnded) res.destroy();
    return;
  }
  const status = GATEWAY_ERRORS[code].status ?? 500;
  const body = JSON.stringify({ error: { code, message: detail ?? GATEWAY_ERRORS[code].message } });
  res.statusCode = status;
  // A backend's reason phrase may already be set (its head was being copied): Node's default instead.
  res.statusMessage = '';
  res.setHeader('content-type', 'application/json; charset=utf-8');
  res.setHeader('content-length', Buffer.byteLength(body));
  res.setHeader('cache-control', 'no-store');
  res.setHeader(ERROR_CODE_HEADER, code);
  if (retryAfterSec !== undefined) res.setHeader('retry-after', String(retryAfterSec));
  res.end(body);
}
