/**
 * `npm start` runs the built quick start: this runs it on a free port with
 * --load for a few seconds, checks requests are served through the gateway,
 * then sends SIGINT and checks it exits 0 with every child (backends and
 * agents) gone.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import path from 'node:path';
import { createInterface } from 'node:readline';
import { eventually } from '../kit/fleet';

const SCRIPT = path.resolve(__dirname, '../../examples/dist/quick-start.js');

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

let child: ChildProcess | undefined;
const childPids: number[] = [];

afterAll(() => {
  // On a failed assertion, leave nothing behind.
  child?.kill('SIGKILL');
  for (const pid of childPids) if (alive(pid)) process.kill(pid, 'SIGKILL');
});

it('serves requests through the gateway under --load and stops every child on SIGINT', async () => {
  child = spawn(
    process.execPath,
    [SCRIPT, '--port', '0', '--load', '--rate', '100', '--interval-ms', '250'],
    {
      stdio: ['ignore', 'pipe', 'pipe'],
    },
  );
  const lines: string[] = [];
  let stderr = '';
  child.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
  createInterface({ input: child.stdout! }).on('line', (l) => lines.push(l));
  const exited = new Promise<{ code: number | null; signal: string | null }>((resolve) =>
    child!.once('exit', (code, signal) => resolve({ code, signal })),
  );

  const find = (re: RegExp): RegExpMatchArray | undefined =>
    lines.map((l) => l.match(re)).find((m): m is RegExpMatchArray => m !== null);
  await eventually(
    () => find(/gateway listening on (http:\/\/\S+)/) !== undefined,
    20_000,
    `gateway up (stderr: ${stderr})`,
  );
  const gw = find(/gateway listening on (http:\/\/\S+)/)![1]!;
  for (const l of lines) {
    const m = l.match(/\(pid (\d+), agent pid (\d+)\)/);
    if (m) childPids.push(Number(m[1]), Number(m[2]));
  }
  expect(childPids).toHaveLength(6);

  // A request of our own through the gateway: served by one of the three backends, with the decision header.
  const res = await fetch(`${gw}/hello`);
  expect(res.status).toBe(200);
  expect(['b1', 'b2', 'b3']).toContain(res.headers.get('x-served-by'));
  expect(res.headers.get('x-loadwise-decision')).toMatch(/^b[123]\b/);
  type Status = { backends: { id: string; reportFresh: boolean }[] };
  const status = (await (await fetch(`${gw}/_lb/status`)).json()) as Status;
  expect(status.backends.map((b) => b.id).sort()).toEqual(['b1', 'b2', 'b3']);
  // The agents sign with the run's key and the gateway accepts their reports
  // (it refuses unsigned ones by default): routing is metric-driven.
  await eventually(
    async () =>
      ((await (await fetch(`${gw}/_lb/status`)).json()) as Status).backends.every(
        (b) => b.reportFresh,
      ),
    10_000,
    'fresh signed reports of every backend',
  );
  const keyFile = find(/signing key for this run in (\S+)/)?.[1];
  expect(keyFile).toBeDefined();

  // The per-second lines count served and failed requests of the driven load.
  const perSecond = (): { ok: number; failed: number }[] =>
    lines
      .map((l) => l.match(/\| (\d+) ok, (\d+) failed/))
      .filter((m): m is RegExpMatchArray => m !== null)
      .map((m) => ({ ok: Number(m[1]), failed: Number(m[2]) }));
  await eventually(() => perSecond().length >= 3, 20_000, 'three per-second lines');
  const seconds = perSecond();
  const served = seconds.reduce((n, s) => n + s.ok, 0);
  // 100 req/s for 3 s: well above 100 served even on a busy machine; nothing failed.
  expect(served).toBeGreaterThan(100);
  expect(seconds.reduce((n, s) => n + s.failed, 0)).toBe(0);

  child.kill('SIGINT');
  const exit = await exited;
  expect(exit).toEqual({ code: 0, signal: null });
  for (const pid of childPids) expect(alive(pid)).toBe(false);
  expect(existsSync(keyFile!)).toBe(false);
}, 45_000);
