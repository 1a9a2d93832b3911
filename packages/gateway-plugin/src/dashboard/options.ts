// The `dashboard` option of `loadBalance(opts)`. Its checks and defaults are
// in the options schema (options-validate.ts, options.ts DEFAULTS), so a
// mistake throws LW_GW_INVALID_OPTION at construction like every other option.

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
