import { readFileSync } from 'node:fs';
import path from 'node:path';
import { AGENT_ERRORS } from '@loadwise/health-agent';

describe('docs/agent.md error table', () => {
  it('lists exactly the codes of src/errors.ts', () => {
    const doc = readFileSync(path.resolve(__dirname, '../../docs/agent.md'), 'utf8');
    const documented = [...doc.matchAll(/^\| `(LW_AGENT_[A-Z_]+)` +\|/gm)].map((m) => m[1]);
    expect(documented.sort()).toEqual(Object.keys(AGENT_ERRORS).sort());
  });
});
