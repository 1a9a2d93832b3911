/**
 * One agent's clock runs minutes ahead (a host without NTP). Its signed
 * reports carry timestamps outside the gateway's clock-skew window
 * (maxClockSkewMs, 30 s by default): they are dropped as LW_PROTO_CLOCK_SKEW
 * and counted, and the backend stays routable on the gateway's local signals
 * (README failure semantics: "agent dies: metrics go stale; the backend stays
 * routable"). The real agent CLI runs with its clock moved by a preloaded
 * module (NODE_OPTIONS=--require), nothing else about it changes.
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { eventually } from '../kit/fleet';
import { counter } from '../kit/gateway';
import { openLoad, report, scale, sleep, tally, useSignedFleet } from '../kit/chaos';

const SKEW_MS = 5 * 60_000;
const RUN_MS = scale(2_000, 20_000);

const dir = mkdtempSync(path.join(tmpdir(), 'lw-skew-'));

const fleetOf = useSignedFleet({
  label: 'skew',
  backends: ['a', 'b', 'c'].map((id) => ({ id, slots: 4, serviceMs: 10 })),
});

afterAll(() => rmSync(dir, { recursive: true, force: true }));

/** Starts b's agent again with every clock read in it moved by `skewMs`. */
function startSkewedAgent(skewMs: number): void {
  const preload = path.join(dir, 'skew-clock.js');
  writeFileSync(
    preload,
    `const realNow = Date.now; const off = ${skewMs};\n` + `Date.now = () => realNow() + off;\n`,
  );
  // spawn() copies the environment synchronously: set for this one child, then restore.
  const saved = process.env['NODE_OPTIONS'];
  process.env['NODE_OPTIONS'] = `--require ${preload}`;
  try {
    fleetOf().fleet.get('b').startAgent();
  } finally {
    if (saved === undefined) delete process.env['NODE_OPTIONS'];
    else process.env['NODE_OPTIONS'] = saved;
  }
}

it('reports from a clock minutes ahead are dropped and counted; the backend stays routable', async () => {
  const { gw, fleet } = fleetOf();
  await fleet.get('b').killAgent('SIGKILL');
  startSkewedAgent(SKEW_MS);
  const skewed = (): Promise<number> =>
    counter(gw, 'invalid_messages_total', { code: 'LW_PROTO_CLOCK_SKEW' });
  await eventually(async () => (await skewed()) > 0, 15_000, 'a skewed report dropped');
  // The last good report goes stale; b is scored on local signals from then on.
  await eventually(() => !gw.backend('b').reportFresh, 15_000, "b's report stale");
  const records = await openLoad({ url: `${gw.url}/work`, rate: 60, durationMs: RUN_MS }).done;
  await sleep(100);
  const t = tally(records);
  const dropped = await skewed();
  const b = gw.backend('b');
  report('agent clock skewed +5 min', {
    droppedAsClockSkew: dropped,
    bState: b.state,
    bReportFresh: b.reportFresh,
    sent: t.sent,
    failures: t.failures,
    servedBy: t.servedBy,
  });
  expect(dropped).toBeGreaterThan(0);
  expect(b.state).toBe('healthy');
  expect(t.servedBy['b'] ?? 0).toBeGreaterThan(0);
  expect(t.sent - t.ok).toBe(0);
}, 90_000);
