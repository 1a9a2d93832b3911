/**
 * The hash key for consistent hashing / cookie affinity, from a configured
 * header, cookie or the client address (in that order of preference), and the
 * affinity cookie the gateway sets when the client has none yet, so that its
 * next requests hash to the same backend.
 */
import { randomBytes } from 'node:crypto';
import type { IncomingMessage } from 'node:http';
import type { AffinityOptions } from '../options';
import { firstForwarded } from './forwarded';

const MAX_KEY_LENGTH = 256;

export function readCookie(header: string | undefined, name: string): string | undefined {
  if (!header) return undefined;
  let from = 0;
  while (from < header.length) {
    const end = header.indexOf(';', from);
    const part = header.slice(from, end < 0 ? header.length : end).trim();
    const eq = part.indexOf('=');
    if (eq > 0 && part.slice(0, eq) === name) return part.slice(eq + 1).replace(/^"|"$/g, '');
    if (end < 0) break;
    from = end + 1;
  }
  return undefined;
}

export interface HashKey {
  key: string | undefined;
  /** A new affinity cookie value to set on the response (none was sent). */
  newCookie: string | undefined;
}

/** `client`: the flow's clientAddress (taken before X-Forwarded-For is appended to). */
export function hashKeyOf(
  req: IncomingMessage,
  affinity: AffinityOptions,
  client: string,
): HashKey {
  if (affinity.header) {
    const v = req.headers[affinity.header.toLowerCase()];
    const s = Array.isArray(v) ? v[0] : v;
    if (s) return { key: s.slice(0, MAX_KEY_LENGTH), newCookie: undefined };
  }
  if (affinity.cookie) {
    const v = readCookie(req.headers.cookie, affinity.cookie);
    if (v) return { key: v.slice(0, MAX_KEY_LENGTH), newCookie: undefined };
    if (affinity.setCookie) {
      const fresh = randomBytes(12).toString('base64url');
      return { key: fresh, newCookie: fresh };
    }
  }
  if (affinity.clientAddress) return { key: client, newCookie: undefined };
  return { key: undefined, newCookie: undefined };
}

export function affinityCookie(
  name: string,
  value: string,
  maxAgeSec: number,
  secure: boolean,
): string {
  const parts = [`${name}=${value}`, 'Path=/', 'HttpOnly', 'SameSite=Lax'];
  if (maxAgeSec > 0) parts.push(`Max-Age=${maxAgeSec}`);
  if (secure) parts.push('Secure');
  return parts.join('; ');
}

/**
 * Whether the affinity cookie gets `Secure` (affinity.cookieSecure): always,
 * never, or (`'auto'`, the default) when this request reached the gateway
 * over TLS, or a trusted proxy in front says it reached that proxy over TLS
 * (the first `X-Forwarded-Proto`). A cookie set without `Secure` on an HTTPS
 * site would also be sent over plain HTTP.
 */
export function cookieIsSecure(
  setting: boolean | 'auto' | undefined,
  req: IncomingMessage,
  trusted: boolean,
): boolean {
  if (typeof setting === 'boolean') return setting;
  if ((req.socket as { encrypted?: boolean }).encrypted === true) return true;
  if (!trusted) return false;
  return firstForwarded(req, 'x-forwarded-proto')?.toLowerCase() === 'https';
}
