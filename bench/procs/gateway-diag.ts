/**
 * Diagnostics a Node gateway reports after a run (scenario 8 asks why Node
 * gateways grow tails): event-loop delay percentiles and time spent in GC.
 */
import { monitorEventLoopDelay, PerformanceObserver } from 'node:perf_hooks';

export interface GatewayDiag {
  eventLoopDelayP50Ms: number;
  eventLoopDelayP99Ms: number;
  eventLoopDelayMaxMs: number;
  gcCount: number;
  gcTotalMs: number;
  gcMaxMs: number;
}

export function startDiag(): { reset(): void; read(): GatewayDiag } {
  const eld = monitorEventLoopDelay({ resolution: 5 });
  eld.enable();
  let gcCount = 0;
  let gcTotalMs = 0;
  let gcMaxMs = 0;
  const obs = new PerformanceObserver((list) => {
    for (const e of list.getEntries()) {
      gcCount++;
      gcTotalMs += e.duration;
      if (e.duration > gcMaxMs) gcMaxMs = e.duration;
    }
  });
  obs.observe({ entryTypes: ['gc'] });
  const ms = (ns: number): number => Math.round(ns / 1e4) / 100;
  return {
    reset() {
      eld.reset();
      gcCount = 0;
      gcTotalMs = 0;
      gcMaxMs = 0;
    },
    read() {
      return {
        eventLoopDelayP50Ms: ms(eld.percentile(50)),
        eventLoopDelayP99Ms: ms(eld.percentile(99)),
        eventLoopDelayMaxMs: ms(eld.max),
        gcCount,
        gcTotalMs: Math.round(gcTotalMs * 10) / 10,
        gcMaxMs: Math.round(gcMaxMs * 10) / 10,
      };
    },
  };
}
