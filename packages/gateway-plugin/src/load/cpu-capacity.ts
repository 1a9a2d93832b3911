/**
 * CPU as capacity: how many requests per second the CPU a backend can get
 * would drain, from one scheduled agent report (docs/strategies.md, "CPU as
 * capacity"). With the process's CPU `p` (cores), its completions `rps`, and
 * the CPU the service can get:
 *
 *     k         = p / rps                       CPU per request (core-seconds)
 *     others    = max(0, u × L − p)             what the others in its cgroup
 *                                               (L = cpuLimitCores, u = its
 *                                               utilization) or on its host
 *                                               (L = cpuCount) take
 *     headroom  = min(L − others, c)           c = reported slots: a single-
 *                                               threaded slot uses one core
 *     whileBusy = p / busy                      the CPU it got while it had
 *                                               work (busy = N/c ÷ (1 + N/c),
 *                                               N = rps × mean latency)
 *     μ         = max(headroom, whileBusy) / k  req/s
 *
 * `whileBusy` is there for a greedy neighbour (a busy loop in the same
 * cgroup): it takes whatever the service leaves, so `L − others` is only what
 * the service used, i.e. μ would be the current rps, which falls when a
 * gateway sends less and never recovers (the queueing simulation starved
 * such a backend that way). Under fair share the service gets back its part
 * as soon as it has work, and `p / busy` measures that part.
 *
 * The service is CPU-bound when it uses most of its headroom
 * (CPU_BOUND_SHARE); only then does the load estimate take its service time
 * from μ (c / μ, load/endpoint-load.ts): an IO-bound service uses little CPU
 * per request, and its μ says nothing about how long a request waits.
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

export interface CpuEvidence {
  /** CPU per request, in core-milliseconds. */
  cpuPerRequestMs: number;
  /** Cores the service can get (max of its headroom and its rate while busy). */
  availableCores: number;
  /** Requests per second that CPU drains: availableCores / CPU per request. */
  throughputRps: number;
  /** The service uses most of the CPU it can get. */
  bound: boolean;
}

function positive(x: number | undefined): number | undefined {
  return typeof x === 'number' && Number.isFinite(x) && x > 0 ? x : undefined;
}

function share(x: number | undefined): number | undefined {
  return typeof x === 'number' && Number.isFinite(x) && x >= 0 ? Math.min(1, x) : undefined;
}

/**
 * The CPU evidence of one report, or undefined when it has none.
 * `slots` is the reported concurrencyLimit (undefined if none).
 */
export function cpuEvidence(report: MetricsReport, slots: number | undefined): CpuEvidence | undefined {
  const traffic = report.traffic;
  const rps = positive(traffic?.rps);
  const p = positive(report.process?.cpuCores);
  if (rps === undefined || p === undefined || p < MIN_PROCESS_CPU_CORES) return undefined;
  const windowMs = positive(traffic?.windowMs) ?? positive(report.intervalMs);
  if (windowMs === undefined || (rps * windowMs) / 1000 < MIN_CPU_COMPLETIONS) return undefined;

  let limit = positive(report.cgroup?.cpuLimitCores);
  let util = share(report.cgroup?.cpuUtilization);
  if (limit === undefined || util === undefined) {
    limit = positive(report.host?.cpuCount);
    util = share(report.host?.cpuUtilization);
  }
  if (limit === undefined || util === undefined) return undefined;

  const others = Math.max(0, util * limit - p);
  let headroom = limit - others;
  if (slots !== undefined && slots >= 1 && headroom > slots) headroom = slots;
  // The process used p: it can get at least that (figures sampled a few ms apart may disagree).
  if (!(headroom >= p)) headroom = p;
  let available = headroom;
  const ceiling = slots !== undefined && slots < limit ? slots : limit;
  const latencyMs = positive(traffic?.latencyMeanMs) ?? positive(traffic?.latencyP50Ms);
  if (latencyMs !== undefined) {
    const perSlot = (rps * latencyMs) / 1000 / (slots ?? 1);
    const busy = perSlot / (1 + perSlot);
    const whileBusy = p / busy;
    if (whileBusy > available) available = whileBusy < ceiling ? whileBusy : ceiling;
  }
  const cpuPerRequestMs = (p / rps) * 1000;
  const throughputRps = available / (p / rps);
  if (!(throughputRps > 0 && throughputRps < Infinity)) return undefined;
  return {
    cpuPerRequestMs,
    availableCores: available,
    throughputRps,
    bound: p >= CPU_BOUND_SHARE * headroom,
  };
}

/**
 * The CPU term of the load estimate: the last scheduled report's evidence
 * (an early report repeats the scheduled CPU figures, so it changes nothing
 * here), counted only while a report is fresh.
 */
export class CpuCapacity {
  private last: CpuEvidence | undefined;

  onScheduledReport(evidence: CpuEvidence | undefined): void {
    this.last = evidence;
  }

  /** The evidence in use: undefined without a fresh report (`fresh` false) or without evidence. */
  evidence(fresh: boolean): CpuEvidence | undefined {
    return fresh ? this.last : undefined;
  }

  /**
   * Service time for `capacity` slots, in ms: `capacity / μ` while the service
   * is CPU-bound (the queue ahead drains at μ), else undefined (the latency's
   * service time stands).
   */
  serviceTimeMs(fresh: boolean, capacity: number): number | undefined {
    const e = fresh ? this.last : undefined;
    return e !== undefined && e.bound ? (capacity * 1000) / e.throughputRps : undefined;
  }
}
