/**
 * Options from plain JavaScript, where no type checker catches a typo: a
 * real `node` process requires the built package and passes the mistakes a
 * user made; each must fail at construction with a coded error naming the
 * option (and the key it was probably meant to be), not be silently ignored.
 */
import { spawnSync } from 'node:child_process';
import path from 'node:path';

const PKG = path.resolve(__dirname, '../../packages/gateway-plugin');

/** Runs `loadBalance(<options>)` in a fresh node process; returns what it printed. */
function construct(options: string): string {
  const script = `
    const { loadBalance } = require(${JSON.stringify(PKG)});
    try {
      const lb = loadBalance(${options});
      console.log('accepted');
      lb.close({ graceMs: 0 });
    } catch (err) {
      console.log(err.code + ' | ' + err.message);
    }`;
  const r = spawnSync(process.execPath, ['-e', script], { encoding: 'utf8', timeout: 20_000 });
  return (r.stdout + r.stderr).trim();
}

const backends = `[{ id: 'a', url: 'http://127.0.0.1:3001' }]`;

describe('loadBalance options in plain JavaScript', () => {
  it.each([
    [
      `{ backends: ${backends}, stratgy: 'round-robin' }`,
      'LW_GW_INVALID_OPTION | LW_GW_INVALID_OPTION: unknown option stratgy (did you mean strategy?)',
    ],
    [
      `{ backends: ${backends}, healthCheck: { pathh: '/healthz' } }`,
      'LW_GW_INVALID_OPTION | LW_GW_INVALID_OPTION: unknown option healthCheck.pathh (did you mean healthCheck.path?)',
    ],
    [
      `{ backends: [{ id: 'a', url: 'http://127.0.0.1:3001' }, { id: 'b', url: 'http://127.0.0.1:3001/' }] }`,
      'LW_GW_DUPLICATE_BACKEND | LW_GW_DUPLICATE_BACKEND: backends[1].url http://127.0.0.1:3001/ is also backends[0].url',
    ],
    [
      `{ backends: ${backends}, statusToken: 'a-long-token' }`,
      'LW_GW_INVALID_OPTION | LW_GW_INVALID_OPTION: statusToken must be used with statusPath or metricsPath (it protects them), got "<redacted>"',
    ],
  ])('%s', (options, printed) => {
    expect(construct(options)).toBe(printed);
  });

  it('accepts the same options spelled right', () => {
    expect(
      construct(
        `{ backends: ${backends}, strategy: 'round-robin', healthCheck: { path: '/healthz' }, statusPath: '/s', statusToken: 'a-long-token' }`,
      ),
    ).toBe('accepted');
  });
});
