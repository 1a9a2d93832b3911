/**
 * A backend in a crash loop under load: its real process is SIGKILLed and
 * restarted again and again (a bad deploy, an OOM killer). Requests in
 * flight on it die with it and are retried elsewhere (GETs); each death is
 * noticed, each restart brings it back through slow start (an ejection does
 * not hold a restarted backend out: health/outlier-detector.ts), and when the
 * loop stops it serves again by itself. Printed per cycle: time until it was
 * out of rotation, time until it was marked up after listening again.
 */
import { eventually } from '../kit/fleet';
import { eventAfter, openLoad, report, scale, sleep, tally, useSignedFleet } from '../kit/chaos';

const CYCLES = scale(2, 10);
const DOWN_MS = scale(500, 2_000);
const UP_MS = scale(1_000, 4_000);
const RATE = scale(60, 100);

const fleetOf = useSignedFleet({
  label: 'crashloop',
  backends: ['a', 'b', 'c'].map((id) => ({ id, slots: 4, serviceMs: 10 })),
  gateway: {
    outlier: { consecutiveFailures: 3 },
    healthCheck: { path: '/health', intervalMs: 250 },
    load: { slowStartMs: scale(2_000, 5_000) },
  },
});

it(
  'SIGKILL and restart, again and again: few client errors, back by itself',
  async () => {
    const { gw, fleet } = fleetOf();
    const b = fleet.get('b');
    const load = openLoad({
      url: `${gw.url}/work`,
      rate: RATE,
      durationMs: 1_000 + CYCLES * (DOWN_MS + UP_MS + 5_000) + 15_000,
    });
    await sleep(1_000);
    const cycles: Array<{ outMs: number | null; upMs: number | null }> = [];
    for (let i = 0; i < CYCLES; i++) {
      const killedAt = Date.now();
      await b.kill('SIGKILL');
      await sleep(DOWN_MS);
      await b.restart();
      const listeningAt = Date.now();
      await sleep(UP_MS);
      // Up again before the next crash (on a slow machine coming back can take longer than
      // UP_MS): killing a backend still down changes nothing for the gateway to notice.
      await eventually(() => gw.backend('b').state === 'healthy', 10_000, `b up (cycle ${i})`);
      cycles.push({
        outMs: eventAfter(gw, killedAt, ['backend-ejected', 'backend-down'], 'b'),
        upMs: eventAfter(gw, listeningAt, ['backend-up', 'backend-restored'], 'b'),
      });
    }
    const loopEndAtLoad = load.now();
    await eventually(
      () =>
        gw.backend('b').state === 'healthy' &&
        load.records.some((r) => r.startMs > loopEndAtLoad && r.servedBy === 'b'),
      20_000,
      'b serving after the loop',
    );
    const records = await load.stop();
    const t = tally(records);
    report('crash loop', {
      cycles: CYCLES,
      downMs: DOWN_MS,
      upMs: UP_MS,
      perCycle: cycles,
      ejections: gw.backend('b').ejections,
      sent: t.sent,
      failures: t.failures,
      servedBy: t.servedBy,
    });
    // Every request was answered; what failed is what died with b mid-response (not retryable
    // once headers were sent) or found no backend: a small share, bounded loosely.
    for (const r of records) expect(r.error).toBeUndefined();
    expect(t.sent - t.ok).toBeLessThanOrEqual(Math.ceil(t.sent * 0.02));
    // It was noticed every time, and served between crashes.
    for (const c of cycles) expect(c.outMs).not.toBeNull();
    expect(t.servedBy['b'] ?? 0).toBeGreaterThan(0);
  },
  scale(180_000, 600_000),
);
