/**
 * Every strategy, registered by name in one place (grpc-js
 * `registerLoadBalancerType` style). The balancer calls `createStrategy(name,
 * opts)` once, at construction; an unknown name throws LW_GW_UNKNOWN_STRATEGY,
 * bad options throw LW_GW_INVALID_OPTION.
 */
import { GatewayError } from '../errors';
import { DEFAULT_STRATEGY } from '../options';
import { createConsistentHash } from './consistent-hash';
import { createLeastInFlight } from './least-in-flight';
import { createLoadAware } from './load-aware';
import { createP2C } from './p2c';
import { createPeakEwma } from './peak-ewma';
import { createRoundRobin } from './round-robin';
import type { Strategy } from './types';
import { createWeightedRoundRobin } from './weighted-round-robin';

export type StrategyFactory = (opts: unknown) => Strategy;

export const DEFAULT_STRATEGY_NAME = DEFAULT_STRATEGY;

const BUILT_IN: ReadonlyArray<readonly [string, StrategyFactory]> = [
  ['round-robin', createRoundRobin],
  ['weighted-round-robin', createWeightedRoundRobin],
  ['least-in-flight', createLeastInFlight],
  ['p2c', createP2C],
  ['peak-ewma', createPeakEwma],
  ['consistent-hash', (opts) => createConsistentHash(opts, { createFallback: createStrategy })],
  ['load-aware', createLoadAware],
];

const registry = new Map<string, StrategyFactory>(BUILT_IN);

/** The built-in strategy names, in documentation order. */
export const STRATEGY_NAMES: readonly string[] = BUILT_IN.map(([name]) => name);

/** Every registered name, built-in and user-registered. */
export function strategyNames(): string[] {
  return [...registry.keys()];
}

export function isStrategyName(name: unknown): name is string {
  return typeof name === 'string' && registry.has(name);
}

/** Adds a user strategy (a name already taken throws LW_GW_INVALID_OPTION: built-ins are not replaced). */
export function registerStrategy(name: string, factory: StrategyFactory): void {
  if (!/^[a-z][a-z0-9-]*$/.test(name) || registry.has(name) || typeof factory !== 'function') {
    throw new GatewayError(
      'LW_GW_INVALID_OPTION',
      `strategy name ${JSON.stringify(name)} must be new, kebab-case, with a factory function`,
    );
  }
  registry.set(name, factory);
}

export function createStrategy(name: string = DEFAULT_STRATEGY_NAME, opts?: unknown): Strategy {
  const factory = registry.get(name);
  if (factory === undefined) {
    throw new GatewayError(
      'LW_GW_UNKNOWN_STRATEGY',
      `strategy ${JSON.stringify(name)} is not registered (known: ${strategyNames().join(', ')})`,
    );
  }
  return factory(opts);
}
