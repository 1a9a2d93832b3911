/**
 * What an unsigned report may do when the balancer allows them
 * (`allowUnsigned`): make its backend look busier, within a bound.
 *
 * Anyone who can publish on the broker can forge an unsigned report, so
 * nothing in it may take a backend out of rotation (a `draining` or `offline`
 * state, a `down` verdict; ejection is local anyway), change what the load
 * model believes about its capacity or service time, or make it look less
 * loaded than the gateway's own signals say. It yields one number: a factor
 * in [1, maxPenalty] on the backend's expected wait (load-aware strategy),
 * for as long as a report of its interval counts (EndpointLoad
 * onUnsignedReport). The worst a forger achieves is what a genuine report of
 * a saturated backend would do: the backend keeps taking traffic, less of it,
 * as soon as its peers' expected waits are more than `maxPenalty` times its own.
 */
import type { MetricsReport } from '@loadwise/protocol';
import {
  DEFAULT_CPU_PRESSURE_THRESHOLD,
  DEFAULT_MEMORY_PRESSURE_THRESHOLD,
} from '../load/load-options';
import { DEFAULTS } from '../options';

/** Default bound of the factor (options.ts DEFAULTS). */
export const DEFAULT_UNSIGNED_MAX_PENALTY = DEFAULTS.unsignedMaxPenalty;

function ratio(x: number | undefined): number {
  return typeof x === 'number' && x > 0 ? (x < 1 ? x : 1) : 0;
}

function above(x: number, threshold: number): number {
  return x > threshold ? (x - threshold) / (1 - threshold) : 0;
}

/**
 * Pressure in [0, 1] read off the report: CPU or memory beyond the load
 * model's pressure thresholds, requests waiting relative to the slots, the
 * error rate, and 1 for anything but `online` and `up` (a claim that would
 * exclude the backend if signed counts here as "as busy as allowed").
 */
export function unsignedPressure(report: MetricsReport): number {
  const cg = report.cgroup;
  const cpu = Math.max(ratio(report.host?.cpuUtilization), ratio(cg?.cpuUtilization));
  const mem = Math.max(ratio(report.host?.memoryUtilization), ratio(cg?.memoryUtilization));
  let pressure = Math.max(
    above(cpu, DEFAULT_CPU_PRESSURE_THRESHOLD),
    above(mem, DEFAULT_MEMORY_PRESSURE_THRESHOLD),
    ratio(report.traffic?.errorRate),
  );
  const q = report.queue;
  const waiting = (q?.queued ?? 0) + (q?.acceptBacklog ?? 0);
  if (waiting > 0) {
    const slots = Math.max(1, report.concurrencyLimit ?? q?.inFlight ?? 1);
    pressure = Math.max(pressure, ratio(waiting / slots));
  }
  if (report.state !== 'online' || report.health?.verdict !== 'up') pressure = 1;
  return pressure;
}

/** The factor on the expected wait: 1 + (maxPenalty − 1) × pressure, always in [1, maxPenalty]. */
export function unsignedPenalty(report: MetricsReport, maxPenalty: number): number {
  const p = unsignedPressure(report);
  const factor = 1 + (maxPenalty - 1) * (p >= 0 && p <= 1 ? p : 1);
  return factor >= 1 && factor <= maxPenalty ? factor : maxPenalty;
}
