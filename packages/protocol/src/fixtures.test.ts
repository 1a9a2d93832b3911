import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { createDecoder, encodeMessage } from './codec';
import type { Message } from './messages';
import { parseKeyFile } from './signing';

/**
 * Golden fixtures (packages/protocol/fixtures) pin the wire format: every
 * valid one must decode to its message AND re-encode to the same bytes, so an
 * accidental change of field order, naming or signing breaks here first.
 */
const FIXTURES_DIR = join(__dirname, '..', 'fixtures');
const FIXTURE_NOW_MS = 1767225600000;

interface Fixture {
  description: string;
  signed: boolean;
  /** Delivered with the MQTT retain flag (default false). */
  retained?: boolean;
  topic: string;
  payload: string;
  expect: { ok: true; message: Message } | { ok: false; code: string };
}

const keys = parseKeyFile(readFileSync(join(FIXTURES_DIR, 'keys.txt'), 'utf8'));
const fixtures = readdirSync(FIXTURES_DIR)
  .filter((f) => f.endsWith('.json'))
  .map((file) => ({
    file,
    ...(JSON.parse(readFileSync(join(FIXTURES_DIR, file), 'utf8')) as Fixture),
  }));

function decoderFor(f: Fixture) {
  const now = () => FIXTURE_NOW_MS;
  return f.signed ? createDecoder({ keys, now }) : createDecoder({ now });
}

describe('golden fixtures', () => {
  it('cover every message kind', () => {
    const kinds = new Set(
      fixtures
        .filter((f) => f.expect.ok)
        .map((f) => (f.expect as { message: Message }).message.kind),
    );
    expect([...kinds].sort()).toEqual(['metrics', 'register', 'status']);
  });

  it.each(fixtures.map((f) => [f.file, f] as const))('%s decodes as expected', (_file, f) => {
    const result = decoderFor(f).decode(f.topic, Buffer.from(f.payload), {
      retained: f.retained === true,
    });
    if (f.expect.ok) {
      expect(result).toEqual({
        ok: true,
        message: f.expect.message,
        keyId: f.signed ? 'fixture-k1' : undefined,
      });
    } else {
      expect(result.ok).toBe(false);
      expect(!result.ok && result.code).toBe(f.expect.code);
    }
  });

  it.each(fixtures.filter((f) => f.expect.ok).map((f) => [f.file, f] as const))(
    '%s re-encodes to the same bytes',
    (_file, f) => {
      const message = (f.expect as { message: Message }).message;
      const encoded = encodeMessage('loadwise', message, f.signed ? keys[0] : undefined);
      expect(encoded.topic).toBe(f.topic);
      expect(encoded.payload).toBe(f.payload);
    },
  );
});
