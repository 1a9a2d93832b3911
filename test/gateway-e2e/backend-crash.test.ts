/**
 * Proof: a backend killed with SIGKILL under load costs no idempotent GET,
 * is taken out of rotation within a second, and after a restart on the same
 * port comes back through slow start.
 *
 * Three backends (4 slots x 10 ms); 12 closed-loop clients send 1,200 GETs,
 * enough to keep every backend busy. After 200 requests, at a moment when
 * `b` has requests in flight, it is SIGKILLed: those are reset and
 * new connections are refused; each such failure is retried on another
 * backend, and 3 consecutive failures eject it (outlier.consecutiveFailures).
 */
import { eventually } from '../kit/fleet';
import { counter, fleetGatewayOnEmbeddedBroker } from '../kit/gateway';
import { fire, failed, startLoad } from '../kit/load';

const SLOW_START_MS = 2_000;
const BASE_EJECTION_MS = 2_000;
const suite = fleetGatewayOnEmbeddedBroker({
  label: 'crash',
  backends: ['a', 'b', 'c'].map((id) => ({ id, slots: 4, serviceMs: 10 })),
  gateway: {
    outlier: { consecutiveFailures: 3, baseEjectionMs: BASE_EJECTION_MS },
    healthCheck: { path: '/health', intervalMs: 250, timeoutMs: 500 },
    load: { slowStartMs: SLOW_START_MS },
  },
});

it('SIGKILL under load: zero failed GETs, out of rotation within a second', async () => {
  const b = suite.fleet.get('b');
  const load = startLoad({ url: `${suite.gw.url}/work`, total: 1_200, concurrency: 12 });
  await eventually(() => load.result.sent >= 200, 15_000, '200 requests sent');
  // Kill while b has requests in flight: the crash must cost them nothing.
  await eventually(() => suite.gw.backend('b').inFlight > 0, 5_000, 'requests in flight on b');

  const killedAtMs = Date.now();
  await b.kill('SIGKILL');
  // Out of rotation: ejected by passive detection, or down by the active check / the agent's verdict.
  await eventually(() => suite.gw.backend('b').state !== 'healthy', 5_000, 'b out of rotation');
  const out = suite.gw.events.find(
    (e) => (e.name === 'backend-ejected' || e.name === 'backend-down') && e.data['id'] === 'b',
  );
  expect(out).toBeDefined();
  // Failures arrive within milliseconds under this load: 3 s is the margin for a machine
  // starved for a second or two (the jest process measures, and it shares both cores).
  expect(out!.atMs - killedAtMs).toBeLessThan(3_000);

  const result = await load.done;
  expect(result.sent).toBe(1_200);
  expect(result.errors).toBe(0);
  expect(failed(result)).toBe(0);
  // The failures were real (requests were in flight on b), and every one was retried elsewhere.
  const errorsOnB = await counter(suite.gw, 'backend_errors_total', { backend: 'b' });
  expect(errorsOnB).toBeGreaterThan(0);
  expect(await counter(suite.gw, 'retries_total', { backend: 'b' })).toBe(errorsOnB);
});

it('after a downtime longer than the ramp, a restarted backend comes back through slow start', async () => {
  const b = suite.fleet.get('b');
  expect(b.process.running).toBe(false);
  // A realistic downtime: the ejection expires while b is still dead (it stays
  // out, down by its agent's verdict and the health check), and longer than a
  // slow-start ramp passes. The ramp must start when b is routable again, not
  // when one of the reasons to keep it out went away.
  await eventually(
    () => suite.gw.backend('b').state === 'down',
    BASE_EJECTION_MS + 5_000,
    'ejection over',
  );
  await new Promise((r) => setTimeout(r, SLOW_START_MS + 500));
  expect(suite.gw.backend('b').state).toBe('down');

  // Restart on the same port: re-admitted, ramping up (slow start), then served again.
  const restoredAfter = suite.gw.events.length;
  await b.restart();
  await eventually(() => suite.gw.backend('b').state === 'healthy', 10_000, 'b healthy again');
  const back = suite.gw.events
    .slice(restoredAfter)
    .find(
      (e) => (e.name === 'backend-up' || e.name === 'backend-restored') && e.data['id'] === 'b',
    );
  expect(back).toBeDefined();
  expect(suite.gw.backend('b').slowStartFactor).toBeLessThan(1);
  // 12 clients need every backend's slots: as the ramp proceeds, b takes its part again.
  const rampShares: number[] = [];
  await eventually(
    async () => {
      const round = await fire({ url: `${suite.gw.url}/work`, total: 150, concurrency: 12 });
      expect(failed(round)).toBe(0);
      rampShares.push((round.servedBy.get('b') ?? 0) / 150);
      return rampShares[rampShares.length - 1]! > 0.1;
    },
    SLOW_START_MS + 5_000,
    'b serves again',
  );
  await eventually(
    () => suite.gw.backend('b').slowStartFactor === 1,
    SLOW_START_MS + 5_000,
    'slow start ends',
  );
}, 45_000);
