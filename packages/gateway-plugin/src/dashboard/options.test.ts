import { GatewayError } from '../errors';
import { resolveOptions } from '../options-validate';

const base = { backends: [{ id: 'b1', url: 'http://127.0.0.1:3000' }] };
const TOKEN = 'dash-0123456789abcdef';

function codeOf(fn: () => unknown): string | undefined {
  try {
    fn();
  } catch (err) {
    return err instanceof GatewayError ? err.code : 'not a GatewayError';
  }
  return undefined;
}

describe('dashboard option', () => {
  it('is off by default and with false', () => {
    expect(resolveOptions(base).dashboard).toBeUndefined();
    expect(resolveOptions({ ...base, dashboard: false }).dashboard).toBeUndefined();
  });

  it('resolves its defaults', () => {
    expect(resolveOptions({ ...base, dashboard: { token: TOKEN } }).dashboard).toEqual({
      path: '/_lb/dashboard',
      token: TOKEN,
      maxViewers: 10,
      intervalMs: 1000,
      historySec: 300,
    });
  });

  it.each([
    ['no token', {}],
    ['a short token', { token: 'short-token' }],
    ['a token with a space', { token: 'dash 0123456789abcdef' }],
    ['a path ending with /', { token: TOKEN, path: '/_lb/dashboard/' }],
    ['the root path', { token: TOKEN, path: '/' }],
    ['a relative path', { token: TOKEN, path: 'dash' }],
    ['an interval below 250 ms', { token: TOKEN, intervalMs: 100 }],
    ['no viewers', { token: TOKEN, maxViewers: 0 }],
    ['an hour and more of history', { token: TOKEN, historySec: 3601 }],
    ['a string', 'on'],
  ])('refuses %s (LW_GW_INVALID_OPTION)', (_what, dashboard) => {
    expect(codeOf(() => resolveOptions({ ...base, dashboard } as never))).toBe(
      'LW_GW_INVALID_OPTION',
    );
  });

  it('refuses the status token: the dashboard token travels in URLs', () => {
    expect(
      codeOf(() => resolveOptions({ ...base, statusToken: TOKEN, dashboard: { token: TOKEN } })),
    ).toBe('LW_GW_INVALID_OPTION');
  });

  it('refuses a path that is, or holds, the status or metrics path', () => {
    for (const clash of [
      { statusPath: '/_lb/dashboard' },
      { metricsPath: '/_lb/dashboard/metrics' },
    ]) {
      expect(codeOf(() => resolveOptions({ ...base, ...clash, dashboard: { token: TOKEN } }))).toBe(
        'LW_GW_INVALID_OPTION',
      );
    }
  });

  it('never shows the token in the error', () => {
    try {
      resolveOptions({ ...base, dashboard: { token: 'short-secret' } });
    } catch (err) {
      expect((err as Error).message).not.toContain('short-secret');
      expect((err as Error).message).toContain('<redacted>');
    }
    expect.assertions(2);
  });
});
