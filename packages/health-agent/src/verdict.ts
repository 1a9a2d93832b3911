import type { HealthReport, KnownDegradedCause, MetricsReport } from '@loadwise/protocol';
import type { ProbeResult } from './probe';

export interface Thresholds {
  /** Host or cgroup CPU utilization at or above this is degraded (0..1, default 0.9). */
  cpuUtilization: number;
  /** Host or cgroup memory utilization at or above this is degraded (0..1, default 0.9). */
  memoryUtilization: number;
  /** A tracker queue at its maxQueue bound is degraded (default true). */
  queueFull: boolean;
}

export const DEFAULT_THRESHOLDS: Thresholds = {
  cpuUtilization: 0.9,
  memoryUtilization: 0.9,
  queueFull: true,
};

type Measured = Pick<MetricsReport, 'host' | 'cgroup' | 'queue'>;

/**
 * 'down' when the local probe fails or the watched process is gone (the agent
 * is alive but the service is not); 'degraded' when a threshold is crossed;
 * else 'up'. Reasons are joined, most severe first, and cut to the protocol's
 * 200 characters.
 */
export function healthVerdict(
  m: Measured,
  t: Thresholds,
  probe: ProbeResult | undefined,
  downReasons: readonly string[],
  maxQueue: number | undefined,
): HealthReport {
  const report: HealthReport = { verdict: 'up' };
  if (probe?.latencyMs !== undefined) report.probeLatencyMs = probe.latencyMs;
  if (probe?.status !== undefined) report.probeStatus = probe.status;
  const down = [...downReasons];
  if (probe && !probe.ok) down.unshift(probe.reason ?? 'probe failed');
  if (down.length > 0) {
    report.verdict = 'down';
    report.reason = down.join('; ').slice(0, 200);
    return report;
  }
  const degraded: string[] = [];
  const causes = new Set<KnownDegradedCause>();
  const add = (cause: KnownDegradedCause, reason: string): void => {
    causes.add(cause);
    degraded.push(reason);
  };
  const pct = (x: number): string => `${Math.round(x * 100)}%`;
  if (m.host.cpuUtilization >= t.cpuUtilization)
    add('cpu', `host CPU ${pct(m.host.cpuUtilization)}`);
  if (m.cgroup?.cpuUtilization !== undefined && m.cgroup.cpuUtilization >= t.cpuUtilization) {
    add('cpu', `cgroup CPU ${pct(m.cgroup.cpuUtilization)}`);
  }
  if (m.host.memoryUtilization >= t.memoryUtilization)
    add('memory', `host memory ${pct(m.host.memoryUtilization)}`);
  if (
    m.cgroup?.memoryUtilization !== undefined &&
    m.cgroup.memoryUtilization >= t.memoryUtilization
  ) {
    add('memory', `cgroup memory ${pct(m.cgroup.memoryUtilization)}`);
  }
  // The bound as the tracker's document gave it: only a count (`maxQueue: 0.5` or `true` from
  // an app's own endpoint made one queued request "queue full").
  const bound = Number.isSafeInteger(maxQueue) && maxQueue! > 0 ? maxQueue : undefined;
  if (t.queueFull && bound !== undefined && (m.queue?.queued ?? 0) >= bound) {
    add('queue', `request queue full (${m.queue?.queued})`);
  }
  if (degraded.length > 0) {
    report.verdict = 'degraded';
    report.reason = degraded.join('; ').slice(0, 200);
    report.causes = [...causes];
  }
  return report;
}
