/**
 * The fresh report's penalty (load/penalties.ts): CPU and memory near
 * saturation and a `degraded` verdict, computed once per scheduled report.
 * These are global signals: every gateway reads the same report and reacts to
 * it at the same time. If each applied the full penalty, G gateways would move
 * G times the traffic one gateway would, leave the backend idle for an
 * interval, then all come back: herding, measured with three gateways in
 * strategies/queueing-sim.test.ts. So each gateway applies the part of the
 * penalty that matches its share of the backend's traffic (its mean in-flight
 * / the agent's mean outstanding, load/hidden-load.ts): the reactions add up to
 * one gateway's. A lone gateway has share 1 and the full penalty; load that is
 * not requests (a CPU hog) does not dilute the share. The CPU term is off by
 * default (`cpuPressurePenalty` 0) and applies only to a report without the
 * service's process CPU: with it, the CPU is a capacity in the expected wait
 * instead (load/cpu-capacity.ts). `down` and non-`online` states are not
 * scaled: they are eligibility, not load.
 */
import type { ResolvedLoadOptions } from './load-options';
import type { LoadPenalty } from './penalties';
import type { ReportDigest } from './report-digest';

export class ReportPenalty implements LoadPenalty {
  /** Factor of the last scheduled report; counts only while a report is fresh. */
  private last = 1;

  constructor(private readonly o: ResolvedLoadOptions) {}

  onReport(d: ReportDigest, share: number): void {
    this.last = reportFactor(this.o, d, share);
  }

  factor(_nowMs: number, r: ReportDigest | undefined): number {
    return r !== undefined ? this.last : 1;
  }
}

export function reportFactor(o: ResolvedLoadOptions, d: ReportDigest, share: number): number {
  if (d.verdict === 'down' || d.state !== 'online') return o.maxPenaltyFactor;
  let raw = 1;
  // With the process's CPU the CPU is a capacity (load/cpu-capacity.ts), not a penalty: a
  // neighbour that keeps the cgroup at 100% would otherwise penalise, for good, a backend that
  // still has capacity (docs/strategies.md, "CPU as capacity"). Without it the penalty is off
  // unless configured: a one-second-old figure moved traffic between identical backends near
  // saturation in turn (docs/strategies.md, "The pressure penalty"); the latency judges.
  const cpuIsPenalty = !d.processCpuReported && o.cpuPressurePenalty > 0;
  if (cpuIsPenalty && d.cpuUtilization > o.cpuPressureThreshold) {
    raw *=
      1 +
      (o.cpuPressurePenalty * (d.cpuUtilization - o.cpuPressureThreshold)) /
        (1 - o.cpuPressureThreshold);
  }
  if (d.memoryUtilization > o.memoryPressureThreshold) {
    raw *=
      1 +
      (o.memoryPressurePenalty * (d.memoryUtilization - o.memoryPressureThreshold)) /
        (1 - o.memoryPressureThreshold);
  }
  // The same for the agent's `degraded` when CPU alone made it (its causes): the cgroup a
  // neighbour keeps full is degraded by the agent's threshold for as long as the neighbour runs,
  // and a fleet near saturation crosses it in turn. It is the CPU signal again: it counts only
  // where the CPU penalty does (a report without process CPU, cpuPressurePenalty above 0).
  if (d.verdict === 'degraded' && !(d.degradedByCpuOnly && !cpuIsPenalty)) {
    raw *= o.degradedPenalty;
  }
  const factor = 1 + (raw - 1) * share;
  return factor < o.maxPenaltyFactor ? factor : o.maxPenaltyFactor;
}
