/**
 * runWorkers (packages/gateway-plugin/src/cluster/run-workers.ts) for real: a
 * child process (cluster-child.js) runs a pool of 2 gateway workers on one
 * port, both on this test's embedded broker. Requests on fresh connections
 * reach both workers; each worker is its own MQTT client; a worker killed
 * with SIGKILL is replaced, and only requests sent before the primary took it
 * out of rotation fail (those it had in flight or was being handed); SIGTERM
 * to the primary closes every worker and exits 0, and a second SIGTERM or
 * SIGINT (to the primary, or to its whole process group) while they close
 * changes nothing; a worker that keeps failing to start is given up, its
 * stack logged once.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import { tmpdir } from 'node:os';
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import { createInterface } from 'node:readline';
import type { MqttClient } from 'mqtt';
import { startEmbeddedBroker, type EmbeddedBroker } from '@loadwise/gateway-plugin';
import { connectClient, endClient } from '../kit/brokers';
import { eventually } from '../kit/fleet';
import { withinOrFail } from '../kit/agent-http';
import { alive } from '../kit/pids';
import { freePort } from '../kit/ports';
import { startScript } from '../kit/script-child';

const SCRIPT = path.resolve(__dirname, 'cluster-child.js');
const CONCURRENCY = 4;

let broker: EmbeddedBroker;
let watcher: MqttClient;
const clientIds: string[] = [];
const backends: http.Server[] = [];
let child: ChildProcess | undefined;
let lines: string[] = [];

/** One request on a connection of its own (no keep-alive: the primary hands each connection to a worker). */
function get(port: number): Promise<{ status: number; pid: number }> {
  return new Promise((resolve, reject) => {
    const req = http.get({ host: '127.0.0.1', port, path: '/x', agent: false }, (res) => {
      res.resume();
      res.on('end', () =>
        resolve({ status: res.statusCode!, pid: Number(res.headers['x-gateway-pid']) }),
      );
      res.on('error', reject);
    });
    req.setTimeout(10_000, () => req.destroy(new Error('timeout')));
    req.on('error', reject);
  });
}

/** Worker pids the pool logged as started, by worker id, in order. */
function started(): Map<string, number[]> {
  const m = new Map<string, number[]>();
  for (const l of lines) {
    const hit = /worker (w\d+) started \(pid (\d+)\)/.exec(l);
    if (hit) m.set(hit[1]!, [...(m.get(hit[1]!) ?? []), Number(hit[2])]);
  }
  return m;
}

beforeAll(async () => {
  // $SYS is closed by default (it names every client id); this test reads it on purpose.
  broker = await startEmbeddedBroker({
    aedes: { authorizeSubscribe: (_client, sub, cb) => cb(null, sub) },
  });
  watcher = await connectClient(broker.url);
  // aedes announces every client that connects on $SYS/<broker id>/new/clients.
  watcher.on('message', (topic, payload) => {
    if (topic.endsWith('/new/clients')) clientIds.push(payload.toString());
  });
  await watcher.subscribeAsync('$SYS/+/new/clients');
  for (let i = 0; i < 2; i++) {
    const s = http.createServer((_req, res) => res.end('ok'));
    await new Promise<void>((r) => s.listen(0, '127.0.0.1', () => r()));
    backends.push(s);
  }
});

afterAll(async () => {
  if (child && child.exitCode === null) child.kill('SIGKILL');
  for (const pids of started().values())
    for (const pid of pids) if (alive(pid)) process.kill(pid, 'SIGKILL');
  await endClient(watcher, true);
  await broker.close();
  for (const s of backends) {
    s.closeAllConnections();
    await new Promise((r) => s.close(r));
  }
});

it('runs 2 workers on one port, replaces a killed one and closes all on SIGTERM', async () => {
  const port = await freePort();
  // The pool logs on stderr (`lines`).
  const { exited } = startPool(port);

  // Both workers serve: fresh connections are handed out round robin.
  const seen = new Set<number>();
  await eventually(
    async () => {
      const r = await get(port).catch(() => undefined);
      if (r?.status === 200) seen.add(r.pid);
      return seen.size === 2;
    },
    20_000,
    `both workers serve (log: ${lines.join(' / ')})`,
  );
  const first = started();
  expect([...seen].sort()).toEqual([first.get('w1')![0]!, first.get('w2')![0]!].sort());

  // Each worker is a gateway of its own on the broker: distinct MQTT client ids.
  const ids = (w: string): string[] => clientIds.filter((c) => c.startsWith(`lw-${w}-`));
  await eventually(
    () => ids('w1').length > 0 && ids('w2').length > 0,
    10_000,
    'both on the broker',
  );
  expect(new Set(clientIds).size).toBe(clientIds.length);

  // Load from CONCURRENCY loops, each one request at a time; kill w1 meanwhile.
  let ok = 0;
  /** Failed requests: when each was sent and when it failed (ms, this process's clock). */
  const failures: { sentAt: number; failedAt: number; why: string }[] = [];
  const servedBy = new Set<number>();
  let running = true;
  const loops = Array.from({ length: CONCURRENCY }, async () => {
    while (running) {
      const sentAt = performance.now();
      try {
        const r = await get(port);
        if (r.status === 200) {
          ok++;
          servedBy.add(r.pid);
        } else failures.push({ sentAt, failedAt: performance.now(), why: `status ${r.status}` });
      } catch (err) {
        failures.push({ sentAt, failedAt: performance.now(), why: (err as Error).message });
      }
    }
  });
  await eventually(() => ok >= 50, 10_000, 'load flowing');
  const victim = first.get('w1')![0]!;
  const killedAt = performance.now();
  process.kill(victim, 'SIGKILL');
  // The primary logs the exit once it has taken the worker out of its rotation.
  const exitLine = `(pid ${victim}) exited (signal SIGKILL); restarting`;
  await eventually(() => lines.some((l) => l.includes(exitLine)), 10_000, 'exit logged');
  const exitSeenAt = performance.now();
  await eventually(() => (started().get('w1') ?? []).length === 2, 10_000, 'w1 restarted');
  const replacement = started().get('w1')![1]!;
  await eventually(() => servedBy.has(replacement), 10_000, 'the new w1 serves');
  const okAtReplacement = ok;
  await eventually(() => ok >= okAtReplacement + 50, 10_000, 'load flowing after');
  running = false;
  await Promise.all(loops);
  // Only requests sent before the primary took the dead worker out may fail:
  // those it had in flight, or that were being handed to it (node:cluster
  // cannot take those back: they wait for the client's timeout). None before
  // the kill, none sent after the exit was logged.
  expect(failures.filter((f) => f.failedAt < killedAt)).toEqual([]);
  expect(failures.filter((f) => f.sentAt > exitSeenAt)).toEqual([]);
  // The replacement is on the broker too, under w1's prefix.
  await eventually(() => ids('w1').length === 2, 10_000, 'the new w1 on the broker');

  child!.kill('SIGTERM');
  expect(await exited).toEqual({ code: 0, signal: null });
  const last = started();
  for (const pid of [...last.get('w1')!, ...last.get('w2')!]) expect(alive(pid)).toBe(false);
  expect(lines.filter((l) => /closing: asked by the primary/.test(l))).toHaveLength(2);
  expect(lines.some((l) => l.includes('stopped (code 0)'))).toBe(true);
}, 60_000);

it('reports the port its workers listen on, with the warm-up on (its loopback servers are not the pool port)', async () => {
  const run = startScript(SCRIPT, [], {
    ...process.env,
    LW_WORKERS: '1',
    LW_PORT: '0',
    LW_HEALTH_CHECK: '1',
    LW_BROKER_URL: broker.url,
    LW_BACKENDS: JSON.stringify([
      { id: 'b1', url: `http://127.0.0.1:${(backends[0]!.address() as AddressInfo).port}` },
    ]),
  });
  child = run.child;
  lines = run.errLines;
  let port: number | undefined;
  await eventually(() => {
    const hit = lines.map((l) => /pool listening on (\d+)/.exec(l)).find(Boolean);
    port = hit ? Number(hit[1]) : undefined;
    return port !== undefined;
  }, 30_000);
  // Before the fix this port was the warm-up sink's, closed by then: ECONNREFUSED.
  expect((await get(port!)).status).toBe(200);
  run.child.kill('SIGTERM');
  expect(await run.exited).toEqual({ code: 0, signal: null });
}, 60_000);

it('gives up a worker that keeps failing to start, and the primary exits 1 once every one is given up', async () => {
  const run = startScript(SCRIPT, [], {
    ...process.env,
    LW_WORKERS: '2',
    LW_PORT: '0',
    LW_BROKER_URL: broker.url,
    LW_BACKENDS: '[]',
    LW_FAIL_START: '1',
    LW_MAX_RESTARTS: '2',
  });
  expect(await run.exited).toEqual({ code: 1, signal: null });
  const log = run.errLines;
  // Each slot: the first start and 2 restarts, then given up.
  expect(log.filter((l) => /worker w1 started/.test(l))).toHaveLength(3);
  expect(log.filter((l) => /worker w2 started/.test(l))).toHaveLength(3);
  expect(log.filter((l) => /failed to start: Error: start failed on purpose/.test(l))).toHaveLength(
    6,
  );
  // The stack once per slot, at its first failure; each failure after it is one line.
  const withStack = log.filter(
    (l, i) => /failed to start: /.test(l) && /^\s+at /.test(log[i + 1] ?? ''),
  );
  expect(withStack).toHaveLength(2);
  expect(
    log.filter((l) =>
      /failed to start: .*\(failure [23] in a row; its stack is logged at the first\)$/.test(l),
    ),
  ).toHaveLength(4);
  expect(log.filter((l) => /not restarting it/.test(l))).toHaveLength(2);
  expect(log.some((l) => l.includes('every worker was given up; stopping'))).toBe(true);
}, 30_000);

/** Starts cluster-child.js with 2 workers on `port`; its stderr lines land in `lines`. */
function startPool(port: number, extraEnv: Record<string, string> = {}) {
  const run = startScript(SCRIPT, [], {
    ...process.env,
    LW_WORKERS: '2',
    LW_PORT: String(port),
    LW_BROKER_URL: broker.url,
    LW_BACKENDS: JSON.stringify(
      backends.map((s, i) => ({
        id: `b${i + 1}`,
        url: `http://127.0.0.1:${(s.address() as AddressInfo).port}`,
      })),
    ),
    ...extraEnv,
  });
  child = run.child;
  lines = run.errLines;
  return run;
}

/** CONCURRENCY loops of one request at a time on fresh connections, until stop(). */
function loadLoops(port: number) {
  const failures: string[] = [];
  const servedBy = new Map<number, number>();
  let ok = 0;
  let running = true;
  const loops = Array.from({ length: CONCURRENCY }, async () => {
    while (running) {
      try {
        const r = await get(port);
        if (r.status === 200) {
          ok++;
          servedBy.set(r.pid, (servedBy.get(r.pid) ?? 0) + 1);
        } else failures.push(`status ${r.status}`);
      } catch (err) {
        failures.push((err as Error).message);
      }
    }
  });
  return {
    failures,
    servedBy,
    ok: () => ok,
    stop: async () => {
      running = false;
      await Promise.all(loops);
    },
  };
}

it('SIGHUP replaces every worker one at a time under load and refuses no connection', async () => {
  const port = await freePort();
  const { exited } = startPool(port);
  // Every worker listens (the primary logs it): from then on no connection is refused.
  await eventually(() => lines.some((l) => l.startsWith('pool listening on')), 30_000, 'listening');
  const load = loadLoops(port);
  const first = started();
  const old = [first.get('w1')![0]!, first.get('w2')![0]!];
  await eventually(() => old.every((pid) => load.servedBy.has(pid)), 20_000, 'both serve');

  child!.kill('SIGHUP');
  await eventually(
    () => lines.some((l) => l.includes('reloaded 2 worker(s)')),
    30_000,
    `reloaded (log: ${lines.join(' / ')})`,
  );
  const now = started();
  const fresh = [now.get('w1')![1]!, now.get('w2')![1]!];
  const okAtReload = load.ok();
  await eventually(() => load.ok() >= okAtReload + 50, 10_000, 'load flowing after');
  await load.stop();

  // Not one request failed: no ECONNREFUSED (the primary's socket always had
  // a listening worker), no reset, no 503 from a draining worker.
  expect(load.failures).toEqual([]);
  for (const pid of old) expect(alive(pid)).toBe(false);
  for (const pid of fresh) expect(load.servedBy.get(pid)).toBeGreaterThan(0);
  // One slot at a time: w1's new worker started, the old w1 closed and
  // exited, and only then did w2's new worker start.
  const at = (needle: string): number => lines.findIndex((l) => l.includes(needle));
  const w1New = at(`worker w1 started (pid ${fresh[0]})`);
  const w1OldExit = at(`worker w1 (pid ${old[0]}) exited (code 0)`);
  const w2New = at(`worker w2 started (pid ${fresh[1]})`);
  expect(w1New).toBeGreaterThan(-1);
  expect(w1OldExit).toBeGreaterThan(w1New);
  expect(w2New).toBeGreaterThan(w1OldExit);
  // Replaced workers are not restarted.
  expect(lines.filter((l) => l.includes('restarting in'))).toEqual([]);

  child!.kill('SIGTERM');
  expect(await exited).toEqual({ code: 0, signal: null });
  for (const pid of fresh) expect(alive(pid)).toBe(false);
}, 60_000);

it('a reload whose new worker fails to start stops there, and the old workers keep serving', async () => {
  const port = await freePort();
  const { exited } = startPool(port, { LW_FAIL_RESTART: '1' });
  // Every worker listens (the primary logs it): from then on no connection is refused.
  await eventually(() => lines.some((l) => l.startsWith('pool listening on')), 30_000, 'listening');
  const first = started();
  const old = [first.get('w1')![0]!, first.get('w2')![0]!];
  const load = loadLoops(port);
  await eventually(() => old.every((pid) => load.servedBy.has(pid)), 20_000, 'both serve');

  child!.kill('SIGHUP');
  await eventually(
    () => lines.some((l) => l.includes('reload stopped')),
    30_000,
    `reload stopped (log: ${lines.join(' / ')})`,
  );
  const okThen = load.ok();
  await eventually(() => load.ok() >= okThen + 50, 10_000, 'load flowing after');
  await load.stop();

  expect(load.failures).toEqual([]);
  for (const pid of old) expect(alive(pid)).toBe(true);
  // The reload stopped at w1: its replacement was tried once, w2's never.
  expect(started().get('w1')).toHaveLength(2);
  expect(started().get('w2')).toHaveLength(1);
  expect(lines.some((l) => /the old worker w1 keeps serving/.test(l))).toBe(true);

  child!.kill('SIGTERM');
  expect(await exited).toEqual({ code: 0, signal: null });
}, 60_000);

it('a reload tries a given-up slot again: fixed meanwhile, it serves', async () => {
  const port = await freePort();
  const marker = path.join(mkdtempSync(path.join(tmpdir(), 'lw-cluster-')), 'w2-fails');
  writeFileSync(marker, '');
  try {
    const { exited } = startPool(port, { LW_W2_FAIL_WHILE: marker, LW_MAX_RESTARTS: '1' });
    await eventually(
      () => lines.some((l) => /worker w2 .* not restarting it/.test(l)),
      30_000,
      `w2 given up (log: ${lines.join(' / ')})`,
    );
    // The cause is fixed; the operator reloads.
    rmSync(marker);
    child!.kill('SIGHUP');
    await eventually(
      () => lines.some((l) => /reloaded \d+ worker/.test(l)),
      30_000,
      `reloaded (log: ${lines.join(' / ')})`,
    );
    expect(lines.some((l) => /worker w2 is back/.test(l))).toBe(true);
    const w2 = started().get('w2')!.at(-1)!;
    const load = loadLoops(port);
    await eventually(() => load.servedBy.has(w2), 20_000, 'the revived w2 serves');
    await load.stop();
    expect(load.failures).toEqual([]);
    child!.kill('SIGTERM');
    expect(await exited).toEqual({ code: 0, signal: null });
  } finally {
    rmSync(path.dirname(marker), { recursive: true, force: true });
  }
}, 60_000);

it('a worker asked to close while start() still runs closes what start() returns', async () => {
  const port = await freePort();
  const { exited } = startPool(port, { LW_SLOW_START_MS: '1500' });
  await eventually(
    () => lines.filter((l) => /listening, start\(\) not done/.test(l)).length === 2,
    30_000,
    `both listening, starting (log: ${lines.join(' / ')})`,
  );
  child!.kill('SIGTERM');
  expect(await exited).toEqual({ code: 0, signal: null });
  // Each closed its server and balancer once start() returned, instead of exiting under them.
  expect(lines.filter((l) => /worker w\d closed its server and balancer/.test(l))).toHaveLength(2);
}, 60_000);

it("a SIGTERM while a reload's new worker still starts stops it at once: the port is not bound again", async () => {
  // Asked to close, a starting worker closed once its start() returned, which listens: the
  // primary bound the port again after the old worker had released it, took connections
  // and reset them, and the stop waited out the warm-up.
  const port = await freePort();
  const { exited } = startPool(port, { LW_WORKERS: '1', LW_SLOW_RESTART_MS: '20000' });
  await eventually(() => lines.some((l) => l.startsWith('pool listening on')), 30_000, 'listening');
  child!.kill('SIGHUP');
  await eventually(
    () => lines.some((l) => l.includes('worker w1 restart 1 warming up')),
    30_000,
    `replacement starting (log: ${lines.join(' / ')})`,
  );
  const replacement = started().get('w1')![1]!;
  child!.kill('SIGTERM');
  expect(await exited).toEqual({ code: 0, signal: null });
  expect(lines).toContain(
    `loadwise workers: worker pid ${replacement} has not listened yet; stopping it (SIGKILL)`,
  );
  expect(lines.some((l) => l.includes('restart 1 listening'))).toBe(false);
  // The old worker closes with the pool: "keeps serving" would not be true.
  expect(lines.some((l) => l.includes('keeps serving'))).toBe(false);
  expect(alive(replacement)).toBe(false);
}, 60_000);

it('a close that has to kill a worker mid-request says so in its last line', async () => {
  let arrived = 0;
  const hanging = http.createServer(() => void arrived++);
  await new Promise<void>((r) => hanging.listen(0, '127.0.0.1', () => r()));
  try {
    const port = await freePort();
    const { exited } = startPool(port, {
      LW_WORKERS: '1',
      LW_SHUTDOWN_MS: '500',
      LW_BACKENDS: JSON.stringify([
        { id: 'hang', url: `http://127.0.0.1:${(hanging.address() as AddressInfo).port}` },
      ]),
    });
    await eventually(() => lines.some((l) => l.startsWith('pool listening on')), 30_000, 'up');
    const cut = new Promise<string>((resolve) => {
      const req = http.get({ host: '127.0.0.1', port, path: '/x', agent: false }, (res) => {
        res.resume();
        res.on('end', () => resolve(`status ${res.statusCode}`));
        res.on('error', (e) => resolve(e.message));
      });
      req.on('error', (e) => resolve(e.message));
    });
    await eventually(() => arrived > 0, 10_000, 'request at the backend');
    child!.kill('SIGTERM');
    // The exit code stays the supervisor's (a stop that succeeded); the line tells the truth.
    expect(await exited).toEqual({ code: 0, signal: null });
    expect(await cut).toBe('socket hang up');
    expect(lines).toContain(
      'loadwise workers: stopped (code 0); 1 worker(s) killed after 500 ms, their requests cut',
    );
  } finally {
    hanging.closeAllConnections();
    await new Promise((r) => hanging.close(r));
  }
}, 60_000);

it('a primary killed with SIGKILL: each worker finishes the requests it has, then exits', async () => {
  // A backend that answers 1.5 s after a request arrives; `arrived` says when one has.
  let arrived = 0;
  const slow = http.createServer((_req, res) => {
    arrived++;
    setTimeout(() => res.end('slow ok'), 1_500);
  });
  await new Promise<void>((r) => slow.listen(0, '127.0.0.1', () => r()));
  try {
    const port = await freePort();
    const run = startPool(port, {
      LW_WORKERS: '1',
      LW_BACKENDS: JSON.stringify([
        { id: 'slow', url: `http://127.0.0.1:${(slow.address() as AddressInfo).port}` },
      ]),
    });
    await eventually(
      () => lines.some((l) => l.includes(`pool listening on ${port}`)),
      20_000,
      'listening',
    );
    const worker = started().get('w1')![0]!;
    const answer = new Promise<{ status: number; body: string }>((resolve, reject) => {
      const req = http.get({ host: '127.0.0.1', port, path: '/x', agent: false }, (res) => {
        let body = '';
        res.setEncoding('utf8');
        res.on('data', (c: string) => (body += c));
        res.on('end', () => resolve({ status: res.statusCode!, body }));
        res.on('error', reject);
      });
      req.on('error', reject);
    });
    await eventually(() => arrived === 1, 10_000, 'the request reached the backend');
    run.child.kill('SIGKILL');
    expect(await run.exited).toEqual({ code: null, signal: 'SIGKILL' });
    // node:cluster used to exit the worker at once here: ECONNRESET 300 ms in.
    expect(await answer).toEqual({ status: 200, body: 'slow ok' });
    await eventually(() => !alive(worker), 10_000, 'the worker exits once it has answered');
    expect(lines.some((l) => l.includes(`(pid ${worker}) closing: the primary is gone`))).toBe(
      true,
    );
  } finally {
    slow.closeAllConnections();
    await new Promise((r) => slow.close(r));
  }
}, 40_000);

/**
 * Starts cluster-child.js as startPool does, but detached: the primary leads a process group
 * of its own, which its workers join, as under a terminal (Ctrl-C signals the whole group) or
 * a supervisor that signals the group (`kill -TERM -PGID`). `line(re)` resolves with the first
 * stderr line that matches, once there is one (rejects after `timeoutMs`).
 */
function startPoolGroup(env: Record<string, string>) {
  const proc = spawn(process.execPath, [SCRIPT], {
    detached: true,
    stdio: ['ignore', 'ignore', 'pipe'],
    env: { ...process.env, ...env },
  });
  const errLines: string[] = [];
  const waiting = new Set<(l: string) => void>();
  createInterface({ input: proc.stderr! }).on('line', (l) => {
    errLines.push(l);
    for (const w of [...waiting]) w(l);
  });
  const exited = new Promise<{ code: number | null; signal: string | null }>((resolve) =>
    proc.once('exit', (code, signal) => resolve({ code, signal })),
  );
  const line = (re: RegExp, timeoutMs = 20_000): Promise<string> =>
    new Promise((resolve, reject) => {
      const hit = errLines.find((l) => re.test(l));
      if (hit !== undefined) return resolve(hit);
      const check = (l: string): void => {
        if (!re.test(l)) return;
        clearTimeout(timer);
        waiting.delete(check);
        resolve(l);
      };
      const timer = setTimeout(() => {
        waiting.delete(check);
        reject(new Error(`no line ${re} within ${timeoutMs} ms (log: ${errLines.join(' / ')})`));
      }, timeoutMs);
      waiting.add(check);
    });
  child = proc;
  lines = errLines;
  return { child: proc, exited, line };
}

const IN_FLIGHT = 4;
const SLOW_MS = 2_000;

it.each([
  ['SIGTERM twice to the primary', 'SIGTERM', false],
  ['SIGTERM twice to the process group (kill -TERM -PGID, twice)', 'SIGTERM', true],
  ['SIGINT twice to the process group (Ctrl-C twice)', 'SIGINT', true],
] as const)(
  '%s: the stop stays graceful, every request in flight is answered and the primary exits 0',
  async (_name, signal, group) => {
    // A backend that answers SLOW_MS after a request arrives; `arrivedAll` once IN_FLIGHT have.
    let arrived = 0;
    let allArrived!: () => void;
    const arrivedAll = new Promise<void>((r) => (allArrived = r));
    const timers = new Set<NodeJS.Timeout>();
    const slow = http.createServer((req, res) => {
      if (req.url === '/slow' && ++arrived === IN_FLIGHT) allArrived();
      const t = setTimeout(() => {
        timers.delete(t);
        res.end('slow ok');
      }, SLOW_MS);
      timers.add(t);
    });
    await new Promise<void>((r) => slow.listen(0, '127.0.0.1', () => r()));
    let pool: ReturnType<typeof startPoolGroup> | undefined;
    try {
      const port = await freePort();
      pool = startPoolGroup({
        LW_WORKERS: '2',
        LW_PORT: String(port),
        LW_BROKER_URL: broker.url,
        LW_BACKENDS: JSON.stringify([
          { id: 'slow', url: `http://127.0.0.1:${(slow.address() as AddressInfo).port}` },
        ]),
      });
      await pool.line(new RegExp(`pool listening on ${port}`));
      const workers = [started().get('w1')![0]!, started().get('w2')![0]!];
      const answers = Array.from(
        { length: IN_FLIGHT },
        () =>
          new Promise<{ status: number; body: string }>((resolve, reject) => {
            const req = http.get(
              { host: '127.0.0.1', port, path: '/slow', agent: false },
              (res) => {
                let body = '';
                res.setEncoding('utf8');
                res.on('data', (c: string) => (body += c));
                res.on('end', () => resolve({ status: res.statusCode!, body }));
                res.on('error', reject);
              },
            );
            req.setTimeout(15_000, () => req.destroy(new Error('timeout')));
            req.on('error', reject);
          }),
      );
      // Read below; until then a failure elsewhere must not leave them unhandled.
      for (const a of answers) a.catch(() => undefined);
      await withinOrFail(arrivedAll, 10_000, `${IN_FLIGHT} requests at the backend`);

      const pid = pool.child.pid!;
      const send = (): void => {
        process.kill(group ? -pid : pid, signal);
      };
      send();
      // The second signal comes once the first has been handled, as a repeat does: the
      // primary logged it and, when the group got it, each worker did (closing on it, or
      // saying it is already closing when the primary's word was read first). A worker that
      // had not read the first yet would take both as one.
      await pool.line(new RegExp(`^loadwise workers: ${signal}: closing every worker`));
      if (group) {
        for (const pid of workers) {
          const handled = `(closing: ${signal}|${signal}: already closing)`;
          await pool.line(new RegExp(`\\(pid ${pid}\\) ${handled}`), 10_000);
        }
      }
      send();

      // Before the fix the second signal got Node's default action: the workers it reached
      // died at once (every request they had reset), and so did the primary.
      const results = await Promise.allSettled(answers);
      expect(
        results.map((r) => (r.status === 'fulfilled' ? r.value : (r.reason as Error).message)),
      ).toEqual(Array.from({ length: IN_FLIGHT }, () => ({ status: 200, body: 'slow ok' })));
      expect(await withinOrFail(pool.exited, 15_000, 'the primary exits')).toEqual({
        code: 0,
        signal: null,
      });
      for (const pid of workers) expect(alive(pid)).toBe(false);
      expect(lines.filter((l) => l.includes('stopped (code 0)'))).toHaveLength(1);
      // Each process the signals reached said, once, that it was already closing (a worker
      // may say so of the first signal, if the primary's word reached it before that did).
      const repeats = lines.filter((l) => l.includes(`${signal}: already closing`));
      expect(repeats).toHaveLength(group ? 3 : 1);
      expect(repeats.filter((l) => l.includes('already closing every worker'))).toHaveLength(1);
    } finally {
      // What a failure left running: the primary, and the workers it logged.
      if (pool && pool.child.exitCode === null && pool.child.signalCode === null)
        pool.child.kill('SIGKILL');
      for (const pids of started().values())
        for (const pid of pids) if (alive(pid)) process.kill(pid, 'SIGKILL');
      for (const t of timers) clearTimeout(t);
      slow.closeAllConnections();
      await new Promise((r) => slow.close(r));
    }
  },
  40_000,
);
