/**
 * The figures of an agent report the load estimate uses, extracted once when
 * the report arrives so the pick path reads plain numbers. Reports are already
 * validated by @loadwise/protocol; every figure is still guarded here (finite,
 * in range) because a NaN reaching a comparison makes a backend unpickable or
 * always picked.
 */
import type { BackendState, HealthVerdict, MetricsReport } from '@loadwise/protocol';
import { cpuEvidence, type CpuEvidence, type LocalRate } from './cpu-capacity';
import { MAX_EXPECTED_WAIT_MS } from './load-options';

export interface ReportDigest {
  receivedAtMs: number;
  /** How long this report counts, in ms after receivedAtMs. */
  staleAfterMs: number;
  state: BackendState;
  verdict: HealthVerdict;
  /**
   * Requests the backend has (serving + queued + in the accept backlog), as the
   * agent saw them; from rps × latency (Little's law) when no queue figure is
   * reported; undefined when neither is.
   */
  outstanding: number | undefined;
  /**
   * Time-averaged requests at the backend over the agent's traffic window, by
   * Little's law (rps × mean latency); undefined without traffic figures.
   */
  meanOutstanding: number | undefined;
  /**
   * Every slot busy by the agent's count: it reports a concurrency limit and
   * `queue.inFlight` exactly at it, requests waiting or not. Above it the limit
   * does not govern what the agent counts (a gauge that counts long polls, or
   * requests waiting inside the app): bounded by it, a backend holding 10 long
   * polls under a limit of 4 was saturated while idle, and every other request
   * got 503 after queueTimeoutMs.
   */
  slotsFull: boolean;
  /** Requests this gateway had in flight on the backend when the report arrived. */
  localInFlightAtReport: number;
  /** Concurrent slots the agent reports (concurrencyLimit), undefined if not reported. */
  concurrencyLimit: number | undefined;
  /**
   * Concurrent slots inferred from the report when no limit is reported: with
   * requests queued, the ones being served fill every slot, so `queue.inFlight`
   * is the capacity; otherwise Little's law rps × latency is a lower bound.
   */
  capacityHint: number | undefined;
  /** True when capacityHint is the capacity itself (queue non-empty), not a lower bound. */
  capacityHintExact: boolean;
  /**
   * The backend is at capacity by its own account: requests wait (queued or in
   * the accept backlog) and every reported slot is busy. A 503 or 429 from it
   * then means "full", not "broken" (request-flow.ts).
   */
  saturated: boolean;
  /** Backend-side latency (mean, else p50), undefined if not reported. */
  latencyMs: number | undefined;
  /**
   * CPU as capacity (load/cpu-capacity.ts), undefined without the evidence
   * (enough completions, process CPU, a limit and its utilization).
   */
  cpu: CpuEvidence | undefined;
  /**
   * The report has the service process's CPU (`process.cpuCores`): its CPU is
   * judged as capacity (load/cpu-capacity.ts), never as a pressure penalty.
   */
  processCpuReported: boolean;
  /** Worst of host and cgroup CPU utilization, 0..1. */
  /**
   * A `degraded` verdict that CPU alone explains (the agent's `health.causes`
   * is exactly `cpu`): with the process's CPU reported, CPU as capacity judges
   * it, and the degraded penalty does not count it twice (load/report-penalty.ts).
   */
  degradedByCpuOnly: boolean;
  cpuUtilization: number;
  /** Worst of host and cgroup memory utilization, 0..1. */
  memoryUtilization: number;
  errorRate: number;
  /**
   * An early report (the agent saw outstanding requests rise between two
   * scheduled reports): its queue is the backend's state now, its other
   * figures repeat the last scheduled report.
   */
  early: boolean;
}

function finite(x: number | undefined): number | undefined {
  return typeof x === 'number' && Number.isFinite(x) && x >= 0 ? x : undefined;
}

function unit(x: number | undefined): number {
  const v = finite(x);
  return v === undefined ? 0 : Math.min(1, v);
}

function cpuOnly(causes: readonly string[] | undefined): boolean {
  if (!Array.isArray(causes) || causes.length === 0) return false;
  for (const c of causes) if (c !== 'cpu') return false;
  return true;
}

export interface FreshnessPolicy {
  /** Fixed freshness limit; when undefined it is derived from the report's interval. */
  staleAfterMs: number | undefined;
  staleAfterIntervals: number;
  minStaleAfterMs: number;
  maxStaleAfterMs: number;
}

/**
 * Freshness limit of one report: fixed if configured, else `staleAfterIntervals`
 * × the agent's own interval (gRFC A58 expires weights after
 * `weight_expiration_period`; a report skipped or lost must not expire the
 * state at once, hence several intervals), bounded both ways so an agent
 * cannot keep a report alive for hours with a huge interval.
 */
export function staleAfterFor(policy: FreshnessPolicy, intervalMs: number): number {
  if (policy.staleAfterMs !== undefined) return policy.staleAfterMs;
  const interval = finite(intervalMs) ?? 0;
  const derived = interval * policy.staleAfterIntervals;
  return Math.min(policy.maxStaleAfterMs, Math.max(policy.minStaleAfterMs, derived));
}

export function digestReport(
  report: MetricsReport,
  receivedAtMs: number,
  localInFlight: number,
  policy: FreshnessPolicy,
  /** This gateway's completions since the last scheduled report (CPU per request without traffic figures). */
  localRate?: LocalRate,
): ReportDigest {
  const queue = report.queue;
  const traffic = report.traffic;
  const inFlight = finite(queue?.inFlight);
  const queued = finite(queue?.queued);
  const backlog = finite(queue?.acceptBacklog);
  const reportedLatencyMs = finite(traffic?.latencyMeanMs) ?? finite(traffic?.latencyP50Ms);
  // At most the longest expected wait: the figure feeds the cohort's running mean
  // (load/cohort.ts), every idle backend's estimate, and a signed 1e300 from one
  // agent set an idle peer's wait to the hour cap (0 picks in 10,000) and, once
  // subtracted again, left the mean a third of its true value for good: the other
  // members' figures had been lost to rounding beside it.
  const latencyMs =
    reportedLatencyMs === undefined ? undefined : Math.min(reportedLatencyMs, MAX_EXPECTED_WAIT_MS);
  const rps = finite(traffic?.rps);

  let outstanding: number | undefined;
  if (inFlight !== undefined || queued !== undefined || backlog !== undefined) {
    outstanding = (inFlight ?? 0) + (queued ?? 0) + (backlog ?? 0);
  } else if (rps !== undefined && latencyMs !== undefined) {
    // Little's law: mean requests in the system = arrival rate × mean time in it.
    outstanding = (rps * latencyMs) / 1000;
  }

  const limit = finite(report.concurrencyLimit);
  let capacityHint: number | undefined;
  let capacityHintExact = false;
  if (inFlight !== undefined && inFlight >= 1 && (queued ?? 0) + (backlog ?? 0) >= 1) {
    capacityHint = inFlight;
    capacityHintExact = true;
  } else if (inFlight !== undefined && inFlight >= 1) {
    capacityHint = inFlight;
  } else if (rps !== undefined && latencyMs !== undefined) {
    capacityHint = (rps * latencyMs) / 1000;
  }

  const cg = report.cgroup;
  const concurrencyLimit = limit !== undefined && limit >= 1 ? limit : undefined;
  return {
    receivedAtMs,
    staleAfterMs: staleAfterFor(policy, report.intervalMs),
    state: report.state,
    verdict: report.health?.verdict ?? 'up',
    outstanding,
    meanOutstanding:
      rps !== undefined && latencyMs !== undefined ? (rps * latencyMs) / 1000 : undefined,
    slotsFull: limit !== undefined && inFlight === limit,
    localInFlightAtReport: localInFlight,
    concurrencyLimit,
    capacityHint: capacityHint !== undefined && capacityHint >= 1 ? capacityHint : undefined,
    capacityHintExact,
    saturated:
      (queued ?? 0) + (backlog ?? 0) >= 1 &&
      (limit === undefined || (inFlight !== undefined && inFlight >= limit)),
    latencyMs,
    cpu: cpuEvidence(report, concurrencyLimit, localRate),
    processCpuReported: finite(report.process?.cpuCores) !== undefined,
    degradedByCpuOnly: cpuOnly(report.health?.causes),
    cpuUtilization: Math.max(unit(report.host?.cpuUtilization), unit(cg?.cpuUtilization)),
    memoryUtilization: Math.max(unit(report.host?.memoryUtilization), unit(cg?.memoryUtilization)),
    errorRate: unit(traffic?.errorRate),
    early: report.early === true,
  };
}

/**
 * Requests in flight from this gateway past which a backend whose agent reports
 * `slots` (its concurrencyLimit) is saturated: its slots and as many queued in it (at
 * least 4), so a slot that frees never waits for the gateway's next dispatch.
 */
export function reportedBound(slots: number): number {
  return Math.max(2 * slots, slots + 4);
}
