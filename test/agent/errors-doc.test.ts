import { readFileSync } from 'node:fs';
import path from 'node:path';
import { AGENT_ERRORS } from '@loadwise/health-agent';
import {
  CLI_OPTIONS,
  configKey,
  envName,
  fromEnvironment,
} from '../../packages/health-agent/src/config';

describe('docs/agent.md error table', () => {
  it('lists exactly the codes of src/errors.ts', () => {
    const doc = readFileSync(path.resolve(__dirname, '../../docs/agent.md'), 'utf8');
    const documented = [...doc.matchAll(/^\| `(LW_AGENT_[A-Z_]+)` +\|/gm)].map((m) => m[1]);
    expect(documented.sort()).toEqual(Object.keys(AGENT_ERRORS).sort());
  });
});

describe('docs/agent.md CLI table', () => {
  it('has one row per option, with the names the table in src/config.ts derives', () => {
    const doc = readFileSync(path.resolve(__dirname, '../../docs/agent.md'), 'utf8');
    const cli = doc.slice(doc.indexOf('## CLI: `loadwise-agent`'), doc.indexOf('## Library'));
    const rows = [...cli.matchAll(/^\| `--([a-z0-9-]+)[^`]*` +\|(.*)$/gm)].map((m) => ({
      flag: m[1]!,
      cells: m[2]!.split(/(?<!\\)\|/).map((c) => c.trim()),
    }));
    expect(rows.map((r) => r.flag)).toEqual(CLI_OPTIONS.map((o) => o.flag));
    for (const [i, o] of CLI_OPTIONS.entries()) {
      const [env, key, option] = rows[i]!.cells;
      expect(env).toBe(fromEnvironment(o.flag) ? `\`${envName(o.flag)}\`` : '—');
      expect(key).toBe(configKey(o) ? `\`${configKey(o)}\`` : '—');
      expect(option).toBe(
        o.option
          ? [o.option, ...Object.entries(o.implies ?? {}).map(([k, v]) => `${k}: '${v}'`)]
              .map((x) => `\`${x}\``)
              .join(' + ')
          : '—',
      );
    }
  });
});
