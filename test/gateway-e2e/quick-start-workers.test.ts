/**
 * `npm start -- --workers 2`: the quick start's gateway as 2 workers
 * (runWorkers) on one port. Fresh connections reach both workers (the
 * x-loadwise-worker header says which), both route on the agents' signed
 * reports, SIGHUP replaces both workers (the command it prints), and SIGINT
 * stops workers, agents and backends with exit code 0 (a SIGHUP meanwhile is
 * ignored). Killed outright
 * (SIGKILL: none of its cleanup runs), it leaves no process behind either.
 */
import type { ChildProcess } from 'node:child_process';
import { rmSync } from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import { eventually } from '../kit/fleet';
import { alive } from '../kit/pids';
import { freePort } from '../kit/ports';
import { startScript } from '../kit/script-child';

const SCRIPT = path.resolve(__dirname, '../../examples/dist/quick-start.js');

let child: ChildProcess | undefined;
const pids: number[] = [];

/** GET /hello on a connection of its own (so the primary hands it to a worker); expects 200. */
async function hello(port: number): Promise<Response> {
  const res = await fetch(`http://127.0.0.1:${port}/hello`, { headers: { connection: 'close' } });
  await res.body?.cancel();
  expect(res.status).toBe(200);
  return res;
}

/** The quick start with 2 workers on `port` (0: any), once its gateway listens. */
async function startQuickStart(port: number): Promise<ReturnType<typeof startScript>> {
  const run = startScript(
    SCRIPT,
    ['--port', String(port), '--workers', '2', '--interval-ms', '250'],
    process.env,
    true,
  );
  child = run.child;
  await eventually(
    () => run.lines.some((l) => l.startsWith('gateway listening on')),
    30_000,
    `gateway up (stderr: ${run.errLines.join('\n')})`,
  );
  return run;
}

afterAll(() => {
  child?.kill('SIGKILL');
  for (const pid of pids) if (alive(pid)) process.kill(pid, 'SIGKILL');
});

it('runs the gateway as 2 workers, reloads them on SIGHUP and stops them all on SIGINT', async () => {
  const port = await freePort();
  const { lines, exited } = await startQuickStart(port);
  for (const l of lines) {
    const m =
      /\(pid (\d+), agent pid (\d+)\)/.exec(l) ?? /worker w\d started \(pid (\d+)\)/.exec(l);
    if (m) pids.push(...m.slice(1).filter(Boolean).map(Number));
  }
  expect(pids).toHaveLength(8);

  const workers = new Set<string>();
  await eventually(
    async () => {
      const res = await hello(port);
      expect(['b1', 'b2', 'b3']).toContain(res.headers.get('x-served-by'));
      workers.add(res.headers.get('x-loadwise-worker')!.replace(/ pid \d+$/, ''));
      return workers.size === 2;
    },
    10_000,
    'both workers serve',
  );
  expect([...workers].sort()).toEqual(['w1', 'w2']);
  // Whichever worker answers, it has fresh signed reports of every backend.
  type Status = { backends: { reportFresh: boolean }[] };
  let freshInARow = 0;
  await eventually(
    async () => {
      const status = (await (
        await fetch(`http://127.0.0.1:${port}/_lb/status`, { headers: { connection: 'close' } })
      ).json()) as Status;
      freshInARow = status.backends.every((b) => b.reportFresh) ? freshInARow + 1 : 0;
      return freshInARow >= 4;
    },
    10_000,
    'fresh reports in both workers',
  );

  // The printed reload command, as written: new workers serve, the old ones are gone.
  expect(lines.some((l) => l.includes(`kill -HUP ${child!.pid} `))).toBe(true);
  const before = lines.flatMap((l) => /worker w\d started \(pid (\d+)\)/.exec(l)?.[1] ?? []);
  child!.kill('SIGHUP');
  await eventually(
    () => lines.some((l) => l.startsWith('reloaded: ')),
    30_000,
    `reloaded (stdout: ${lines.join('\n')})`,
  );
  const after = [...lines.find((l) => l.startsWith('reloaded: '))!.matchAll(/pid (\d+)/g)].map(
    (m) => Number(m[1]),
  );
  pids.push(...after);
  expect(after).toHaveLength(2);
  for (const pid of before) expect(alive(Number(pid))).toBe(false);
  const servedBy = new Set<number>();
  await eventually(
    async () => {
      const res = await hello(port);
      servedBy.add(Number(/pid (\d+)$/.exec(res.headers.get('x-loadwise-worker')!)![1]));
      return after.every((pid) => servedBy.has(pid));
    },
    10_000,
    'the new workers serve',
  );

  // Ctrl-C in a terminal: SIGINT to the whole foreground group. The backends and agents
  // were in it and stopped at once while the workers drained, so a request on a connection
  // the gateway still served found no backend (503 LW_GW_NO_BACKEND).
  const open = new http.Agent({ keepAlive: true, maxSockets: 1 });
  const viaOpen = async (): Promise<number> =>
    new Promise((resolve, reject) => {
      http
        .get({ host: '127.0.0.1', port, path: '/hello', agent: open }, (res) => {
          res.resume();
          res.on('end', () => resolve(res.statusCode!));
        })
        .on('error', reject);
    });
  expect(await viaOpen()).toBe(200);
  process.kill(-child!.pid!, 'SIGINT');
  await eventually(
    () => lines.some((l) => l.includes('stopping: load, gateway')),
    10_000,
    'stopping',
  );
  expect(await viaOpen()).toBe(200);
  open.destroy();
  // A SIGHUP while it stops (a deploy script's reload racing a stop) changes nothing. Before,
  // the stop removed the SIGHUP handler first and Node's default action killed the quick
  // start mid-stop (signal SIGHUP).
  child!.kill('SIGHUP');
  expect(await exited).toEqual({ code: 0, signal: null });
  for (const pid of pids) expect(alive(pid)).toBe(false);
  expect(lines).toContain('workers: stopped (code 0)');
  expect(lines).toContain('SIGHUP: ignored while stopping');
}, 60_000);

it('killed with SIGKILL, it leaves no worker, agent or backend running', async () => {
  const { lines, exited } = await startQuickStart(0);
  const backends: number[] = [];
  const agents: number[] = [];
  const workers: number[] = [];
  for (const l of lines) {
    const b = /\(pid (\d+), agent pid (\d+)\)/.exec(l);
    if (b) {
      backends.push(Number(b[1]));
      agents.push(Number(b[2]));
    }
    const w = /worker w\d started \(pid (\d+)\)/.exec(l);
    if (w) workers.push(Number(w[1]));
  }
  const children = [...backends, ...agents, ...workers];
  pids.push(...children); // afterAll kills what a failure leaves
  expect([backends.length, agents.length, workers.length]).toEqual([3, 3, 2]);
  for (const pid of children) expect(alive(pid)).toBe(true);

  child!.kill('SIGKILL');
  expect(await exited).toEqual({ code: null, signal: 'SIGKILL' });
  // Backends watch their stdin pipe (--exit-with-parent), workers their IPC channel, and
  // agents their stdin pipe through exit-with-parent.js: each stops once it closes. Before,
  // the three agents ran on for good, publishing reports of backends that were gone.
  await eventually(
    () => children.every((pid) => !alive(pid)),
    15_000,
    () =>
      `every child gone; still running: ${children.filter(alive).join(', ')} (agents ${agents.join(', ')})`,
  );
  // Killed so, it cannot remove its signing keys' folders (docs/quick-start.md, "Stopping"): the test does.
  const keyFiles = lines
    .map((l) => /signing keys for this run in (.+?) \(one per agent/.exec(l)?.[1])
    .find((m) => m !== undefined)
    ?.split(', ');
  expect(keyFiles).toHaveLength(3);
  for (const file of keyFiles!) rmSync(path.dirname(file), { recursive: true, force: true });
}, 60_000);
