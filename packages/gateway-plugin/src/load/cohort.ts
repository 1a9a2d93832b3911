/**
 * The neutral estimate for a backend with no data of its own. docs/architecture.md,
 * rule 2: a backend with no data must not look free; use
 * the mean of the others. gRFC A58 does the same for weights ("no valid weight
 * means the mean weight"). A cohort keeps running sums of its members' current
 * service time and capacity estimates so that reading the mean is O(1) on the
 * pick path. One cohort per balancer; every EndpointLoad of that balancer
 * joins it through the `cohort` option.
 */
/** The hidden ratio is recomputed (a sort over members) at most this often. */
export const RATIO_REFRESH_MS = 250;
/** A member whose gateway kept fewer requests than this on average says nothing about the ratio. */
export const MIN_LOCAL_MEAN = 0.05;

export interface LoadCohort {
  /** Mean service time of the members that have one, or undefined if none has. */
  meanServiceTimeMs(): number | undefined;
  /** Mean capacity (concurrent slots) of the members that have one, or undefined. */
  meanCapacity(): number | undefined;
  /** Members that currently contribute a service time. */
  readonly size: number;
}

/** Internal side of the cohort, used by service-time.ts, capacity.ts and hidden-load.ts. */
export interface CohortMembership {
  set(serviceTimeMs: number | undefined, capacity: number | undefined): void;
  /** Mean capacity of the other members (a prior must not include the member's own figure). */
  othersMeanCapacity(): number | undefined;
  /** Mean service time of the other members (a neutral target must not include the member's own figure). */
  othersMeanServiceTimeMs(): number | undefined;
  /** This member's last interval: hidden mean concurrency and this gateway's mean in-flight. */
  setFlow(hiddenMean: number, localMean: number): void;
  /**
   * How many requests other gateways keep on a backend per request this one
   * keeps (G − 1 for G alike gateways): the median over members of hidden /
   * local mean concurrency. A median, because load that is not from gateways
   * (a batch job on one backend) inflates a few members' ratios, not the
   * typical one. A pure read: the figure refreshRatio last computed.
   */
  hiddenRatio(): number;
  /**
   * Recomputes the ratio if a member's flow changed, at most every
   * RATIO_REFRESH_MS. Called from the members' write paths (request starts
   * and ends, reports), never from a read, so reading changes nothing.
   */
  refreshRatio(nowMs: number): void;
  leave(): void;
}

interface CohortInternals extends LoadCohort {
  join(): CohortMembership;
}

/**
 * Cohorts made by createLoadCohort. A duck-typed check (a `join` method) took any array as
 * one, and the first request then threw inside the pick.
 */
const made = new WeakSet<object>();

/** True for a cohort made by createLoadCohort (load options accept nothing else). */
export function isLoadCohort(x: unknown): x is LoadCohort {
  return typeof x === 'object' && x !== null && made.has(x);
}

export function createLoadCohort(): LoadCohort {
  let sumServiceMs = 0;
  let countService = 0;
  let sumCapacity = 0;
  let countCapacity = 0;
  /** Members' hidden/local ratios, by member; NaN when the member's local mean is ~0. */
  const ratios = new Map<object, number>();
  let ratio = 0;
  let ratioAtMs = -Infinity;
  let ratioDirty = false;
  const scratch: number[] = [];
  const recompute = (): void => {
    scratch.length = 0;
    for (const r of ratios.values()) if (r === r) scratch.push(r);
    if (scratch.length === 0) {
      ratio = 0;
      return;
    }
    scratch.sort((a, b) => a - b);
    const m = scratch.length >> 1;
    // The mean of the middle two for an even count. The lower one instead (2026-12-07) routed
    // around a batch job on one of two backends far better, but cost bench scenario 1 (one
    // gateway, two of three backends carrying its traffic) 0.37-0.46x against 0.34-0.40x in six
    // runs: docs/strategies.md, "Hidden load, and several gateways on one broker".
    ratio = scratch.length % 2 ? scratch[m]! : (scratch[m - 1]! + scratch[m]!) / 2;
  };

  const cohort: CohortInternals = {
    meanServiceTimeMs: () => (countService === 0 ? undefined : sumServiceMs / countService),
    meanCapacity: () => (countCapacity === 0 ? undefined : sumCapacity / countCapacity),
    get size() {
      return countService;
    },
    join(): CohortMembership {
      let service: number | undefined;
      let capacity: number | undefined;
      const key = {};
      let left = false;
      const apply = (s: number | undefined, c: number | undefined): void => {
        if (service !== undefined) {
          sumServiceMs -= service;
          countService--;
        }
        if (capacity !== undefined) {
          sumCapacity -= capacity;
          countCapacity--;
        }
        service = s;
        capacity = c;
        if (service !== undefined) {
          sumServiceMs += service;
          countService++;
        }
        if (capacity !== undefined) {
          sumCapacity += capacity;
          countCapacity++;
        }
        // Running sums drift by rounding; reset them exactly when the cohort empties.
        if (countService === 0) sumServiceMs = 0;
        if (countCapacity === 0) sumCapacity = 0;
      };
      return {
        set(s, c) {
          if (!left) apply(s, c);
        },
        othersMeanCapacity() {
          const own = capacity === undefined ? 0 : 1;
          const count = countCapacity - own;
          return count <= 0 ? undefined : (sumCapacity - (capacity ?? 0)) / count;
        },
        othersMeanServiceTimeMs() {
          const own = service === undefined ? 0 : 1;
          const count = countService - own;
          return count <= 0 ? undefined : (sumServiceMs - (service ?? 0)) / count;
        },
        setFlow(h, l) {
          if (left) return;
          ratios.set(key, l >= MIN_LOCAL_MEAN && h >= 0 ? h / l : NaN);
          ratioDirty = true;
        },
        hiddenRatio() {
          return ratio;
        },
        refreshRatio(nowMs) {
          if (ratioDirty && (nowMs - ratioAtMs >= RATIO_REFRESH_MS || nowMs < ratioAtMs)) {
            recompute();
            ratioAtMs = nowMs;
            ratioDirty = false;
          }
        },
        leave() {
          if (left) return;
          apply(undefined, undefined);
          ratios.delete(key);
          ratioDirty = true;
          left = true;
        },
      };
    },
  };
  made.add(cohort);
  return cohort;
}

/** Joins `cohort` if it was made by createLoadCohort; other objects cannot be joined. */
export function joinCohort(cohort: LoadCohort | undefined): CohortMembership | undefined {
  return isLoadCohort(cohort) ? (cohort as CohortInternals).join() : undefined;
}
