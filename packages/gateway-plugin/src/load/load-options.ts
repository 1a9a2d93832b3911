/**
 * Options of createEndpointLoad: unit-suffixed defaults (grpc-js style) and
 * their validation, once, at construction (LW_GW_INVALID_OPTION). The
 * estimate itself is in endpoint-load.ts.
 */
import { invalidOption } from '../errors';
import type { LoadCohort } from './cohort';
import {
  functionOption,
  integerOption,
  numberOption,
  optionBag,
  rejectUnknownKeys,
} from './option-check';
import type { FreshnessPolicy } from './report-digest';

/** A report counts for this many of its own intervals (a lost report must not expire it). */
export const DEFAULT_STALE_AFTER_INTERVALS = 3;
export const DEFAULT_MIN_STALE_AFTER_MS = 1_000;
export const DEFAULT_MAX_STALE_AFTER_MS = 30_000;
/** Envoy's slow_start_window has no default; 15 s sits in the 10–30 s range the design asks for. */
export const DEFAULT_SLOW_START_MS = 15_000;
/** Envoy's min_weight_percent default is 10%. */
export const DEFAULT_SLOW_START_MIN_FACTOR = 0.1;
/** Finagle's PeakEwma decayTime and tower's default decay are both 10 s. */
export const DEFAULT_DECAY_MS = 10_000;
/**
 * Service time behind expectedWaitMs is a plain EWMA with a 1 s time constant:
 * Peak EWMA's sticky peaks (a single slow request counts for ~10 s) made
 * every backend look several times slower than its mean, at random, and with
 * several gateways that noise tipped the system into oscillation
 * (queueing-sim.test.ts). Sudden slowness still shows at once through in-flight.
 */
export const DEFAULT_SERVICE_DECAY_MS = 1_000;
/** Window of the minimum-latency filter (BBR keeps its min RTT for 10 s). */
export const DEFAULT_MIN_LATENCY_WINDOW_MS = 10_000;
/** How fast a learned capacity peak fades towards newer, lower samples. */
export const DEFAULT_CAPACITY_DECAY_MS = 30_000;
/** Latency above this multiple of the windowed minimum, at 2+ concurrent requests, is queueing. */
export const SATURATION_LATENCY_RATIO = 1.5;
/** Weight of a new snapshot in the EWMA of the agent's outstanding (reports without traffic). */
export const HIDDEN_EWMA_ALPHA = 0.5;
/** Bound of the other-gateways-per-this-one ratio (a thousand gateways). */
export const MAX_HIDDEN_RATIO = 1000;
/** Local latency older than this gives way to a fresh report's latency. */
export const DEFAULT_LOCAL_FRESH_MS = 30_000;
/** Neutral service time when no backend has any data at all (all then score alike). */
export const DEFAULT_LATENCY_MS = 50;
/** Concurrent slots assumed until some are observed or reported (Peak EWMA's implicit value). */
export const DEFAULT_CAPACITY = 1;
export const DEFAULT_MAX_CAPACITY = 100_000;
export const DEFAULT_UTILIZATION_WEIGHT = 0.25;
export const DEFAULT_CPU_PRESSURE_THRESHOLD = 0.85;
/** Extra factor at 100% CPU (×2). */
export const DEFAULT_CPU_PRESSURE_PENALTY = 1;
export const DEFAULT_MEMORY_PRESSURE_THRESHOLD = 0.9;
/** Extra factor at 100% memory (×3): running out of memory kills, running out of CPU slows. */
export const DEFAULT_MEMORY_PRESSURE_PENALTY = 2;
export const DEFAULT_DEGRADED_PENALTY = 2;
/** Extra factor at a 100% error rate (×5): a backend failing fast must not look fast. */
export const DEFAULT_ERROR_PENALTY = 4;
export const DEFAULT_MAX_PENALTY_FACTOR = 8;
/**
 * Extra factor when every recent answer was "overloaded" (503 + Retry-After, ×5):
 * the same weight as errors, but it never counts toward ejection.
 */
export const DEFAULT_OVERLOAD_PENALTY = 4;
/**
 * Time constant of the overload signal without traffic. Shorter than decayMs: a
 * queue drains in a few service times, and Retry-After is typically 1 s.
 */
export const DEFAULT_OVERLOAD_DECAY_MS = 2_000;
/** Share of each completion in the overload EWMA (as ERROR_EWMA_ALPHA for errors). */
export const OVERLOAD_EWMA_ALPHA = 0.1;
/** Share of each completion in the local error-rate EWMA. */
export const ERROR_EWMA_ALPHA = 0.1;
/** No expected wait exceeds one hour: keeps every figure finite and ordered. */
export const MAX_EXPECTED_WAIT_MS = 3_600_000;
/** Service time floor: a measured 0 ms (coarse clocks) must not erase the queue term. */
export const MIN_SERVICE_TIME_MS = 0.05;

export interface EndpointLoadOptions {
  /** Clock, used only to start slow start at creation (`slowStartOnCreate`); hooks take `nowMs`. */
  now?: () => number;
  /** Accepted for symmetry with createStrategy; the load estimate itself is deterministic. */
  random?: () => number;
  /** Fixed freshness limit of a report; by default `staleAfterIntervals` × its intervalMs. */
  staleAfterMs?: number;
  staleAfterIntervals?: number;
  minStaleAfterMs?: number;
  maxStaleAfterMs?: number;
  /** Slow-start ramp after admit(); 0 disables. */
  slowStartMs?: number;
  slowStartMinFactor?: number;
  /** Start slow start when the estimate is created (a backend added at run time). */
  slowStartOnCreate?: boolean;
  /** Peak EWMA decay time constant. */
  decayMs?: number;
  /** Time constant of the service-time EWMA behind expectedWaitMs (a mean, not a peak). */
  serviceDecayMs?: number;
  minLatencyWindowMs?: number;
  capacityDecayMs?: number;
  localFreshMs?: number;
  defaultLatencyMs?: number;
  defaultCapacity?: number;
  maxCapacity?: number;
  utilizationWeight?: number;
  cpuPressureThreshold?: number;
  cpuPressurePenalty?: number;
  memoryPressureThreshold?: number;
  memoryPressurePenalty?: number;
  degradedPenalty?: number;
  errorPenalty?: number;
  /** Extra factor at a 100% share of overloaded answers (503 + Retry-After). */
  overloadPenalty?: number;
  /** Time constant of the overload signal when no request completes. */
  overloadDecayMs?: number;
  maxPenaltyFactor?: number;
  /** Shared neutral estimate: one per balancer, from createLoadCohort(). */
  cohort?: LoadCohort;
}

const KNOWN_KEYS = [
  'now',
  'random',
  'staleAfterMs',
  'staleAfterIntervals',
  'minStaleAfterMs',
  'maxStaleAfterMs',
  'slowStartMs',
  'slowStartMinFactor',
  'slowStartOnCreate',
  'decayMs',
  'serviceDecayMs',
  'minLatencyWindowMs',
  'capacityDecayMs',
  'localFreshMs',
  'defaultLatencyMs',
  'defaultCapacity',
  'maxCapacity',
  'utilizationWeight',
  'cpuPressureThreshold',
  'cpuPressurePenalty',
  'memoryPressureThreshold',
  'memoryPressurePenalty',
  'degradedPenalty',
  'errorPenalty',
  'overloadPenalty',
  'overloadDecayMs',
  'maxPenaltyFactor',
  'cohort',
] as const;

const HOUR_MS = 3_600_000;

export interface ResolvedLoadOptions {
  now: () => number;
  slowStartOnCreate: boolean;
  freshness: FreshnessPolicy;
  slowStartMs: number;
  slowStartMinFactor: number;
  decayMs: number;
  serviceDecayMs: number;
  minLatencyWindowMs: number;
  capacityDecayMs: number;
  localFreshMs: number;
  defaultLatencyMs: number;
  defaultCapacity: number;
  maxCapacity: number;
  utilizationWeight: number;
  cpuPressureThreshold: number;
  cpuPressurePenalty: number;
  memoryPressureThreshold: number;
  memoryPressurePenalty: number;
  degradedPenalty: number;
  errorPenalty: number;
  overloadPenalty: number;
  overloadDecayMs: number;
  maxPenaltyFactor: number;
}

/** Validates load options (throws LW_GW_INVALID_OPTION); exported so the balancer can check them early. */
export function resolveLoadOptions(
  opts?: EndpointLoadOptions | Record<string, unknown>,
): ResolvedLoadOptions {
  const bag = optionBag('load', opts);
  const p = 'load.';
  rejectUnknownKeys(bag, p, KNOWN_KEYS);
  const staleAfterMs =
    bag['staleAfterMs'] === undefined
      ? undefined
      : numberOption(bag, p, 'staleAfterMs', 0, 1, HOUR_MS);
  const minStaleAfterMs = numberOption(
    bag,
    p,
    'minStaleAfterMs',
    DEFAULT_MIN_STALE_AFTER_MS,
    1,
    HOUR_MS,
  );
  const maxStaleAfterMs = numberOption(
    bag,
    p,
    'maxStaleAfterMs',
    DEFAULT_MAX_STALE_AFTER_MS,
    1,
    HOUR_MS,
  );
  if (maxStaleAfterMs < minStaleAfterMs) {
    throw invalidOption(
      `${p}maxStaleAfterMs`,
      `>= minStaleAfterMs (${minStaleAfterMs})`,
      maxStaleAfterMs,
    );
  }
  const now = functionOption<() => number>(bag, p, 'now', Date.now);
  functionOption<() => number>(bag, p, 'random', Math.random);
  const slowStartOnCreate = bag['slowStartOnCreate'] ?? false;
  if (typeof slowStartOnCreate !== 'boolean') {
    throw invalidOption(`${p}slowStartOnCreate`, 'a boolean', slowStartOnCreate);
  }
  const minCapacity = 1;
  const maxCapacity = numberOption(bag, p, 'maxCapacity', DEFAULT_MAX_CAPACITY, minCapacity, 1e9);
  const cpuPressureThreshold = numberOption(
    bag,
    p,
    'cpuPressureThreshold',
    DEFAULT_CPU_PRESSURE_THRESHOLD,
    0,
    0.999,
  );
  const memoryPressureThreshold = numberOption(
    bag,
    p,
    'memoryPressureThreshold',
    DEFAULT_MEMORY_PRESSURE_THRESHOLD,
    0,
    0.999,
  );
  return {
    now,
    slowStartOnCreate,
    freshness: {
      staleAfterMs,
      staleAfterIntervals: numberOption(
        bag,
        p,
        'staleAfterIntervals',
        DEFAULT_STALE_AFTER_INTERVALS,
        1,
        100,
      ),
      minStaleAfterMs,
      maxStaleAfterMs,
    },
    slowStartMs: numberOption(bag, p, 'slowStartMs', DEFAULT_SLOW_START_MS, 0, HOUR_MS),
    slowStartMinFactor: numberOption(
      bag,
      p,
      'slowStartMinFactor',
      DEFAULT_SLOW_START_MIN_FACTOR,
      0.01,
      1,
    ),
    decayMs: numberOption(bag, p, 'decayMs', DEFAULT_DECAY_MS, 1, HOUR_MS),
    serviceDecayMs: numberOption(bag, p, 'serviceDecayMs', DEFAULT_SERVICE_DECAY_MS, 1, HOUR_MS),
    minLatencyWindowMs: numberOption(
      bag,
      p,
      'minLatencyWindowMs',
      DEFAULT_MIN_LATENCY_WINDOW_MS,
      1,
      HOUR_MS,
    ),
    capacityDecayMs: numberOption(bag, p, 'capacityDecayMs', DEFAULT_CAPACITY_DECAY_MS, 1, HOUR_MS),
    localFreshMs: numberOption(bag, p, 'localFreshMs', DEFAULT_LOCAL_FRESH_MS, 0, HOUR_MS),
    defaultLatencyMs: numberOption(
      bag,
      p,
      'defaultLatencyMs',
      DEFAULT_LATENCY_MS,
      MIN_SERVICE_TIME_MS,
      HOUR_MS,
    ),
    defaultCapacity: integerOption(
      bag,
      p,
      'defaultCapacity',
      DEFAULT_CAPACITY,
      minCapacity,
      maxCapacity,
    ),
    maxCapacity,
    utilizationWeight: numberOption(bag, p, 'utilizationWeight', DEFAULT_UTILIZATION_WEIGHT, 0, 10),
    cpuPressureThreshold,
    cpuPressurePenalty: numberOption(
      bag,
      p,
      'cpuPressurePenalty',
      DEFAULT_CPU_PRESSURE_PENALTY,
      0,
      100,
    ),
    memoryPressureThreshold,
    memoryPressurePenalty: numberOption(
      bag,
      p,
      'memoryPressurePenalty',
      DEFAULT_MEMORY_PRESSURE_PENALTY,
      0,
      100,
    ),
    degradedPenalty: numberOption(bag, p, 'degradedPenalty', DEFAULT_DEGRADED_PENALTY, 1, 100),
    errorPenalty: numberOption(bag, p, 'errorPenalty', DEFAULT_ERROR_PENALTY, 0, 100),
    overloadPenalty: numberOption(bag, p, 'overloadPenalty', DEFAULT_OVERLOAD_PENALTY, 0, 100),
    overloadDecayMs: numberOption(bag, p, 'overloadDecayMs', DEFAULT_OVERLOAD_DECAY_MS, 1, HOUR_MS),
    maxPenaltyFactor: numberOption(bag, p, 'maxPenaltyFactor', DEFAULT_MAX_PENALTY_FACTOR, 1, 1000),
  };
}
