/**
 * `balancer.snapshot()`: the state the status endpoint serves and the metrics
 * gauges read at scrape time. Built on demand, never per request.
 */
import type { MetricsReport } from '@loadwise/protocol';
import type { Balancer } from './balancer';
import type {
  BackendSnapshot,
  BalancerSnapshot,
  BackendStateName,
  ReportedLoad,
} from './observability';
import type { Backend } from './registry/backend';

const STATE_NAMES: Record<ReturnType<Backend['conditionNow']>, BackendStateName> = {
  up: 'healthy',
  down: 'down',
  ejected: 'ejected',
  draining: 'draining',
};

function reported(r: MetricsReport | undefined, b: Backend): ReportedLoad | null {
  if (!r) return null;
  const cg = r.cgroup;
  return {
    cpuUtilization: cg?.cpuUtilization ?? r.host.cpuUtilization,
    memoryUtilization: cg?.memoryUtilization ?? r.host.memoryUtilization,
    inFlight: r.queue?.inFlight ?? null,
    queued: r.queue?.queued ?? null,
    concurrencyLimit: r.concurrencyLimit ?? null,
    verdict: r.health.verdict,
    agentState: b.agentState,
  };
}

export function buildSnapshot(lb: Balancer): BalancerSnapshot {
  const nowMs = lb.now();
  const counts = lb.traffic.counts(nowMs);
  const backends: BackendSnapshot[] = [];
  // A backend that moved or was forgotten with requests on it has left the registry, not
  // the gateway: its requests are still being proxied (4 of 8 went missing from the total).
  let inFlight = lb.retiredInFlight();
  for (const b of lb.registry.backends.values()) {
    const condition = b.conditionNow();
    const load = b.load;
    const windowRequests = counts.perBackend.get(b.id) ?? 0;
    inFlight += load.inFlight;
    const latency = load.latencyMs(nowMs);
    const age = load.reportAgeMs(nowMs);
    const loadSnap = load.snapshot(nowMs);
    backends.push({
      id: b.id,
      url: b.target.href,
      origin: b.origin,
      weight: b.weight,
      state: STATE_NAMES[condition],
      stateReason:
        condition === 'up'
          ? null
          : condition === 'ejected'
            ? `${b.consecutiveFailures} consecutive failures`
            : condition === 'draining'
              ? 'agent reported draining'
              : b.downReason(),
      inFlight: load.inFlight,
      latencyMs: latency ?? null,
      expectedWaitMs: loadSnap.expectedWaitMs,
      serviceTimeSource: loadSnap.serviceTimeSource,
      cpuThroughputRps: loadSnap.cpuThroughputRps ?? null,
      reportAgeMs: age ?? null,
      reportFresh: load.hasFreshReport(nowMs),
      signedBy: b.signedBy ?? null,
      lastReport: reported(b.lastReport, b),
      trafficShare: counts.total > 0 ? windowRequests / counts.total : 0,
      windowRequests,
      slowStartFactor: load.slowStartFactor(nowMs),
      ejections: b.ejectionsTotal,
      requestsTotal: b.requests,
      failuresTotal: b.failures,
    });
  }
  return {
    takenAt: new Date(lb.wallNow()).toISOString(),
    service: lb.options.service ?? null,
    strategy: lb.strategy.name,
    panic: lb.registry.panic,
    saturationQueueLength: lb.queue.length,
    inFlight,
    openWebSockets: lb.flow.upgrades.openCount,
    openStreams: lb.flow.lane?.open ?? 0,
    requestBufferBytes: lb.flow.bufferedBytes,
    eventLoopDelayMs: lb.overload ? lb.overload.eventLoopDelayMs : null,
    overloaded: (lb.overload?.overloaded ?? false) || (lb.acceptQueue?.shedding ?? false),
    acceptQueueDepth: lb.acceptQueue?.available ? lb.acceptQueue.depth : null,
    brokerConnected: lb.brokerConnected,
    trafficWindowMs: lb.traffic.windowMs,
    backends,
  };
}
