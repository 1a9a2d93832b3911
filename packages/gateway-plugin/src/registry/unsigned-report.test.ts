import type { MetricsReport } from '@loadwise/protocol';
import { unsignedPenalty, unsignedPressure } from './unsigned-report';

const calm: MetricsReport = {
  v: 1,
  kind: 'metrics',
  backendId: 'a',
  epochMs: 1,
  seq: 1,
  ts: 1,
  intervalMs: 1000,
  state: 'online',
  host: { cpuUtilization: 0.2, memoryUtilization: 0.3, memoryAvailableBytes: 1e9 },
  queue: { inFlight: 2, queued: 0, source: { inFlight: 'tracker', queued: 'tracker' } },
  concurrencyLimit: 8,
  health: { verdict: 'up' },
};
const withPatch = (patch: Partial<MetricsReport>): MetricsReport => ({ ...calm, ...patch });

describe('what an unsigned report may do', () => {
  it('reads no pressure from a calm report: factor 1, never below', () => {
    expect(unsignedPressure(calm)).toBe(0);
    expect(unsignedPenalty(calm, 2)).toBe(1);
  });

  it.each<[string, Partial<MetricsReport>, number]>([
    ['CPU halfway past the threshold', { host: { ...calm.host, cpuUtilization: 0.925 } }, 0.5],
    ['memory full', { host: { ...calm.host, memoryUtilization: 1 } }, 1],
    [
      '4 queued on 8 slots',
      { queue: { inFlight: 8, queued: 4, source: { inFlight: 'tracker' } } },
      0.5,
    ],
    ['error rate 0.25', { traffic: { errorRate: 0.25 } }, 0.25],
    ['draining', { state: 'draining' }, 1],
    ['offline', { state: 'offline' }, 1],
    ['verdict down', { health: { verdict: 'down' } }, 1],
    ['verdict degraded', { health: { verdict: 'degraded' } }, 1],
  ])('%s: pressure %d', (_name, patch, pressure) => {
    expect(unsignedPressure(withPatch(patch))).toBeCloseTo(pressure, 10);
  });

  it('turns the worst claim into at most maxPenalty, whatever the figures', () => {
    const worst = withPatch({
      state: 'offline',
      health: { verdict: 'down' },
      host: { cpuUtilization: 1, memoryUtilization: 1, memoryAvailableBytes: 0 },
      queue: { inFlight: 1, queued: 1e9, source: { inFlight: 'tracker' } },
      concurrencyLimit: 1,
    });
    expect(unsignedPenalty(worst, 2)).toBe(2);
    expect(unsignedPenalty(worst, 1)).toBe(1);
    expect(unsignedPenalty(worst, 8)).toBe(8);
    expect(unsignedPenalty(withPatch({ traffic: { errorRate: 0.5 } }), 3)).toBeCloseTo(2, 10);
  });
});
