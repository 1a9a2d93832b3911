/**
 * Proof: when every backend is saturated, the gateway answers 503 with
 * Retry-After within the configured wait, holds a bounded queue, and its
 * memory stays flat.
 *
 * Two backends of 2 slots x 200 ms (10 req/s each). The gateway keeps at most
 * 2 requests outstanding per backend (maxInFlightPerBackend), lets 4 wait
 * (queueSize) for at most 300 ms (queueTimeoutMs). 16 closed-loop clients
 * ask far more than 20 req/s: most requests are shed.
 */
import v8 from 'node:v8';
import vm from 'node:vm';
import { eventually } from '../kit/fleet';
import { fleetGatewayOnEmbeddedBroker } from '../kit/gateway';
import { fire, ok } from '../kit/load';

const MAX_IN_FLIGHT_PER_BACKEND = 2;
const QUEUE_SIZE = 4;
const QUEUE_TIMEOUT_MS = 300;
/**
 * Scheduling slack on a busy 2-core machine, on top of the configured wait: a shed answer
 * is bounded, not fast (a queue that never timed out would hold it for the whole test).
 */
const SLACK_MS = 2_000;

// A real GC between measurements, so "memory flat" compares live heap, not garbage.
v8.setFlagsFromString('--expose-gc');
const gc = vm.runInNewContext('gc') as () => void;

const suite = fleetGatewayOnEmbeddedBroker({
  label: 'saturation',
  backends: ['a', 'b'].map((id) => ({ id, slots: 2, serviceMs: 200 })),
  gateway: {
    healthCheck: { path: '/health', intervalMs: 1000 },
    saturation: {
      maxInFlightPerBackend: MAX_IN_FLIGHT_PER_BACKEND,
      queueSize: QUEUE_SIZE,
      queueTimeoutMs: QUEUE_TIMEOUT_MS,
    },
  },
});

it('sheds with 503 + Retry-After within the configured wait, with bounded queue and flat memory', async () => {
  let maxQueued = 0;
  let maxInFlight = 0;
  const sampler = setInterval(() => {
    const s = suite.gw.snapshot();
    maxQueued = Math.max(maxQueued, s.saturationQueueLength);
    maxInFlight = Math.max(maxInFlight, s.inFlight);
  }, 5);

  const heapAfterRound: number[] = [];
  const rounds = [];
  try {
    for (let round = 0; round < 3; round++) {
      const r = await fire({ url: `${suite.gw.url}/work`, total: 300, concurrency: 16 });
      rounds.push(r);
      gc();
      heapAfterRound.push(process.memoryUsage().heapUsed);
    }
  } finally {
    clearInterval(sampler);
  }

  for (const r of rounds) {
    expect(r.errors).toBe(0);
    expect([...r.statuses.keys()].sort()).toEqual([200, 503]);
    expect(ok(r)).toBeGreaterThan(0);
    // Every shed request was answered within the configured wait (plus scheduling slack).
    expect(r.maxLatencyMs.get(503)!).toBeLessThan(QUEUE_TIMEOUT_MS + SLACK_MS);
    for (const f of r.failures) {
      expect(f.status).toBe(503);
      expect(f.headers['x-loadwise-error']).toBe('LW_GW_SATURATED');
      expect(Number(f.headers['retry-after'])).toBeGreaterThanOrEqual(1);
      expect(Number.isInteger(Number(f.headers['retry-after']))).toBe(true);
    }
  }
  expect(maxQueued).toBeLessThanOrEqual(QUEUE_SIZE);
  expect(maxInFlight).toBeLessThanOrEqual(2 * MAX_IN_FLIGHT_PER_BACKEND);
  expect(suite.gw.events.some((e) => e.name === 'saturation' && e.data['saturated'] === true)).toBe(
    true,
  );
  // 600 more shed requests after the first round add no live memory (bound: 5 MB of noise).
  expect(heapAfterRound[2]! - heapAfterRound[0]!).toBeLessThan(5 * 1024 * 1024);
  // Once the load stops, nothing is left waiting.
  await eventually(
    () => suite.gw.snapshot().saturationQueueLength === 0 && suite.gw.snapshot().inFlight === 0,
    5_000,
    'drained',
  );
});
