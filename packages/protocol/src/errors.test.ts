import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { PROTOCOL_ERRORS } from './errors';

// The error catalogue in docs/protocol.md is what users grep for when a
// gateway logs a dropped message: it must list exactly the codes in errors.ts.
describe('error catalogue', () => {
  it('matches docs/protocol.md', () => {
    const doc = readFileSync(join(__dirname, '..', '..', '..', 'docs', 'protocol.md'), 'utf8');
    const documented = [...doc.matchAll(/^\| `(LW_PROTO_[A-Z_]+)` *\| (.+?) *\|$/gm)].map((m) => [
      m[1],
      m[2],
    ]);
    expect(Object.fromEntries(documented)).toEqual(PROTOCOL_ERRORS);
  });
});
