import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { createDecoder, createEncoder } from './codec';
import { keyMaySign, parseKeyFile, signPayload, verifySignature } from './signing';

describe('key files', () => {
  const secret = Buffer.alloc(32, 3);
  it('parses base64 and hex secrets, comments and blank lines', () => {
    const keys = parseKeyFile(
      `# rotation\n\nk-old ${secret.toString('base64')}\nk-new hex:${secret.toString('hex')}\n`,
    );
    expect(keys.map((k) => k.keyId)).toEqual(['k-old', 'k-new']);
    expect(keys[1]!.secret.equals(secret)).toBe(true);
  });

  it.each([
    ['', 'holds no keys'],
    ['k1', 'line 1'],
    ['k1 c2hvcnQ=', 'at least 16 bytes'],
    [`k/1 ${secret.toString('base64')}`, 'key id'],
    [`k1 ${secret.toString('base64')}\nk1 ${secret.toString('base64')}`, 'duplicate'],
    [`k1 ${secret.toString('base64')} b1,,b2`, 'backends'],
    [`k1 ${secret.toString('base64')} b/1`, 'backends'],
    [`k1 ${secret.toString('base64')} *web`, 'backends'],
    [`k1 ${secret.toString('base64')} b1 extra`, 'line 1'],
  ])('rejects %j with a message naming the problem', (text, message) => {
    expect(() => parseKeyFile(text)).toThrow(
      expect.objectContaining({
        code: 'LW_PROTO_INVALID_OPTION',
        message: expect.stringContaining(message),
      }),
    );
  });
});

describe('key file secrets', () => {
  // Its base64 holds "+" and "/", so the URL-safe spelling differs from it.
  const secret = Buffer.from('+0WP2SNttwFLld8pc70HUZvlL3nDDVeh6zV/yRNdp/E=', 'base64');
  const hex = secret.toString('hex');
  const b64 = secret.toString('base64');
  const parsed = (encoded: string) => parseKeyFile(`k1 ${encoded}\n`)[0]!.secret;

  it.each([
    ['base64, as Buffer#toString writes it', b64],
    ['base64 without its padding', b64.replace(/=+$/, '')],
    ['URL-safe base64', secret.toString('base64url')],
    ['lower-case hex', `hex:${hex}`],
    ['upper-case hex', `hex:${hex.toUpperCase()}`],
  ])('reads %s', (_, encoded) => {
    expect(parsed(encoded).equals(secret)).toBe(true);
  });

  it('reads what `openssl rand -base64 32` writes (SECURITY.md, docs/protocol.md)', () => {
    // 44 characters, one "=": the standard alphabet, "+" and "/" included.
    const openssl = 'q3+Z/0Jd9XyWcKkK2mO4pQ1bL8sT7vR6uE5iN0aH/+c=';
    expect(parsed(openssl)).toHaveLength(32);
    expect(parsed(openssl).toString('base64')).toBe(openssl);
  });

  // Each of these loaded before, as fewer or other bytes than were written (a
  // shorter key that agents and gateways agreed on); none may quote the secret.
  it.each([
    ['a typo in hex', `hex:${hex.slice(0, 39)}g${hex.slice(40)}`, 'character 40 after "hex:"'],
    ['hex of an odd length', `hex:${hex.slice(1)}`, '63 digits, an odd number'],
    ['hex: and nothing', 'hex:', 'at least 16 bytes'],
    ['base64 padding in the middle', `${b64.slice(0, 22)}==${b64.slice(22)}`, 'at character 23'],
    ['a character outside base64', `${b64.slice(0, 10)}.${b64.slice(11)}`, 'character 11'],
    ['a password', 'P@ssw0rd-for-the-gateways!', 'neither base64 nor'],
    ['a password of base64 letters', 'correcthorsebatterystaple', '25 characters'],
    ['mixed alphabets', `${b64.slice(0, 40)}-_+/`, 'mixes the standard'],
    ['spare bits set in the last character', `${b64.slice(0, 42)}B=`, 'last character'],
    ['too much padding', `${b64}=`, '2 "=" (padding) where 1 belong'],
    ['padding where none belongs', `${Buffer.alloc(24, 1).toString('base64')}=`, 'where 0'],
  ])('refuses %s, naming the problem and not the secret', (_, encoded, message) => {
    let err: Error | undefined;
    try {
      parseKeyFile(`# keys\nk1 ${encoded}\n`);
    } catch (e) {
      err = e as Error;
    }
    expect(err).toMatchObject({ code: 'LW_PROTO_INVALID_OPTION' });
    expect(err!.message).toContain('key file line 2: ');
    expect(err!.message).toContain(message);
    const body = encoded.replace(/^hex:/, '');
    if (body.length > 0) expect(err!.message).not.toContain(body.slice(0, 8));
  });

  it('the golden fixtures key file still parses (packages/protocol/fixtures)', () => {
    const text = readFileSync(join(__dirname, '..', 'fixtures', 'keys.txt'), 'utf8');
    expect(parseKeyFile(text).map((k) => k.secret.length)).toEqual([32, 33]);
  });
});

describe('signatures', () => {
  const key = { keyId: 'k1', secret: Buffer.alloc(32, 7) };
  const keys = new Map([[key.keyId, key.secret]]);
  const topic = 'lw/v1/backends/b1/metrics';
  const signed = signPayload(topic, '{"v":1}', key);
  const sig = signed.slice(signed.lastIndexOf(' ') + 1);

  it('verifies the signature as signPayload wrote it', () => {
    expect(sig).toMatch(/^[A-Za-z0-9_-]{43}$/);
    expect(verifySignature(topic, '{"v":1}', 'k1', sig, keys)).toBeUndefined();
  });

  // Buffer.from(s, 'base64url') skips what it cannot read, so each of these decoded to the
  // same MAC: one captured message had many spellings, each new to the cache of copies seen.
  it.each(['=', '==', ' ', '$', '!!', 'é', '\n'])('refuses the signature with %j appended', (x) => {
    expect(verifySignature(topic, '{"v":1}', 'k1', sig + x, keys)).toBe('LW_PROTO_BAD_SIGNATURE');
  });
});

describe('the last character of a signature', () => {
  const key = { keyId: 'k1', secret: Buffer.alloc(32, 7) };
  const keys = new Map([[key.keyId, key.secret]]);
  const B64URL = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_';

  // 43 characters carry 258 bits for a 256-bit MAC: the decoder ignores the last
  // character's two low bits, so four spellings decoded to the same bytes.
  it('accepts only the canonical spelling of the four that decode to the same MAC', () => {
    for (const topic of ['lw/v1/backends/b1/status', 'lw/v1/backends/b2/metrics']) {
      const signed = signPayload(topic, '{"v":1}', key);
      const sig = signed.slice(signed.lastIndexOf(' ') + 1);
      const last = B64URL.indexOf(sig.at(-1)!);
      const spellings = [0, 1, 2, 3].map((low) => sig.slice(0, -1) + B64URL[(last & ~3) | low]);
      expect(spellings).toContain(sig);
      for (const s of spellings) {
        expect(Buffer.from(s, 'base64url').equals(Buffer.from(sig, 'base64url'))).toBe(true);
        expect(verifySignature(topic, '{"v":1}', 'k1', s, keys)).toBe(
          s === sig ? undefined : 'LW_PROTO_BAD_SIGNATURE',
        );
      }
    }
  });
});

describe('keys bound to backends', () => {
  const secret = Buffer.alloc(32, 5);
  it('reads the backends a key may sign for from the third field', () => {
    const [open, bound] = parseKeyFile(
      `k-any ${secret.toString('base64')}\nk-web ${secret.toString('base64')} web-*,api-1\n`,
    );
    expect(open!.backends).toBeUndefined();
    expect(bound!.backends).toEqual(['web-*', 'api-1']);
    expect(['web-1', 'web-', 'api-1', 'api-10', 'b'].map((id) => keyMaySign(bound!, id))).toEqual([
      true,
      true,
      true,
      false,
      false,
    ]);
    expect(keyMaySign(open!, 'anything')).toBe(true);
    expect(keyMaySign({ backends: ['*'] }, 'anything')).toBe(true);
  });

  it('a decoder refuses what a bound key signed for another backend, before the HMAC', () => {
    const key = { keyId: 'ka', secret, backends: ['a'] };
    const now = () => 1767225600000;
    const decoder = createDecoder({ keys: [key], now });
    const own = createEncoder({ backendId: 'a', key, now }).status('online');
    expect(decoder.decode(own.topic, own.payload)).toMatchObject({ ok: true, keyId: 'ka' });
    const forB = createEncoder({ backendId: 'b', key: { keyId: 'ka', secret }, now });
    const signed = forB.status('draining');
    expect(decoder.decode(signed.topic, signed.payload)).toMatchObject({
      ok: false,
      code: 'LW_PROTO_KEY_NOT_ALLOWED',
      backendId: 'b',
    });
    // Not even the MAC is computed: a wrong one is refused for the same reason.
    const garbled = signed.payload.replace(/ \S+$/, ' ' + 'A'.repeat(43));
    expect(decoder.decode(signed.topic, garbled)).toMatchObject({
      code: 'LW_PROTO_KEY_NOT_ALLOWED',
    });
  });

  it('an encoder refuses a key that may not sign for its backend, at once', () => {
    expect(() =>
      createEncoder({ backendId: 'b', key: { keyId: 'ka', secret, backends: ['a', 'web-*'] } }),
    ).toThrow(
      expect.objectContaining({
        code: 'LW_PROTO_KEY_NOT_ALLOWED',
        message: expect.stringContaining('may not sign for b'),
      }),
    );
  });
});
