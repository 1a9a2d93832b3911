/**
 * Options of createEndpointLoad: unit-suffixed defaults (grpc-js style) and
 * their schema, checked once, at construction (LW_GW_INVALID_OPTION). The
 * estimate itself is in endpoint-load.ts.
 */
import * as v from 'valibot';
import { invalidOption } from '../errors';
import {
  type Check,
  type Same,
  crossCheck,
  expected,
  leaf,
  parseOptions,
  strict,
} from '../option-errors';
import { isLoadCohort, type LoadCohort } from './cohort';
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
/** Weight of a new report in the EWMA of the snapshots' hidden excess (reports without traffic). */
export const HIDDEN_EWMA_ALPHA = 0.5;
/** Bound of the other-gateways-per-this-one ratio (a thousand gateways). */
export const MAX_HIDDEN_RATIO = 1000;
/** Local latency older than this gives way to a fresh report's latency. */
export const DEFAULT_LOCAL_FRESH_MS = 30_000;
/** Neutral service time when no backend has any data at all (all then score alike). */
export const DEFAULT_LATENCY_MS = 50;
/** Concurrent slots assumed until some are observed or reported (Peak EWMA's implicit value). */
export const DEFAULT_CAPACITY = 1;
const MIN_CAPACITY = 1;
export const DEFAULT_MAX_CAPACITY = 100_000;
export const DEFAULT_UTILIZATION_WEIGHT = 0.25;
export const DEFAULT_CPU_PRESSURE_THRESHOLD = 0.85;
/**
 * Extra factor at 100% CPU: none by default. A one-second-old CPU figure as a
 * penalty herded identical backends near saturation (docs/strategies.md, "The
 * pressure penalty"); the latency and the queue judge instead.
 */
export const DEFAULT_CPU_PRESSURE_PENALTY = 0;
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
  /**
   * CPU utilization (worst of host and cgroup) above which a report's penalty
   * grows; applies only to reports without `process.cpuCores` (with it, the CPU
   * is a capacity: load/cpu-capacity.ts).
   */
  cpuPressureThreshold?: number;
  /**
   * Extra factor at 100% CPU, for reports without `process.cpuCores` only
   * (default 0: off). Above 0 it also lets a `degraded` verdict that CPU alone
   * explains count (`degradedPenalty`) for such reports.
   */
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

const HOUR_MS = 3_600_000;

/** `load.<key> must be a finite number in [min, max]` (option-check.ts wording). */
function finite(min: number, max: number) {
  return leaf<number>((x) =>
    typeof x !== 'number' || !Number.isFinite(x) || x < min || x > max
      ? expected(`a finite number in [${min}, ${max}]`)(x)
      : undefined,
  );
}
const fn = () =>
  leaf<() => number>((x) => (typeof x === 'function' ? undefined : expected('a function')(x)));

/**
 * The schema of these options (valibot; the gateway's `load` option is this
 * schema, options-validate.ts). It checks and keeps what the user gave; the
 * defaults are filled by resolveLoadOptions, so a balancer can pass the bag on
 * with its own clock.
 */
export const loadOptionsInput = v.pipe(
  strict({
    now: v.optional(fn()),
    random: v.optional(fn()),
    staleAfterMs: v.optional(finite(1, HOUR_MS)),
    staleAfterIntervals: v.optional(finite(1, 100)),
    minStaleAfterMs: v.optional(finite(1, HOUR_MS)),
    maxStaleAfterMs: v.optional(finite(1, HOUR_MS)),
    slowStartMs: v.optional(finite(0, HOUR_MS)),
    slowStartMinFactor: v.optional(finite(0.01, 1)),
    slowStartOnCreate: v.optional(
      leaf<boolean>((x) => (typeof x === 'boolean' ? undefined : expected('a boolean')(x))),
    ),
    decayMs: v.optional(finite(1, HOUR_MS)),
    serviceDecayMs: v.optional(finite(1, HOUR_MS)),
    minLatencyWindowMs: v.optional(finite(1, HOUR_MS)),
    capacityDecayMs: v.optional(finite(1, HOUR_MS)),
    localFreshMs: v.optional(finite(0, HOUR_MS)),
    defaultLatencyMs: v.optional(finite(MIN_SERVICE_TIME_MS, HOUR_MS)),
    // At most maxCapacity: checked below, once both are known.
    defaultCapacity: v.optional(finite(MIN_CAPACITY, 1e9)),
    maxCapacity: v.optional(finite(MIN_CAPACITY, 1e9)),
    utilizationWeight: v.optional(finite(0, 10)),
    cpuPressureThreshold: v.optional(finite(0, 0.999)),
    cpuPressurePenalty: v.optional(finite(0, 100)),
    memoryPressureThreshold: v.optional(finite(0, 0.999)),
    memoryPressurePenalty: v.optional(finite(0, 100)),
    degradedPenalty: v.optional(finite(1, 100)),
    errorPenalty: v.optional(finite(0, 100)),
    overloadPenalty: v.optional(finite(0, 100)),
    overloadDecayMs: v.optional(finite(1, HOUR_MS)),
    maxPenaltyFactor: v.optional(finite(1, 1000)),
    cohort: v.optional(
      leaf<LoadCohort>((x) =>
        isLoadCohort(x) ? undefined : expected('a cohort made by createLoadCohort()')(x),
      ),
    ),
  }),
  crossCheck((o) => {
    const min = o.minStaleAfterMs ?? DEFAULT_MIN_STALE_AFTER_MS;
    const max = o.maxStaleAfterMs ?? DEFAULT_MAX_STALE_AFTER_MS;
    if (max < min) return invalidOption('load.maxStaleAfterMs', `>= minStaleAfterMs (${min})`, max);
    const cap = o.maxCapacity ?? DEFAULT_MAX_CAPACITY;
    const c = o.defaultCapacity;
    if (c !== undefined && c > cap)
      return invalidOption(
        'load.defaultCapacity',
        `a finite number in [${MIN_CAPACITY}, ${cap}]`,
        c,
      );
    if (c !== undefined && !Number.isInteger(c))
      return invalidOption('load.defaultCapacity', 'an integer', c);
    return undefined;
  }),
);

// Compile-time: the public type and the schema accept the same options (the
// keys apart: Same<> alone misses an extra optional key on either side).
type LoadInput = v.InferInput<typeof loadOptionsInput>;
export type _LoadSchemaMatchesType = [
  Check<Same<LoadInput, EndpointLoadOptions>>,
  Check<Same<keyof LoadInput, keyof EndpointLoadOptions>>,
];

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

/** Validates load options (throws LW_GW_INVALID_OPTION) and fills their defaults. */
export function resolveLoadOptions(
  opts?: EndpointLoadOptions | Record<string, unknown>,
): ResolvedLoadOptions {
  const o = parseOptions(loadOptionsInput, opts ?? {}, 'load');
  return {
    now: o.now ?? Date.now,
    slowStartOnCreate: o.slowStartOnCreate ?? false,
    freshness: {
      staleAfterMs: o.staleAfterMs,
      staleAfterIntervals: o.staleAfterIntervals ?? DEFAULT_STALE_AFTER_INTERVALS,
      minStaleAfterMs: o.minStaleAfterMs ?? DEFAULT_MIN_STALE_AFTER_MS,
      maxStaleAfterMs: o.maxStaleAfterMs ?? DEFAULT_MAX_STALE_AFTER_MS,
    },
    slowStartMs: o.slowStartMs ?? DEFAULT_SLOW_START_MS,
    slowStartMinFactor: o.slowStartMinFactor ?? DEFAULT_SLOW_START_MIN_FACTOR,
    decayMs: o.decayMs ?? DEFAULT_DECAY_MS,
    serviceDecayMs: o.serviceDecayMs ?? DEFAULT_SERVICE_DECAY_MS,
    minLatencyWindowMs: o.minLatencyWindowMs ?? DEFAULT_MIN_LATENCY_WINDOW_MS,
    capacityDecayMs: o.capacityDecayMs ?? DEFAULT_CAPACITY_DECAY_MS,
    localFreshMs: o.localFreshMs ?? DEFAULT_LOCAL_FRESH_MS,
    defaultLatencyMs: o.defaultLatencyMs ?? DEFAULT_LATENCY_MS,
    defaultCapacity: o.defaultCapacity ?? DEFAULT_CAPACITY,
    maxCapacity: o.maxCapacity ?? DEFAULT_MAX_CAPACITY,
    utilizationWeight: o.utilizationWeight ?? DEFAULT_UTILIZATION_WEIGHT,
    cpuPressureThreshold: o.cpuPressureThreshold ?? DEFAULT_CPU_PRESSURE_THRESHOLD,
    cpuPressurePenalty: o.cpuPressurePenalty ?? DEFAULT_CPU_PRESSURE_PENALTY,
    memoryPressureThreshold: o.memoryPressureThreshold ?? DEFAULT_MEMORY_PRESSURE_THRESHOLD,
    memoryPressurePenalty: o.memoryPressurePenalty ?? DEFAULT_MEMORY_PRESSURE_PENALTY,
    degradedPenalty: o.degradedPenalty ?? DEFAULT_DEGRADED_PENALTY,
    errorPenalty: o.errorPenalty ?? DEFAULT_ERROR_PENALTY,
    overloadPenalty: o.overloadPenalty ?? DEFAULT_OVERLOAD_PENALTY,
    overloadDecayMs: o.overloadDecayMs ?? DEFAULT_OVERLOAD_DECAY_MS,
    maxPenaltyFactor: o.maxPenaltyFactor ?? DEFAULT_MAX_PENALTY_FACTOR,
  };
}
