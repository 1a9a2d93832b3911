/**
 * The neutral estimate for a backend with no data of its own. DESIGN.md
 * ("Lessons already learned"): a backend with no data must not look free; use
 * the mean of the others. gRFC A58 does the same for weights ("no valid weight
 * means the mean weight"). A cohort keeps running sums of its members' current
 * service time and capacity estimates so that reading the mean is O(1) on the
 * pick path. One cohort per balancer; every EndpointLoad of that balancer
 * joins it through the `cohort` option.
 */
export interface LoadCohort {
  /** Mean service time of the members that have one, or undefined if none has. */
  meanServiceTimeMs(): number | undefined;
  /** Mean capacity (concurrent slots) of the members that have one, or undefined. */
  meanCapacity(): number | undefined;
  /** Members that currently contribute a service time. */
  readonly size: number;
}

/** Internal side of the cohort, used by endpoint-load.ts. */
export interface CohortMembership {
  set(serviceTimeMs: number | undefined, capacity: number | undefined): void;
  /** Mean capacity of the other members (a prior must not include the member's own figure). */
  othersMeanCapacity(): number | undefined;
  leave(): void;
}

interface CohortInternals extends LoadCohort {
  join(): CohortMembership;
}

export function createLoadCohort(): LoadCohort {
  let sumServiceMs = 0;
  let countService = 0;
  let sumCapacity = 0;
  let countCapacity = 0;

  const cohort: CohortInternals = {
    meanServiceTimeMs: () => (countService === 0 ? undefined : sumServiceMs / countService),
    meanCapacity: () => (countCapacity === 0 ? undefined : sumCapacity / countCapacity),
    get size() {
      return countService;
    },
    join(): CohortMembership {
      let service: number | undefined;
      let capacity: number | undefined;
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
        leave() {
          if (left) return;
          apply(undefined, undefined);
          left = true;
        },
      };
    },
  };
  return cohort;
}

/** Joins `cohort` if it was made by createLoadCohort; other objects cannot be joined. */
export function joinCohort(cohort: LoadCohort | undefined): CohortMembership | undefined {
  if (cohort === undefined) return undefined;
  const join = (cohort as Partial<CohortInternals>).join;
  return typeof join === 'function' ? join.call(cohort) : undefined;
}
