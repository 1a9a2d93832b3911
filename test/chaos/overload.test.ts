/**
 * Overload is not failure, end to end: three real backends whose
 * trackRequests() queue is bounded (2 slots × 50 ms = 40 req/s each, 120
 * together, 4 waiting at most, then 503 + Retry-After), with their real
 * agents, under open-loop load at twice the fleet's capacity, with the
 * default outlier settings (failOn5xx, 5 consecutive failures). Nobody may be
 * ejected: every backend stays busy, and the clients get the backends' 503s
 * with Retry-After for the excess. Figures (throughput against the 120 req/s
 * capacity, 503s) are printed, not asserted: the machine is shared.
 */
import { openLoad, report, scale, tally, useSignedFleet } from '../kit/chaos';
import { everyBackendHealthy } from '../kit/gateway';

const SLOTS = 2;
const SERVICE_MS = 50;
const CAPACITY_RPS = 3 * SLOTS * (1000 / SERVICE_MS);
const DURATION_MS = scale(2_000, 30_000);

const fleetOf = useSignedFleet({
  label: 'overload',
  backends: ['a', 'b', 'c'].map((id) => ({
    id,
    slots: SLOTS,
    serviceMs: SERVICE_MS,
    maxQueue: 4,
  })),
});

it('2x overload: nobody ejected, the excess gets 503 + Retry-After', async () => {
  const gw = fleetOf().gw;
  const load = openLoad({ url: `${gw.url}/work`, rate: 2 * CAPACITY_RPS, durationMs: DURATION_MS });
  const records = await load.done;
  const t = tally(records);
  const ejected = gw.events.filter((e) => e.name === 'backend-ejected');
  report('overload 2x', {
    capacityRps: CAPACITY_RPS,
    offeredRps: 2 * CAPACITY_RPS,
    okRps: t.okPerSec,
    sent: t.sent,
    ok: t.ok,
    failures: t.failures,
    with503RetryAfter: t.with503RetryAfter,
    servedBy: t.servedBy,
    ejections: ejected.length,
    maxLatencyMs: t.maxLatencyMs,
  });
  expect(ejected).toEqual([]);
  // Healthy (waited for: a probe starved by the overload can report one "down" that the
  // next report ends; an ejection would have stayed, and is checked just above and below).
  await everyBackendHealthy(gw);
  for (const b of gw.snapshot().backends) {
    expect(b.ejections).toBe(0);
    // Every backend kept serving its share.
    expect(t.servedBy[b.id] ?? 0).toBeGreaterThan(0);
  }
  // What the clients did not get served is the backends' own "full": 503 + Retry-After.
  expect(t.ok).toBeGreaterThan(0);
  expect(t.with503RetryAfter).toBe(t.sent - t.ok);
}, 120_000);
