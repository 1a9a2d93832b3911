/**
 * CPU as capacity: how many requests per second the CPU a backend can get
 * would drain, from one scheduled agent report (docs/strategies.md, "CPU as
 * capacity"). With the process's CPU `p` (cores) and its completions `rps`:
 *
 *     k         = p / rps                    CPU per request (core-seconds)
 *     others    = max(0, u × L − p)          what the others in its cgroup (L =
 *                                            cpuLimitCores, u = its utilization)
 *                                            or on its host (L = cpuCount) take
 *     headroom  = min(L − others, c)         c = reported slots (a single-threaded
 *                                            slot uses one core); at least p
 *     μ         = headroom / k               req/s
 *
 * The service is CPU-bound when it uses most of its headroom
 * (CPU_BOUND_SHARE); then the load estimate takes its service time from μ
 * (c / μ, load/endpoint-load.ts). Otherwise, under a cgroup quota, c / μ is a
 * floor under the latency's service time (CpuCapacity.serviceTime: on a CFS
 * quota a lone request is fast while the period's quota lasts, the queue
 * drains at μ); an IO-bound service uses little CPU per request, its floor is
 * far below its latency, and its μ says nothing about how long a request waits.
 *
 * Except when the others are elastic (and for ELASTIC_MEMORY_REPORTS scheduled
 * reports after): a cgroup or host kept full
 * (ELASTIC_UTILIZATION) while others take a real part of it (a busy loop in the
 * same cgroup takes whatever the service leaves). Then `L − others` is only
 * what the service used, μ would be its current rps, which falls when the
 * gateways send less and never recovers (the queueing simulation starved
 * such a backend that way); under fair share the service gets a part back as
 * soon as it has work, and how much cannot be read off CPU figures (an
 * estimate of its busy time from rps × latency overrated it by 15–20% in the
 * simulation with three gateways, and its p99 was least-in-flight's). The
 * figure is then only a lower bound, not `bound`: the latency judges.
 *
 * Without the agent's `traffic.rps` (a queue read off a Prometheus gauge comes
 * without traffic figures), this gateway's own completions on the backend
 * over the last report interval stand in (`LocalRate`). With other gateways
 * or clients sending too that rate is only this gateway's part, so CPU per
 * request is overrated by 1 / its share and μ underrated by as much. So the
 * local rate counts only while this gateway looks like the backend's only
 * sender (load/endpoint-load.ts, Senders); otherwise there is no CPU figure.
 *
 * Evidence first: at least MIN_CPU_COMPLETIONS completions in the agent's
 * window, at least MIN_PROCESS_CPU_CORES of process CPU, a limit (cgroup quota
 * or host CPU count) with its utilization. Anything missing, non-finite or
 * negative: no CPU figure, and the estimate is what it was without one.
 */
import type { MetricsReport } from '@loadwise/protocol';

/** Fewer completions than this in the agent's window: CPU per request is noise. */
export const MIN_CPU_COMPLETIONS = 20;
/** Less process CPU than this (cores): the service's CPU figures are not evidence. */
export const MIN_PROCESS_CPU_CORES = 0.01;
/** The service uses at least this share of the CPU it can get: CPU-bound. */
export const CPU_BOUND_SHARE = 0.8;
/** A cgroup or host at least this busy, with others taking ELASTIC_OTHERS_SHARE of it: elastic others. */
export const ELASTIC_UTILIZATION = 0.95;
/**
 * Scheduled reports after an elastic one during which the others still count as elastic: one
 * report in which a busy loop's cgroup read under ELASTIC_UTILIZATION must not turn the
 * service's own use into its capacity (a floor above the latency of the backend beside the busy
 * loop in the cpu-bound benchmark).
 */
export const ELASTIC_MEMORY_REPORTS = 5;
export const ELASTIC_OTHERS_SHARE = 0.05;

export interface CpuEvidence {
  /** CPU per request, in core-milliseconds. */
  cpuPerRequestMs: number;
  /** Cores the service can get: its headroom. */
  availableCores: number;
  /** Requests per second that CPU drains: availableCores / CPU per request (a lower bound if `elastic`). */
  throughputRps: number;
  /** The others take whatever the service leaves: the headroom is only what the service used. */
  elastic: boolean;
  /** The service uses most of the CPU it can get (never when `elastic`): its service time is c / μ. */
  bound: boolean;
  /** The limit is the cgroup's quota (not the host's CPU count): c / μ is a floor under s. */
  quota: boolean;
}

function positive(x: number | undefined): number | undefined {
  return typeof x === 'number' && Number.isFinite(x) && x > 0 ? x : undefined;
}

function share(x: number | undefined): number | undefined {
  return typeof x === 'number' && Number.isFinite(x) && x >= 0 ? Math.min(1, x) : undefined;
}

/** This gateway's own completions on a backend between its last two scheduled reports. */
export interface LocalRate {
  rps: number;
  windowMs: number;
}

/**
 * The CPU evidence of one report, or undefined when it has none.
 * `slots` is the reported concurrencyLimit (undefined if none).
 */
export function cpuEvidence(
  report: MetricsReport,
  slots: number | undefined,
  local?: LocalRate,
): CpuEvidence | undefined {
  const traffic = report.traffic;
  let rps = positive(traffic?.rps);
  let windowMs = positive(traffic?.windowMs) ?? positive(report.intervalMs);
  if (rps === undefined && local !== undefined) {
    rps = positive(local.rps);
    windowMs = positive(local.windowMs);
  }
  const p = positive(report.process?.cpuCores);
  if (rps === undefined || p === undefined || p < MIN_PROCESS_CPU_CORES) return undefined;
  if (windowMs === undefined || (rps * windowMs) / 1000 < MIN_CPU_COMPLETIONS) return undefined;

  let limit = positive(report.cgroup?.cpuLimitCores);
  let util = share(report.cgroup?.cpuUtilization);
  const quota = limit !== undefined && util !== undefined;
  if (!quota) {
    limit = positive(report.host?.cpuCount);
    util = share(report.host?.cpuUtilization);
  }
  if (limit === undefined || util === undefined) return undefined;

  const others = Math.max(0, util * limit - p);
  let headroom = limit - others;
  if (slots !== undefined && slots >= 1 && headroom > slots) headroom = slots;
  // The process used p: it can get at least that (figures sampled a few ms apart may disagree).
  if (!(headroom >= p)) headroom = p;
  const cpuPerRequestMs = (p / rps) * 1000;
  const throughputRps = headroom / (p / rps);
  if (!(throughputRps > 0 && throughputRps < Infinity)) return undefined;
  const elastic = util >= ELASTIC_UTILIZATION && others >= ELASTIC_OTHERS_SHARE * limit;
  return {
    cpuPerRequestMs,
    availableCores: headroom,
    throughputRps,
    elastic,
    bound: !elastic && p >= CPU_BOUND_SHARE * headroom,
    quota,
  };
}

/**
 * The CPU term of the load estimate: the last scheduled report's evidence
 * (an early report repeats the scheduled CPU figures, so it changes nothing
 * here), counted only while a report is fresh.
 */
export class CpuCapacity {
  private last: CpuEvidence | undefined;
  /** Scheduled reports left during which the others count as elastic (ELASTIC_MEMORY_REPORTS). */
  private elasticLeft = 0;

  onScheduledReport(evidence: CpuEvidence | undefined): void {
    if (evidence?.elastic) {
      this.elasticLeft = ELASTIC_MEMORY_REPORTS;
    } else if (evidence !== undefined && this.elasticLeft > 0) {
      this.elasticLeft--;
      evidence = { ...evidence, elastic: true, bound: false };
    }
    this.last = evidence;
  }

  /** The evidence in use: undefined without a fresh report (`fresh` false) or without evidence. */
  evidence(fresh: boolean): CpuEvidence | undefined {
    return fresh ? this.last : undefined;
  }

  /**
   * The CPU's service time for `capacity` slots, `capacity / μ` in ms, from a
   * fresh report whose others are not elastic; else undefined. While the
   * service is CPU-bound (`bound`) it is the service time. Otherwise, under a
   * cgroup quota (`floor`), it is a floor under the latency's: each request
   * spends 1 / μ of the quota, however fast it is answered. On a CFS quota a
   * lone request runs at full speed while the period's quota lasts, and the
   * requests after it wait for the next period (docs/strategies.md, "CPU as
   * capacity"). An IO-bound service (little CPU per request) has a floor far
   * below its latency, which then stands. A host's CPU count is no quota: a
   * request there is not held back once it runs, and its latency says so.
   */
  serviceTime(
    fresh: boolean,
    capacity: number,
  ): { ms: number; bound: boolean; floor: boolean } | undefined {
    const e = fresh ? this.last : undefined;
    if (e === undefined || e.elastic) return undefined;
    return { ms: (capacity * 1000) / e.throughputRps, bound: e.bound, floor: e.quota };
  }
}
