/**
 * Proof: a hung backend (SIGSTOP: its sockets stay open, nothing answers)
 * costs timeouts, is ejected, and does not collect a pile of requests.
 *
 * Three backends (4 slots x 10 ms), 12 closed-loop clients, 1,000 GETs,
 * requestTimeoutMs 400. After 200 requests, `b` is stopped while it has
 * requests in flight. Those time out (504: a request that timed out is not
 * retried, the backend may have acted on it); 3 consecutive failures eject
 * `b`. From then on `b` gets no new requests, so its in-flight count returns
 * to 0 and the failures stay bounded by what was in flight when it hung plus
 * what was sent before the ejection (at most 12 + 3 here, with 12 clients).
 */
import { eventually } from '../kit/fleet';
import { counter, fleetGatewayOnEmbeddedBroker } from '../kit/gateway';
import { failed, startLoad } from '../kit/load';

const CONCURRENCY = 12;
const CONSECUTIVE_FAILURES = 3;
const suite = fleetGatewayOnEmbeddedBroker({
  label: 'hang',
  backends: ['a', 'b', 'c'].map((id) => ({ id, slots: 4, serviceMs: 10 })),
  gateway: {
    requestTimeoutMs: 400,
    // Long ejection: b must stay out for the rest of the test.
    // No panic mode: a starved machine can fail a health check or probe of a or c too, and
    // panic would then route to the hung b again. This test is about b's pile-up, not panic.
    outlier: {
      consecutiveFailures: CONSECUTIVE_FAILURES,
      baseEjectionMs: 60_000,
      panicThresholdPercent: 0,
    },
    healthCheck: { path: '/health', intervalMs: 250, timeoutMs: 1_000 },
  },
  beforeClose: (fleet) => fleet.get('b').resume(),
});

it('SIGSTOP under load: timeouts, ejection, no pile-up', async () => {
  const load = startLoad({ url: `${suite.gw.url}/work`, total: 1_000, concurrency: CONCURRENCY });
  await eventually(() => load.result.sent >= 200, 15_000, '200 requests sent');
  await eventually(() => suite.gw.backend('b').inFlight > 0, 5_000, 'requests in flight on b');
  suite.fleet.get('b').pause();
  const requestsAtHang = suite.gw.backend('b').requestsTotal;

  await eventually(() => suite.gw.backend('b').state !== 'healthy', 10_000, 'b out of rotation');
  // Whatever took it out first (ejection, or the health check), the timeouts are counted.
  await eventually(
    async () =>
      (await counter(suite.gw, 'backend_errors_total', { backend: 'b', kind: 'timeout' })) >= 1,
    5_000,
    'timeouts counted',
  );
  const requestsAtEjection = suite.gw.backend('b').requestsTotal;

  const result = await load.done;
  expect(result.sent).toBe(1_000);
  expect(result.errors).toBe(0);
  // The failures are the timed-out requests (504), nothing else, and those on b are bounded.
  // A request on a or c may also pass 400 ms when the machine is starved (seen once in a
  // full run with other jobs on both cores): counted by backend, not charged to b.
  const failures = failed(result);
  expect(failures).toBeGreaterThan(0);
  expect([...result.statuses.keys()].filter((s) => s !== 200)).toEqual([504]);
  const timeouts = async (id: string): Promise<number> =>
    counter(suite.gw, 'backend_errors_total', { backend: id, kind: 'timeout' });
  const onB = await timeouts('b');
  expect(failures).toBe(onB + (await timeouts('a')) + (await timeouts('c')));
  expect(onB).toBeLessThanOrEqual(CONCURRENCY + CONSECUTIVE_FAILURES);
  // No pile-up: nothing new was sent to b after it went out, and nothing is left hanging on it.
  expect(suite.gw.backend('b').requestsTotal).toBe(requestsAtEjection);
  expect(requestsAtEjection - requestsAtHang).toBeLessThanOrEqual(
    CONCURRENCY + CONSECUTIVE_FAILURES,
  );
  await eventually(() => suite.gw.backend('b').inFlight === 0, 5_000, 'no request left on b');
});
