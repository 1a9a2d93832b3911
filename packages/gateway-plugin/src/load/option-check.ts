/**
 * Option readers of the strategies (createStrategy). Their options come from
 * the user as `Record<string, unknown>` (LoadBalanceOptions.strategyOptions,
 * read by whichever strategy is named), so every figure is checked once, at
 * construction, and a bad one throws a coded LW_GW_INVALID_OPTION
 * (docs/architecture.md, rule 7: validate at the edges only; the pick path
 * never throws). The load estimate's options have a schema
 * (load-options.ts).
 */
import { unknownOptionText } from '@loadwise/protocol';
import { GatewayError, invalidOption } from '../errors';

export type OptionBag = Readonly<Record<string, unknown>>;

/** Throws LW_GW_INVALID_OPTION when `opts` is neither undefined nor a plain object. */
export function optionBag(name: string, opts: unknown): OptionBag {
  if (opts === undefined || opts === null) return {};
  if (typeof opts !== 'object' || Array.isArray(opts)) throw invalidOption(name, 'an object', opts);
  return opts as OptionBag;
}

/**
 * A finite number in [min, max] (inclusive), or the default when absent.
 * `prefix` names the option group in the message (e.g. 'load.').
 */
export function numberOption(
  bag: OptionBag,
  prefix: string,
  key: string,
  dflt: number,
  min: number,
  max: number,
): number {
  const value = bag[key];
  if (value === undefined) return dflt;
  if (typeof value !== 'number' || !Number.isFinite(value) || value < min || value > max) {
    throw invalidOption(`${prefix}${key}`, `a finite number in [${min}, ${max}]`, value);
  }
  return value;
}

export function integerOption(
  bag: OptionBag,
  prefix: string,
  key: string,
  dflt: number,
  min: number,
  max: number,
): number {
  const value = numberOption(bag, prefix, key, dflt, min, max);
  if (!Number.isInteger(value)) throw invalidOption(`${prefix}${key}`, 'an integer', value);
  return value;
}

export function functionOption<F extends (...args: never[]) => unknown>(
  bag: OptionBag,
  prefix: string,
  key: string,
  dflt: F,
): F {
  const value = bag[key];
  if (value === undefined) return dflt;
  if (typeof value !== 'function') throw invalidOption(`${prefix}${key}`, 'a function', value);
  return value as F;
}

/** Rejects keys the reader does not know: a typo must not silently fall back to a default. */
export function rejectUnknownKeys(bag: OptionBag, prefix: string, known: readonly string[]): void {
  for (const key of Object.keys(bag)) {
    if (!known.includes(key)) {
      throw new GatewayError('LW_GW_INVALID_OPTION', unknownOptionText(key, known, prefix));
    }
  }
}
