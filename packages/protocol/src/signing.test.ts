import { parseKeyFile } from './signing';

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
  ])('rejects %j with a message naming the problem', (text, message) => {
    expect(() => parseKeyFile(text)).toThrow(
      expect.objectContaining({
        code: 'LW_PROTO_INVALID_OPTION',
        message: expect.stringContaining(message),
      }),
    );
  });
});
