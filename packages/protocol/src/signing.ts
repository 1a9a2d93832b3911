import { createHmac, timingSafeEqual } from 'node:crypto';
import { ProtocolError, type ProtocolErrorCode } from './errors';

/**
 * Signed payloads are the JSON text followed by one trailer line:
 *
 *     {"v":1,...}\nsig1 <keyId> <base64url HMAC-SHA256(secret, topic + "\n" + json)>
 *
 * JSON.stringify never emits a raw newline, so the last "\n" splits body from
 * trailer without parsing, and the verifier hashes the exact bytes it received
 * (no canonicalisation). The topic is inside the MAC, so a signed report for
 * one backend cannot be replayed onto another backend's topic.
 */
export const SIGNATURE_PREFIX = 'sig1 ';
export const MIN_SECRET_BYTES = 16;
const KEY_ID_RE = /^[A-Za-z0-9._-]{1,64}$/;
const MAC_BYTES = 32;
/**
 * A MAC as signPayload writes it: 43 base64url characters, no padding. Checked
 * before decoding because Buffer.from(s, 'base64url') skips what it cannot
 * read (`=`, spaces, other bytes): `<sig>==` or `<sig> x` decoded to the same
 * 32 bytes, so one captured message had many spellings that all verified and
 * each got past the decoder's cache of messages already seen. The pattern is
 * not enough alone: 43 characters carry 258 bits for 256, and the decoder
 * ignores the last character's two low bits, so verifySignature also requires
 * the canonical spelling (the one signPayload writes).
 */
const MAC_RE = new RegExp(`^[A-Za-z0-9_-]{${Math.ceil((MAC_BYTES * 8) / 6)}}$`);

export interface SigningKey {
  keyId: string;
  secret: Buffer;
  /**
   * The backends this key may sign for, each a backend id or a prefix of one
   * followed by `*` (`web-*`; `*` alone: any); absent: any backend. A
   * decoder drops what the key signs for another backend
   * (`LW_PROTO_KEY_NOT_ALLOWED`), so one agent's leaked key cannot speak for
   * the rest of the fleet (SECURITY.md).
   */
  backends?: readonly string[];
}

/** A backend id (topics.ts), or a prefix of one followed by `*`, or `*` alone. */
const SCOPE_RE = /^(?:\*|[A-Za-z0-9][A-Za-z0-9._:@-]{0,63}\*?)$/;

/** Whether `key` may sign for `backendId`: its `backends`, when it has them. */
export function keyMaySign(key: Pick<SigningKey, 'backends'>, backendId: string): boolean {
  const scope = key.backends;
  if (scope === undefined) return true;
  for (const s of scope) {
    if (s.endsWith('*') ? backendId.startsWith(s.slice(0, -1)) : s === backendId) return true;
  }
  return false;
}

/** Throws LW_PROTO_KEY_NOT_ALLOWED unless `key` may sign for `backendId` (encoders). */
export function assertKeyMaySign(key: SigningKey, backendId: string): void {
  if (!keyMaySign(key, backendId)) {
    throw new ProtocolError(
      'LW_PROTO_KEY_NOT_ALLOWED',
      `key ${key.keyId} may not sign for ${backendId} (its backends: ${key.backends?.join(',')})`,
    );
  }
}

export function assertValidKey(key: SigningKey): void {
  if (!key || typeof key.keyId !== 'string' || !KEY_ID_RE.test(key.keyId)) {
    throw new ProtocolError(
      'LW_PROTO_INVALID_OPTION',
      'key id must be 1-64 characters of [A-Za-z0-9._-]',
    );
  }
  if (!Buffer.isBuffer(key.secret) || key.secret.length < MIN_SECRET_BYTES) {
    throw new ProtocolError(
      'LW_PROTO_INVALID_OPTION',
      `key ${key.keyId}: secret must be at least ${MIN_SECRET_BYTES} bytes`,
    );
  }
  const scope: unknown = key.backends;
  if (
    scope !== undefined &&
    (!Array.isArray(scope) ||
      scope.length === 0 ||
      !scope.every((s) => typeof s === 'string' && SCOPE_RE.test(s)))
  ) {
    throw new ProtocolError(
      'LW_PROTO_INVALID_OPTION',
      `key ${key.keyId}: backends must be a non-empty list of backend ids, each may end in *`,
    );
  }
}

function mac(secret: Buffer, topic: string, body: string): Buffer {
  return createHmac('sha256', secret).update(topic).update('\n').update(body).digest();
}

export function signPayload(topic: string, json: string, key: SigningKey): string {
  return `${json}\n${SIGNATURE_PREFIX}${key.keyId} ${mac(key.secret, topic, json).toString('base64url')}`;
}

export interface SplitPayload {
  body: string;
  /** Present when the payload carries a trailer. */
  keyId?: string;
  signature?: string;
}

/** Separates the JSON body from a signature trailer, if any. Never throws. */
export function splitSignature(text: string): SplitPayload | undefined {
  const nl = text.lastIndexOf('\n');
  if (nl < 0) return { body: text };
  const trailer = text.slice(nl + 1);
  if (!trailer.startsWith(SIGNATURE_PREFIX)) return undefined;
  const space = trailer.indexOf(' ', SIGNATURE_PREFIX.length);
  if (space < 0) return undefined;
  return {
    body: text.slice(0, nl),
    keyId: trailer.slice(SIGNATURE_PREFIX.length, space),
    signature: trailer.slice(space + 1),
  };
}

export function verifySignature(
  topic: string,
  body: string,
  keyId: string,
  signature: string,
  keys: ReadonlyMap<string, Buffer>,
): ProtocolErrorCode | undefined {
  const secret = keys.get(keyId);
  if (!secret) return 'LW_PROTO_UNKNOWN_KEY';
  // Lengths are public (every MAC is 32 bytes, so 43 characters: MAC_RE checks
  // both); the comparison of the bytes is constant-time so the MAC cannot be
  // guessed byte by byte.
  if (!MAC_RE.test(signature)) return 'LW_PROTO_BAD_SIGNATURE';
  const given = Buffer.from(signature, 'base64url');
  // One spelling per MAC: the other three of the last character decode to the
  // same bytes and would each miss the decoder's copy cache (keyed by the text).
  if (given.toString('base64url') !== signature) return 'LW_PROTO_BAD_SIGNATURE';
  return timingSafeEqual(given, mac(secret, topic, body)) ? undefined : 'LW_PROTO_BAD_SIGNATURE';
}

const NOT_HEX_RE = /[^0-9a-fA-F]/;
const NOT_BASE64_RE = /[^A-Za-z0-9+/_=-]/;

/**
 * A key file's secret as bytes, or why its text is not one (a message that
 * never quotes the text: it is the secret). Buffer.from(s, 'hex') stops at
 * the first character it cannot read and Buffer.from(s, 'base64') skips them,
 * so a typo at digit 40 of a 64-digit hex secret loaded as a 20-byte key,
 * `==` in the middle of base64 as the bytes before it, and a password as
 * whatever its letters decode to: agents and gateways parse alike, so the
 * shorter or other key verified and nobody noticed. Hence the whole text must
 * be one valid spelling of the bytes it decodes to. Base64 is the standard
 * alphabet (`openssl rand -base64 32`, Buffer#toString('base64'), which the
 * examples write) or the URL-safe one (`-_`, which the decoder has always
 * read), not both at once, with its padding `=` at the end or left out.
 */
function decodeSecret(encoded: string): Buffer | string {
  if (encoded.startsWith('hex:')) {
    const hex = encoded.slice(4);
    const bad = hex.search(NOT_HEX_RE);
    if (bad >= 0) return `hex secret: character ${bad + 1} after "hex:" is not a hex digit`;
    if (hex.length % 2 !== 0) {
      return `hex secret: ${hex.length} digits, an odd number (each byte is two)`;
    }
    return Buffer.from(hex, 'hex');
  }
  const bad = encoded.search(NOT_BASE64_RE);
  if (bad >= 0) {
    return `secret is neither base64 nor "hex:<hex digits>": character ${bad + 1} is not base64`;
  }
  const data = encoded.replace(/=+$/, '');
  if (data.includes('=')) {
    return `base64 secret: "=" (padding) at character ${data.indexOf('=') + 1}, before the end`;
  }
  const urlSafe = /[-_]/.test(data);
  if (urlSafe && /[+/]/.test(data)) {
    return 'base64 secret: mixes the standard (+/) and URL-safe (-_) alphabets';
  }
  if (data.length % 4 === 1) {
    return `base64 secret: ${data.length} characters, one too many or too few for whole bytes`;
  }
  const secret = Buffer.from(data, urlSafe ? 'base64url' : 'base64');
  // The last character of a length that is not a multiple of 4 carries spare
  // bits the decoder ignores: non-zero, they make a second spelling of the
  // same bytes, most likely a typo.
  const canonical = secret.toString('base64url').replace(/=+$/, '');
  if (canonical !== (urlSafe ? data : data.replace(/\+/g, '-').replace(/\//g, '_'))) {
    return 'base64 secret: its last character sets bits that no byte holds (a typo?)';
  }
  if (encoded.length !== data.length && encoded.length !== secret.toString('base64').length) {
    return `base64 secret: ${encoded.length - data.length} "=" (padding) where ${
      (4 - (data.length % 4)) % 4
    } belong`;
  }
  return secret;
}

/**
 * Parses a key file: one key per line, `<keyId> <secret> [<backends>]`, the
 * secret in base64 (`openssl rand -base64 32`) or as `hex:<hex>`, the
 * optional third field the backends the key may sign for, comma-separated
 * (`b1,b2`, `web-*`; SigningKey.backends). A secret that is not exactly one
 * valid spelling of its bytes is refused (decodeSecret). Blank lines and
 * lines starting with `#` are ignored. Several keys allow rotation: agents
 * sign with one, gateways accept all listed.
 */
export function parseKeyFile(text: string): SigningKey[] {
  const keys: SigningKey[] = [];
  text.split(/\r?\n/).forEach((raw, index) => {
    const line = raw.trim();
    if (line === '' || line.startsWith('#')) return;
    const parts = line.split(/\s+/);
    if (parts.length !== 2 && parts.length !== 3) {
      throw new ProtocolError(
        'LW_PROTO_INVALID_OPTION',
        `key file line ${index + 1}: expected "<keyId> <secret> [<backend>,...]"`,
      );
    }
    const [keyId, encoded, scope] = parts as [string, string, string | undefined];
    const secret = decodeSecret(encoded);
    if (typeof secret === 'string') {
      throw new ProtocolError('LW_PROTO_INVALID_OPTION', `key file line ${index + 1}: ${secret}`);
    }
    const key: SigningKey =
      scope === undefined ? { keyId, secret } : { keyId, secret, backends: scope.split(',') };
    try {
      assertValidKey(key);
    } catch (err) {
      throw new ProtocolError(
        'LW_PROTO_INVALID_OPTION',
        `key file line ${index + 1}: ${(err as Error).message}`,
      );
    }
    if (keys.some((k) => k.keyId === keyId)) {
      throw new ProtocolError(
        'LW_PROTO_INVALID_OPTION',
        `key file line ${index + 1}: duplicate key id ${keyId}`,
      );
    }
    keys.push(key);
  });
  if (keys.length === 0)
    throw new ProtocolError('LW_PROTO_INVALID_OPTION', 'key file holds no keys');
  return keys;
}
