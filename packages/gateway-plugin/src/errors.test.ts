import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { DROP_REASONS, GATEWAY_ERRORS } from './errors';

/** fastify-style: the error catalogue in the docs and in the code must agree. */
describe('docs/gateway.md error catalogue', () => {
  const doc = readFileSync(join(__dirname, '../../../docs/gateway.md'), 'utf8');
  const section = doc.slice(doc.indexOf('## Errors'));
  const rows = new Map<string, string>();
  // Tolerates prettier's column padding.
  for (const m of section.matchAll(/^\| `(LW_GW_[A-Z_]+)` +\|(?: +([-0-9]+) +\|)?/gm)) {
    rows.set(m[1]!, m[2] ?? 'drop');
  }

  it('lists every code with its HTTP status', () => {
    for (const [code, { status }] of Object.entries(GATEWAY_ERRORS)) {
      expect([code, rows.get(code)]).toEqual([code, status === undefined ? '-' : String(status)]);
    }
    for (const code of Object.keys(DROP_REASONS))
      expect([code, rows.get(code)]).toEqual([code, 'drop']);
  });

  it('lists no code the package does not have', () => {
    const known = new Set([...Object.keys(GATEWAY_ERRORS), ...Object.keys(DROP_REASONS)]);
    expect([...rows.keys()].filter((c) => !known.has(c))).toEqual([]);
  });
});
