/**
 * When a crashed worker is started again: exponential backoff over the
 * crashes of its slot within a window, and a bound after which the slot is
 * given up (a worker that crashes in a loop has a bug a restart will not fix;
 * the supervisor of the whole pool, e.g. systemd, decides what comes next).
 */

import { invalidOption } from '../errors';
import { integerOption, optionBag, rejectUnknownKeys } from '../load/option-check';
import { MAX_TIMER_MS } from '../options-validate';

export interface RestartOptions {
  /** Delay before the first restart of a slot, ms (default 100). */
  initialDelayMs?: number;
  /** The delay doubles with each further crash of the slot in the window, up to this, ms (default 5 000). */
  maxDelayMs?: number;
  /** A slot whose worker crashed more than this many times within `windowMs` is given up (default 5). */
  maxRestarts?: number;
  /** The window crashes are counted over, ms (default 60 000). */
  windowMs?: number;
}

export type ResolvedRestartOptions = Required<RestartOptions>;

export const DEFAULT_RESTART: ResolvedRestartOptions = {
  initialDelayMs: 100,
  maxDelayMs: 5_000,
  maxRestarts: 5,
  windowMs: 60_000,
};

/**
 * Checks `opts` (LW_GW_INVALID_OPTION): integers, the delays and the window valid timers (past
 * 2^31 - 1 ms Node fires after 1 ms, so a slot would restart at once), no unknown key.
 */
export function resolveRestart(opts: RestartOptions = {}): ResolvedRestartOptions {
  const bag = optionBag('restart', opts);
  rejectUnknownKeys(bag, 'restart.', Object.keys(DEFAULT_RESTART));
  const r: ResolvedRestartOptions = {
    initialDelayMs: integerOption(
      bag,
      'restart.',
      'initialDelayMs',
      DEFAULT_RESTART.initialDelayMs,
      0,
      MAX_TIMER_MS,
    ),
    maxDelayMs: integerOption(
      bag,
      'restart.',
      'maxDelayMs',
      DEFAULT_RESTART.maxDelayMs,
      0,
      MAX_TIMER_MS,
    ),
    maxRestarts: integerOption(
      bag,
      'restart.',
      'maxRestarts',
      DEFAULT_RESTART.maxRestarts,
      0,
      Number.MAX_SAFE_INTEGER,
    ),
    windowMs: integerOption(
      bag,
      'restart.',
      'windowMs',
      DEFAULT_RESTART.windowMs,
      0,
      Number.MAX_SAFE_INTEGER,
    ),
  };
  if (r.maxDelayMs < r.initialDelayMs) {
    throw invalidOption(
      'restart.maxDelayMs',
      `>= restart.initialDelayMs (${r.initialDelayMs})`,
      r.maxDelayMs,
    );
  }
  return r;
}

export type RestartDecision = { restart: true; delayMs: number } | { restart: false };

/**
 * `crashTimes`: the slot's earlier crashes (ms, any clock), this one not
 * included. Returns the decision and the crash times to keep for next time.
 */
export function decideRestart(
  crashTimes: readonly number[],
  nowMs: number,
  opts: ResolvedRestartOptions,
): { decision: RestartDecision; crashTimes: number[] } {
  const recent = crashTimes.filter((t) => nowMs - t < opts.windowMs);
  recent.push(nowMs);
  if (recent.length > opts.maxRestarts) return { decision: { restart: false }, crashTimes: recent };
  const delayMs = Math.min(opts.maxDelayMs, opts.initialDelayMs * 2 ** (recent.length - 1));
  return { decision: { restart: true, delayMs }, crashTimes: recent };
}
