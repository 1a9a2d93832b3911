/**
 * Options every strategy accepts, and the helpers strategies share. Each
 * strategy validates its own keys at construction (LW_GW_INVALID_OPTION).
 */
import { functionOption, optionBag, rejectUnknownKeys, type OptionBag } from '../load/option-check';
import type { Endpoint, PickContext } from './types';

export const COMMON_KEYS = ['random', 'now'] as const;

export interface CommonStrategyOptions {
  /** Uniform in [0, 1); injectable for deterministic tests. */
  random: () => number;
  /** Clock for work outside a pick (picks read `ctx.nowMs`). */
  now: () => number;
}

export function readCommon(
  name: string,
  opts: unknown,
  ownKeys: readonly string[],
): { bag: OptionBag; common: CommonStrategyOptions; prefix: string } {
  const prefix = 'strategyOptions.';
  const bag = optionBag(`strategyOptions (${name})`, opts);
  rejectUnknownKeys(bag, prefix, [...COMMON_KEYS, ...ownKeys]);
  return {
    bag,
    prefix,
    common: {
      random: functionOption<() => number>(bag, prefix, 'random', Math.random),
      now: functionOption<() => number>(bag, prefix, 'now', Date.now),
    },
  };
}

/** A uniform index in [0, n): guards a random source that returns 1 or garbage. */
export function randomIndex(random: () => number, n: number): number {
  const i = Math.floor(random() * n);
  return i >= 0 && i < n ? i : 0;
}

/** Static weight as a positive finite number (configuration validates it; this guards the pick path). */
export function weightOf(ep: Endpoint): number {
  const w = ep.weight;
  return w > 0 && w < Infinity ? w : 1;
}

export function isExcluded(ctx: PickContext, ep: Endpoint): boolean {
  const ex = ctx.exclude;
  return ex !== undefined && ex.size > 0 && ex.has(ep);
}

/** Shortest readable form of a figure for explain strings. */
export function fmt(x: number): string {
  if (x >= 100) return x.toFixed(0);
  if (x >= 10) return x.toFixed(1);
  return x.toPrecision(2);
}
