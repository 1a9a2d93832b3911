/**
 * With default saturation options, a backend whose agent reports its
 * concurrency limit is saturated at that many requests and as many queued in
 * it (reportedBound): the rest wait in the gateway's bounded, timed queue.
 * Bounded by the pool alone (256), three backends of 8 slots at twice their
 * capacity held 256 requests each, 248 queued inside each backend where no
 * timeout of the gateway's reached them, and the first 503 came after 7 s.
 *
 * Two backends of 2 slots x 200 ms, their agents reporting a limit of 2 (the
 * backends' own tracker says so); 40 closed-loop clients.
 */
import { reportedBound } from '../../packages/gateway-plugin/src/balancer';
import { eventually } from '../kit/fleet';
import { fleetGatewayOnEmbeddedBroker } from '../kit/gateway';
import { fire, ok, startLoad } from '../kit/load';

const suite = fleetGatewayOnEmbeddedBroker({
  label: 'saturation-reported',
  backends: ['a', 'b'].map((id) => ({ id, slots: 2, serviceMs: 200 })),
  gateway: { healthCheck: { path: '/health', intervalMs: 1000 } },
});

it("keeps first attempts at the reported slots and as many again while the report says full; the rest wait in the gateway's queue", async () => {
  await eventually(
    () => suite.gw.snapshot().backends.every((b) => b.lastReport?.concurrencyLimit === 2),
    10_000,
    'reported limits',
  );
  // Full first, by the agents' own account (requests waiting in each backend): the bound
  // holds only while the report agrees, so that requests the agent does not count (long
  // polls left out of its tracker) never lock out a backend with free slots.
  const background = startLoad({ url: `${suite.gw.url}/work`, total: 10_000, concurrency: 10 });
  try {
    await eventually(
      () => suite.gw.snapshot().backends.every((b) => (b.lastReport?.queued ?? 0) >= 1),
      10_000,
      'reports saying full',
    );
    let most = 0;
    let queued = 0;
    const sampler = setInterval(() => {
      const s = suite.gw.snapshot();
      for (const b of s.backends) most = Math.max(most, b.inFlight);
      queued = Math.max(queued, s.saturationQueueLength);
    }, 5);
    try {
      const r = await fire({ url: `${suite.gw.url}/work`, total: 60, concurrency: 30 });
      expect(r.errors).toBe(0);
      expect(ok(r)).toBeGreaterThan(0);
    } finally {
      clearInterval(sampler);
    }
    // Before: up to 20 on each (the pool's 256 never reached), none waiting in the gateway.
    expect(most).toBeLessThanOrEqual(reportedBound(2));
    expect(queued).toBeGreaterThan(0);
  } finally {
    await background.stop();
  }
  await eventually(() => suite.gw.snapshot().inFlight === 0, 10_000, 'drained');
});
