/**
 * The docs promise functions "exported for custom use"; a user importing one
 * that is not there finds out at run time. This compares what docs/gateway.md
 * and docs/observability.md say is exported with what the built package
 * (packages/gateway-plugin/dist, `npm test` builds first) really exports.
 */
import { readFileSync } from 'node:fs';
import path from 'node:path';

const root = path.resolve(__dirname, '../..');
// The package as a user gets it: package.json "main", the built dist/.
// eslint-disable-next-line @typescript-eslint/no-require-imports
const pkg = require(path.join(root, 'packages/gateway-plugin')) as Record<string, unknown>;
const exported = new Set(Object.keys(pkg));

function doc(name: string): string {
  return readFileSync(path.join(root, 'docs', name), 'utf8');
}

/** Identifiers in backticks in the first column of the "## Exports" table of docs/gateway.md. */
function exportsTable(): string[] {
  const text = doc('gateway.md');
  const section = text.slice(text.indexOf('\n## Exports'));
  const names: string[] = [];
  for (const line of section.split('\n')) {
    const first = /^\| ([^|]+) \|/.exec(line)?.[1];
    if (!first || first.trim() === 'export' || /^-+$/.test(first.trim())) continue;
    for (const m of first.matchAll(/`([A-Za-z_$][\w$]*)`/g)) names.push(m[1]!);
  }
  return names;
}

/** `name(` in backticks, in every paragraph that says "export". */
function claimedInProse(name: string): string[] {
  const names = new Set<string>();
  for (const paragraph of doc(name).split(/\n\s*\n/)) {
    if (!/\bexport/i.test(paragraph)) continue;
    for (const m of paragraph.matchAll(/`([A-Za-z_$][\w$]*)\(/g)) names.add(m[1]!);
  }
  return [...names];
}

describe('docs list exactly what the package exports', () => {
  it('the Exports table of docs/gateway.md names every run-time export, and only those', () => {
    const listed = exportsTable();
    expect(listed.length).toBeGreaterThan(10);
    expect(listed.filter((n) => !exported.has(n))).toEqual([]);
    expect([...exported].filter((n) => !listed.includes(n)).sort()).toEqual([]);
  });

  it('every function the prose of docs/observability.md and docs/gateway.md calls exported is exported', () => {
    const claimed = [...claimedInProse('observability.md'), ...claimedInProse('gateway.md')];
    expect(claimed).toContain('statusHandler');
    expect(claimed.filter((n) => typeof pkg[n] !== 'function')).toEqual([]);
  });

  it('the handlers docs/observability.md documents are exported', () => {
    for (const n of [
      'statusHandler',
      'metricsHandler',
      'createGatewayMetrics',
      'formatDecisionHeader',
    ])
      expect([n, typeof pkg[n]]).toEqual([n, 'function']);
  });
});
