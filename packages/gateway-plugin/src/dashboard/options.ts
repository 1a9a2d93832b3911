/**
 * The `dashboard` option of `loadBalance(opts)` and its checks (called from
 * options-validate.ts, so a mistake throws LW_GW_INVALID_OPTION at
 * construction like every other option).
 */
import { invalidOption } from '../errors';
import { isObject, num, path } from '../options-checks';

export interface DashboardOptions {
  /** Where the page is served, relative to the mount point (default '/_lb/dashboard'). */
  path?: string;
  /**
   * Read-only token the page and its event stream require, as
   * `Authorization: Bearer <token>` or `?token=<token>` (a browser can only
   * send the latter). At least 16 visible ASCII characters, and not the
   * statusToken: it travels in URLs, so it must unlock nothing else.
   */
  token: string;
  /** Viewers (open event streams) at once; more get 503 (default 10). */
  maxViewers?: number;
  /** How often the one sampling timer runs while someone watches, ms (default 1000). */
  intervalMs?: number;
  /** History the charts keep, seconds (default 300). */
  historySec?: number;
}

export type ResolvedDashboardOptions = Required<DashboardOptions>;

export const DEFAULT_DASHBOARD_PATH = '/_lb/dashboard';
export const MIN_DASHBOARD_TOKEN_LENGTH = 16;

const VISIBLE_ASCII = /^[\x21-\x7e]+$/;

export function resolveDashboardOptions(
  v: unknown,
  others: { statusToken: unknown; statusPath: string | undefined; metricsPath: string | undefined },
): ResolvedDashboardOptions | undefined {
  if (v === undefined || v === false) return undefined;
  if (!isObject(v)) throw invalidOption('dashboard', 'an object { token, path? } or false', v);
  const p = path('dashboard.path', v.path) ?? DEFAULT_DASHBOARD_PATH;
  // Assets and the stream live under `<path>/`, referenced relative to the page.
  if (p === '/' || p.endsWith('/'))
    throw invalidOption('dashboard.path', "a path that does not end with '/'", p);
  for (const other of [others.statusPath, others.metricsPath]) {
    if (other !== undefined && (other === p || other.startsWith(`${p}/`)))
      throw invalidOption('dashboard.path', `a path apart from ${other}`, p);
  }
  const token = v.token;
  if (
    typeof token !== 'string' ||
    token.length < MIN_DASHBOARD_TOKEN_LENGTH ||
    !VISIBLE_ASCII.test(token)
  ) {
    throw invalidOption(
      'dashboard.token',
      `a string of at least ${MIN_DASHBOARD_TOKEN_LENGTH} visible ASCII characters`,
      '<redacted>',
    );
  }
  if (token === others.statusToken)
    throw invalidOption('dashboard.token', 'a token other than statusToken', '<redacted>');
  return {
    path: p,
    token,
    maxViewers: num('dashboard.maxViewers', v.maxViewers, 10, 1, 1000, true),
    intervalMs: num('dashboard.intervalMs', v.intervalMs, 1000, 250, 60_000, true),
    historySec: num('dashboard.historySec', v.historySec, 300, 10, 3600, true),
  };
}
