/**
 * Reads never change an estimate: what a backend scores at time t depends only
 * on the writes it received (starts, ends, reports, admit), never on how often
 * or when the balancer, a strategy or the status endpoint looked at it.
 */
import type { MetricsReport } from '@loadwise/protocol';
import { createLoadCohort } from './cohort';
import { createEndpointLoad } from './endpoint-load';
import type { LoadEstimate } from './types';

function report(seq: number, patch: Partial<MetricsReport> = {}): MetricsReport {
  return {
    v: 1,
    kind: 'metrics',
    backendId: 'b1',
    epochMs: 1,
    seq,
    ts: 0,
    intervalMs: 1000,
    state: 'online',
    host: { cpuUtilization: 0.95, memoryUtilization: 0.3, memoryAvailableBytes: 1e9 },
    health: { verdict: 'degraded' },
    ...patch,
  };
}

/** One write at a time, applied alike to twins; `peer` is another member of the same cohort. */
type Step = (load: LoadEstimate, peer: LoadEstimate) => void;

const start =
  (t: number, n = 1): Step =>
  (l) => {
    for (let i = 0; i < n; i++) l.onRequestStart(t);
  };
const end =
  (t: number, latencyMs: number, ok = true, overloaded = false): Step =>
  (l) =>
    l.onRequestEnd(t, latencyMs, ok, overloaded);

const STEPS: Step[] = [
  (l, p) => {
    l.admit(0);
    p.admit(0);
  },
  start(0, 3),
  (_, p) => {
    p.onRequestStart(0);
    p.onRequestEnd(5, 30, true);
  },
  end(10, 10),
  end(12, 25),
  (l, p) => {
    l.onReport(report(1, { queue: { inFlight: 4, queued: 2, source: {} } }), 100);
    p.onReport(report(1, { traffic: { rps: 200, latencyMeanMs: 20 } }), 100);
  },
  start(120, 5),
  end(130, 3, false),
  end(140, 1, true, true),
  (l) => l.onUnsignedReport(2, 1000, 150),
  end(300, 40),
  (l, p) => {
    l.onReport(
      report(2, {
        queue: { inFlight: 6, queued: 4, source: {} },
        traffic: { rps: 300, latencyMeanMs: 20, errorRate: 0.2 },
        early: true,
      }),
      400,
    );
    p.onReport(report(2, { traffic: { rps: 400, latencyMeanMs: 20 } }), 400);
  },
  end(450, 60),
  start(500, 2),
  (l) =>
    l.onReport(
      report(3, {
        queue: { inFlight: 2, source: {} },
        traffic: { rps: 100, latencyMeanMs: 15 },
        host: { cpuUtilization: 0.2, memoryUtilization: 0.95, memoryAvailableBytes: 1e9 },
      }),
      1100,
    ),
  end(1200, 12),
  (l) => l.onRequestCancel(1250),
  end(20_000, 80, false),
];

/** Every read the balancer, a strategy or the status endpoint makes. */
function readEverything(l: LoadEstimate, t: number): void {
  void l.inFlight;
  l.expectedWaitMs(t);
  l.slowStartFactor(t);
  l.snapshot(t);
  l.hasFreshReport(t);
  l.reportAgeMs(t);
  l.latencyMs(t);
  l.reportVerdict(t);
  l.reportState(t);
  l.reportSaturated(t);
}

const READ_TIMES = [0, 1, 11, 130, 400, 401, 1100, 1300, 2000, 5000, 14_999, 15_000, 60_000, 1e7];

describe('reads never mutate an estimate', () => {
  it.each([
    { name: 'alone', withCohort: false },
    { name: 'in a cohort', withCohort: true },
  ])('$name: reads at any time leave it equal to a twin that was never read', ({ withCohort }) => {
    const make = () => {
      const cohort = withCohort ? createLoadCohort() : undefined;
      const opts = { slowStartMs: 15_000, decayMs: 1000, ...(cohort ? { cohort } : {}) };
      return { load: createEndpointLoad(opts), peer: createEndpointLoad(opts) };
    };
    const read = make();
    const twin = make();
    for (const step of STEPS) {
      step(read.load, read.peer);
      step(twin.load, twin.peer);
      // Many reads, at times before, at and after the writes, on the estimate and its peer.
      for (let rep = 0; rep < 3; rep++) {
        for (const t of READ_TIMES) {
          readEverything(read.load, t);
          readEverything(read.peer, t);
        }
      }
    }
    for (const t of READ_TIMES) {
      expect(read.load.snapshot(t)).toEqual(twin.load.snapshot(t));
      expect(read.load.expectedWaitMs(t)).toBe(twin.load.expectedWaitMs(t));
      expect(read.peer.snapshot(t)).toEqual(twin.peer.snapshot(t));
    }
  });
});
