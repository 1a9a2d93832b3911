/**
 * Every backend killed (SIGKILL) under load, then restarted. While all are
 * gone, clients must get fast 503s with Retry-After, not hangs and not a
 * wait for a timeout; when they are back, traffic resumes by itself (no
 * operator, no gateway restart). Printed: answers during the outage by status
 * and code, the slowest of them, time until the first backend is out and
 * until traffic is served again after the restart.
 */
import { eventually } from '../kit/fleet';
import { eventAfter, openLoad, report, scale, sleep, tally, useSignedFleet } from '../kit/chaos';

const DOWN_MS = scale(2_000, 10_000);
const RATE = scale(60, 100);

const fleetOf = useSignedFleet({
  label: 'alldown',
  backends: ['a', 'b', 'c'].map((id) => ({ id, slots: 4, serviceMs: 10 })),
  gateway: { healthCheck: { path: '/health', intervalMs: 250 } },
});

it('all killed: fast 503 + Retry-After; all restarted: served again by itself', async () => {
  const { gw, fleet } = fleetOf();
  const load = openLoad({ url: `${gw.url}/work`, rate: RATE, durationMs: DOWN_MS + 30_000 });
  await sleep(1_000);
  const killedAt = Date.now();
  const killedAtLoad = load.now();
  await Promise.all(fleet.backends.map((b) => b.kill('SIGKILL')));
  // Out of rotation: every backend ejected or down.
  await eventually(
    () => gw.snapshot().backends.every((b) => b.state !== 'healthy'),
    10_000,
    'every backend out',
  );
  const allOutAtLoad = load.now();
  await sleep(DOWN_MS);
  const restartAtLoad = load.now();
  await Promise.all(fleet.backends.map((b) => b.restart()));
  const listeningAtLoad = load.now();
  await eventually(
    () => load.records.some((r) => r.startMs > listeningAtLoad && r.status === 200),
    20_000,
    'served again',
  );
  const servedAgainAtLoad = Math.min(
    ...load.records
      .filter((r) => r.startMs > listeningAtLoad && r.status === 200)
      .map((r) => r.endMs),
  );
  // Served again is the end of the first 200 after the restart: keep the load on for a
  // moment, or no request may have started after it, and "after" below would count
  // nothing (a race that fits this test's occasional "Expected > 0, received 0").
  await sleep(1_000);
  const records = await load.stop();
  const detecting = tally(records, killedAtLoad, allOutAtLoad);
  // Answered while every backend was known to be out (started after that, ended before the restart).
  const outage = tally(
    records.filter((r) => r.endMs < restartAtLoad),
    allOutAtLoad,
    restartAtLoad,
  );
  const after = tally(records, servedAgainAtLoad);
  report('all backends down', {
    downMs: DOWN_MS,
    timeUntilAllOutMs: Math.round(allOutAtLoad - killedAtLoad),
    firstOutMs: eventAfter(gw, killedAt, ['backend-ejected', 'backend-down']),
    answersWhileDetecting: detecting.failures,
    answersDuringOutage: outage.failures,
    with503RetryAfterDuringOutage: outage.with503RetryAfter,
    slowestAnswerDuringOutageMs: outage.maxLatencyMs,
    timeToServeAfterRestartMs: Math.round(servedAgainAtLoad - listeningAtLoad),
    failuresAfterRecovery: after.failures,
  });
  // Never a hang: every request got an answer.
  for (const r of records) expect(r.error).toBeUndefined();
  // Once every backend is known to be out: 503 with Retry-After, every one of them.
  expect(outage.sent).toBeGreaterThan(0);
  expect(outage.ok).toBe(0);
  expect(outage.with503RetryAfter).toBe(outage.sent);
  // Back by itself.
  expect(after.ok).toBeGreaterThan(0);
}, 120_000);
