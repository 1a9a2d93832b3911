/**
 * runWorkers' lifecycle against real processes (cluster-plain-child.js: plain
 * HTTP workers, no broker): a log reader that goes away while the pool serves
 * (EPIPE on stderr), a worker that never listens at its first start or after a
 * crash (the start deadline), SIGHUPs that come while a reload runs or
 * while the pool closes, a SIGHUP to the pool's whole process group, and an
 * old worker that crashes while its reload replacement warms up.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { createInterface } from 'node:readline';
import { eventually } from '../kit/fleet';
import { withinOrFail } from '../kit/agent-http';
import { alive } from '../kit/pids';

const SCRIPT = path.resolve(__dirname, 'cluster-plain-child.js');

interface Pool {
  child: ChildProcess;
  lines: string[];
  exited: Promise<{ code: number | null; signal: string | null }>;
  /** Resolves with the `n`-th stderr line that matches `re` once there is one; rejects after `timeoutMs`. */
  line(re: RegExp, timeoutMs?: number, n?: number): Promise<string>;
  /** The pool's port, once it says it listens. */
  port(): Promise<number>;
}

const pools: Pool[] = [];
const dirs: string[] = [];

/** Starts cluster-plain-child.js with `env`; its stderr lines land in `lines`. */
function startPool(env: Record<string, string>, detached = false): Pool {
  const child = spawn(process.execPath, [SCRIPT], {
    stdio: ['ignore', 'ignore', 'pipe'],
    env: { ...process.env, ...env },
    // A process group of its own, so a test can signal the primary and its workers at once.
    detached,
  });
  const lines: string[] = [];
  const waiting = new Set<() => void>();
  createInterface({ input: child.stderr! }).on('line', (l) => {
    lines.push(l);
    for (const w of [...waiting]) w();
  });
  const exited = new Promise<{ code: number | null; signal: string | null }>((resolve) =>
    child.once('exit', (code, signal) => resolve({ code, signal })),
  );
  const line = (re: RegExp, timeoutMs = 15_000, n = 1): Promise<string> =>
    new Promise((resolve, reject) => {
      const check = (): boolean => {
        const hit = lines.filter((l) => re.test(l))[n - 1];
        if (hit === undefined) return false;
        clearTimeout(timer);
        waiting.delete(check);
        resolve(hit);
        return true;
      };
      const timer = setTimeout(() => {
        waiting.delete(check);
        reject(
          new Error(`no line ${re} (#${n}) within ${timeoutMs} ms (log: ${lines.join(' / ')})`),
        );
      }, timeoutMs);
      if (!check()) waiting.add(check);
    });
  const pool: Pool = {
    child,
    lines,
    exited,
    line,
    port: async () => Number(/(\d+)$/.exec(await line(/^pool listening on \d+/))![1]),
  };
  pools.push(pool);
  return pool;
}

/** Worker pids the pool logged as started, by worker id, in order. */
function started(lines: string[]): Map<string, number[]> {
  const m = new Map<string, number[]>();
  for (const l of lines) {
    const hit = /worker (w\d+) started \(pid (\d+)\)/.exec(l);
    if (hit) m.set(hit[1]!, [...(m.get(hit[1]!) ?? []), Number(hit[2])]);
  }
  return m;
}

/** One request on a connection of its own (the primary hands each connection to a worker). */
function get(port: number, urlPath = '/'): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const req = http.get({ host: '127.0.0.1', port, path: urlPath, agent: false }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (c: string) => (body += c));
      res.on('end', () => resolve({ status: res.statusCode!, body }));
      res.on('error', reject);
    });
    req.setTimeout(10_000, () => req.destroy(new Error('timeout')));
    req.on('error', reject);
  });
}

/**
 * A request a worker holds for 1.5 s, once that worker has it. Its answer comes in
 * `answer` (wrapped: awaiting a promise returned whole would wait for it), handled
 * meanwhile so that a failure elsewhere never leaves it unhandled.
 */
async function inFlight(
  pool: Pool,
  port: number,
): Promise<{ answer: Promise<{ status: number; body: string }> }> {
  const answer = get(port, '/?d=1500');
  answer.catch(() => undefined);
  await pool.line(/got \/\?d=1500/);
  return { answer };
}

/** Waits until two workers other than `old` have answered; their pids. */
async function newWorkersServe(port: number, old: number[], what: string): Promise<Set<number>> {
  const fresh = new Set<number>();
  await eventually(
    async () => {
      const r = await get(port).catch(() => undefined);
      const pid = Number(r?.body.split(' ')[1]);
      if (r?.status === 200 && !old.includes(pid)) fresh.add(pid);
      return fresh.size === 2;
    },
    20_000,
    `${what}: two new workers serve`,
  );
  return fresh;
}

afterEach(() => {
  // What a failure left running: each primary, and the workers it logged.
  for (const pool of pools.splice(0)) {
    if (pool.child.exitCode === null && pool.child.signalCode === null) pool.child.kill('SIGKILL');
    for (const pids of started(pool.lines).values())
      for (const pid of pids) if (alive(pid)) process.kill(pid, 'SIGKILL');
  }
  for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
});

it('a log reader that goes away (EPIPE) stops the log, never the pool: requests in flight are answered', async () => {
  const pool = startPool({});
  const port = await pool.port();
  const first = started(pool.lines);
  const old = [first.get('w1')![0]!, first.get('w2')![0]!];
  const { answer: slow } = await inFlight(pool, port);

  // The log's reader goes away (journald restarted, a `| logger` that died): each
  // process's next line meets EPIPE. Then a reload: a line from the primary, and from
  // each old worker as it closes (the one with the request in flight among them).
  pool.child.stderr!.destroy();
  pool.child.kill('SIGHUP');

  // Before the fix the primary died of the uncaught EPIPE (exit 1), and so did the worker
  // with the request: ECONNRESET.
  expect(await slow).toMatchObject({ status: 200 });
  const fresh = await newWorkersServe(port, old, 'the reload done without a log');
  for (const pid of old) await eventually(() => !alive(pid), 10_000, `old worker ${pid} gone`);
  expect(alive(pool.child.pid!)).toBe(true);
  pool.child.kill('SIGTERM');
  expect(await withinOrFail(pool.exited, 15_000, 'the primary exits')).toEqual({
    code: 0,
    signal: null,
  });
  for (const pid of fresh) expect(alive(pid)).toBe(false);
}, 40_000);

it('a worker that never listens is killed after startTimeoutMs, restarted, and given up: the pool exits 1', async () => {
  const pool = startPool({ LW_HANG: 'all', LW_START_TIMEOUT_MS: '800', LW_MAX_RESTARTS: '1' });
  // Before the fix nothing ever noticed: the pool waited for good.
  expect(await withinOrFail(pool.exited, 15_000, 'the pool gives up')).toEqual({
    code: 1,
    signal: null,
  });
  const log = pool.lines;
  for (const id of ['w1', 'w2']) {
    // The first start and one restart, each killed at the deadline, then given up.
    expect(log.filter((l) => l.includes(`worker ${id} started`))).toHaveLength(2);
    expect(
      log.filter((l) =>
        new RegExp(
          `worker ${id} \\(pid \\d+\\) did not start in 800 ms \\(its start\\(\\) had not returned\\); killing it \\(a failed start\\)`,
        ).test(l),
      ),
    ).toHaveLength(2);
    expect(log.some((l) => new RegExp(`worker ${id} .* not restarting it`).test(l))).toBe(true);
  }
  expect(log.some((l) => l.includes('every worker was given up; stopping'))).toBe(true);
}, 30_000);

it('a worker ready without a port or a listen is named in the log: listening() waits for it', async () => {
  // Before, listening() stayed pending and the log ended at the workers' start lines.
  const pool = startPool({ LW_NO_LISTEN: '1', LW_WORKERS: '1' });
  expect(await pool.line(/worker w1 \(pid \d+\) is ready but has not listened/)).toMatch(
    /listening\(\) waits for its first listen \(return \{ port \} from start\(\)\)$/,
  );
  expect(pool.lines.some((l) => l.startsWith('pool listening on'))).toBe(false);
  pool.child.kill('SIGTERM');
  expect(await withinOrFail(pool.exited, 15_000, 'the pool stops')).toEqual({
    code: 0,
    signal: null,
  });
}, 30_000);

it('a worker whose ops listener listens but whose start() never returns is killed after startTimeoutMs', async () => {
  // Its first listen is an ops port of its own (docs/gateway.md: a second listener per
  // worker), then start() hangs before the main server. Before the fix that first listen
  // made the worker "listening": the deadline was cleared, and the pool waited for good.
  const pool = startPool({
    LW_WORKERS: '1',
    LW_OPS_FIRST: '1',
    LW_HANG: 'all',
    // Long enough for a worker's boot on a loaded machine (at 800 ms a full run beside
    // other work killed it before its ops listener listened).
    LW_START_TIMEOUT_MS: '3000',
    LW_MAX_RESTARTS: '0',
  });
  await pool.line(/worker w1 \(pid \d+\) ops listening on \d+/);
  expect(await withinOrFail(pool.exited, 15_000, 'the pool gives up')).toEqual({
    code: 1,
    signal: null,
  });
  expect(
    pool.lines.filter((l) =>
      /worker w1 \(pid \d+\) did not start in 3000 ms \(its start\(\) had not returned\); killing it/.test(
        l,
      ),
    ),
  ).toHaveLength(1);
}, 30_000);

it("a reload waits for the new worker's start() to return, not its first listen (an ops port): the old worker serves until then", async () => {
  const pool = startPool({ LW_WORKERS: '1', LW_OPS_FIRST: '1', LW_HOLD_RELOAD: '1' });
  const reported = await pool.port();
  const mainPort = (line: string): number => Number(/main port (\d+)/.exec(line)![1]);
  const port = mainPort(await pool.line(/worker w1 \(pid \d+\) start\(\) returns/));
  const ops = Number(/on (\d+)$/.exec(await pool.line(/w1 \(pid \d+\) ops listening on/))![1]);
  const old = started(pool.lines).get('w1')![0]!;

  // The replacement listens on its ops port, then holds before its main server listens.
  pool.child.kill('SIGHUP');
  const held = await pool.line(/worker w1 \(pid \d+\) holds before its main listen/);
  const next = Number(/\(pid (\d+)\)/.exec(held)![1]);
  // Before the fix the primary took that ops listen for "the new worker listens" and closed
  // the old one: with no worker on the main port, connections to it were refused.
  expect(await get(port)).toEqual({ status: 200, body: `w1 ${old} -` });
  process.kill(next, 'SIGUSR2');
  await pool.line(/reloaded 1 worker\(s\)/, 20_000);
  const at = (re: RegExp): number => pool.lines.findIndex((l) => re.test(l));
  expect(at(new RegExp(`\\(pid ${next}\\) start\\(\\) returns`))).toBeLessThan(
    at(new RegExp(`worker w1 \\(pid ${old}\\) closing: asked by the primary`)),
  );
  expect(await get(port)).toEqual({ status: 200, body: `w1 ${next} -` });
  // start() returned no port: listening() reports the worker's first listen, and says why.
  expect(reported).toBe(ops);
  await pool.line(
    new RegExp(`listens on ports ${ops}, ${port}; listening\\(\\) reports ${ops}, the first`),
  );
  pool.child.kill('SIGTERM');
  expect(await withinOrFail(pool.exited, 15_000, 'the primary exits')).toEqual({
    code: 0,
    signal: null,
  });
}, 40_000);

it('listening() reports the port start() returned, not an ops listener that listened first', async () => {
  const pool = startPool({ LW_OPS_FIRST: '1', LW_RETURN_PORT: '1' });
  // Before the fix: the ops port, which answers `ops`.
  const port = await pool.port();
  expect(await get(port)).toMatchObject({ status: 200, body: expect.stringMatching(/^w\d /) });
  expect(pool.lines.some((l) => l.includes('listens on ports'))).toBe(false);
  pool.child.kill('SIGTERM');
  expect(await withinOrFail(pool.exited, 15_000, 'the primary exits')).toEqual({
    code: 0,
    signal: null,
  });
}, 30_000);

it('a crashed worker whose restart never listens is killed after startTimeoutMs and given up; the others serve', async () => {
  const pool = startPool({
    LW_HANG: 'restart',
    // Long enough for a first start on a busy machine (800 ms was not, once: both
    // workers' first starts were killed and the pool never listened).
    LW_START_TIMEOUT_MS: '3000',
    LW_MAX_RESTARTS: '1',
  });
  const port = await pool.port();
  const w1 = started(pool.lines).get('w1')![0]!;
  process.kill(w1, 'SIGKILL');
  await pool.line(/worker w1 hangs in start\(\)/);
  await pool.line(
    /worker w1 \(pid \d+\) did not start in 3000 ms \(its start\(\) had not returned\); killing it \(a failed start\)/,
  );
  await pool.line(
    /worker w1 \(pid \d+\) exited \(signal SIGKILL\) 2 times in \d+ ms; not restarting it/,
  );
  // w2 serves on, and the primary with it.
  expect(await get(port)).toMatchObject({ status: 200, body: expect.stringMatching(/^w2 /) });
  expect(alive(pool.child.pid!)).toBe(true);
  pool.child.kill('SIGTERM');
  expect(await withinOrFail(pool.exited, 15_000, 'the primary exits')).toEqual({
    code: 0,
    signal: null,
  });
}, 30_000);

it('a SIGHUP during a reload is one more reload after it (a storm is one); during a close it is ignored', async () => {
  const dir = mkdtempSync(path.join(tmpdir(), 'lw-lifecycle-'));
  dirs.push(dir);
  const versionFile = path.join(dir, 'version');
  writeFileSync(versionFile, 'v1');
  // Each start takes 700 ms more: a reload of 2 slots runs for seconds.
  const pool = startPool({ LW_VERSION_FILE: versionFile, LW_START_DELAY_MS: '700' });
  const port = await pool.port();
  const hup = (): void => void pool.child.kill('SIGHUP');

  // A deploy (v2) and its reload; once w1's new worker runs v2, another deploy (v3) lands
  // and the operator reloads again, three times over.
  writeFileSync(versionFile, 'v2');
  hup();
  await pool.line(/^loadwise workers: SIGHUP: reloading every worker$/);
  await pool.line(/worker w1 \(pid \d+\) runs v2/);
  writeFileSync(versionFile, 'v3');
  hup();
  // Before the fix: "reloading every worker" again, and merged into the reload under way.
  await pool.line(/^loadwise workers: SIGHUP: reload under way; another follows it$/);
  hup();
  await pool.line(/SIGHUP: reload under way; another already follows it$/);
  hup();
  await pool.line(/SIGHUP: reload under way; another already follows it$/, 15_000, 2);

  // Exactly one more reload, begun once the first had ended: every worker on v3.
  await pool.line(/reloaded 2 worker\(s\)/, 20_000, 2);
  /** Where the lines matching `re` are in the log. */
  const at = (re: RegExp): number[] => pool.lines.flatMap((l, i) => (re.test(l) ? [i] : []));
  const reloading = at(/reloading 2 worker\(s\), one at a time/);
  expect(reloading).toHaveLength(2);
  expect(reloading[1]).toBeGreaterThan(at(/reloaded 2 worker\(s\)/)[0]!);
  const versions = new Map<number, string>();
  await eventually(
    async () => {
      const [, pid, version] = (await get(port)).body.split(' ');
      versions.set(Number(pid), version!);
      return versions.size === 2;
    },
    10_000,
    'both workers answer',
  );
  expect([...versions.values()]).toEqual(['v3', 'v3']);

  // A SIGHUP while the pool closes (a request in flight keeps it closing) reloads nothing.
  const { answer: slow } = await inFlight(pool, port);
  pool.child.kill('SIGTERM');
  await pool.line(/^loadwise workers: SIGTERM: closing every worker$/);
  hup();
  await pool.line(/^loadwise workers: SIGHUP: ignored while the pool closes$/);
  expect(await slow).toMatchObject({ status: 200 });
  expect(await withinOrFail(pool.exited, 15_000, 'the primary exits')).toEqual({
    code: 0,
    signal: null,
  });
  expect(pool.lines.filter((l) => l.includes('SIGHUP: reloading every worker'))).toHaveLength(1);
  expect(pool.lines.filter((l) => /reloading 2 worker\(s\)/.test(l))).toHaveLength(2);
}, 60_000);

it('a SIGHUP to the whole process group reloads the pool once; no worker dies of it, a request in flight is answered', async () => {
  const pool = startPool({}, true);
  const port = await pool.port();
  const first = started(pool.lines);
  const old = [first.get('w1')![0]!, first.get('w2')![0]!];
  const { answer: slow } = await inFlight(pool, port);

  // `kill -HUP -<pgid>` (or `pkill -HUP -f gateway`, a terminal hanging up): the primary
  // and both workers get it. Before the fix each worker took Node's default action and
  // exited at once: the request in flight was reset (ECONNRESET) and the primary counted
  // two crashes in the middle of its reload.
  process.kill(-pool.child.pid!, 'SIGHUP');
  expect(await slow).toMatchObject({ status: 200 });
  await pool.line(/reloaded 2 worker\(s\)/, 20_000);
  await pool.line(/worker w\d \(pid \d+\) SIGHUP: ignored; reloads are the primary's/);
  // No worker died of it: none restarted as a crash.
  expect(pool.lines.filter((l) => /restarting in \d+ ms/.test(l))).toEqual([]);
  expect(pool.lines.filter((l) => /reloading 2 worker\(s\)/.test(l))).toHaveLength(1);
  await newWorkersServe(port, old, 'the reload done');
  pool.child.kill('SIGTERM');
  expect(await withinOrFail(pool.exited, 15_000, 'the primary exits')).toEqual({
    code: 0,
    signal: null,
  });
}, 40_000);

/**
 * Reloads `pool` (each start takes LW_START_DELAY_MS) and kills w1's old worker while its
 * replacement warms up (forked, not listening yet); resolves once the reload has ended.
 * Returns the old worker's pid and the replacement's.
 */
async function crashDuringReload(pool: Pool): Promise<{ old: number; next: number }> {
  const old = started(pool.lines).get('w1')![0]!;
  pool.child.kill('SIGHUP');
  // The replacement logs "runs" as its start() begins, then waits out the delay.
  const next = Number(
    /\(pid (\d+)\) runs/.exec(await pool.line(/worker w1 \(pid \d+\) runs/, 15_000, 2))![1],
  );
  process.kill(old, 'SIGKILL');
  await pool.line(/reloaded 2 worker\(s\)/, 20_000);
  return { old, next };
}

it('an old worker whose crash during the reload gives its slot up: the replacement keeps the slot, the next reload replaces it', async () => {
  // maxRestarts 0: the old w1's crash gives the slot up while its replacement warms up, and
  // the replacement then takes the slot. Before the fix the slot stayed "given up" with that
  // worker in it; the next reload "revived" the slot with yet another worker and lost track of
  // the one serving: it went on answering a third of the connections on the code of before
  // the reload, and the pool's close left it running.
  const pool = startPool({ LW_MAX_RESTARTS: '0', LW_START_DELAY_MS: '1500' });
  const port = await pool.port();
  await crashDuringReload(pool);
  await pool.line(
    /worker w1 \(pid \d+\) exited \(signal SIGKILL\) 1 times in \d+ ms; not restarting it/,
  );

  pool.child.kill('SIGHUP');
  await pool.line(/reloaded 2 worker\(s\)/, 20_000, 2);
  const now = started(pool.lines);
  const current = [now.get('w1')!.at(-1)!, now.get('w2')!.at(-1)!];
  // The second reload replaced w1's worker as any other: it waited for it to exit.
  expect([...now.values()].flat().filter(alive).sort()).toEqual([...current].sort());
  expect(pool.lines.some((l) => l.includes('is back'))).toBe(false);
  for (let i = 0; i < 6; i++) {
    const pid = Number((await get(port)).body.split(' ')[1]);
    expect(current).toContain(pid);
  }
  pool.child.kill('SIGTERM');
  expect(await withinOrFail(pool.exited, 15_000, 'the primary exits')).toEqual({
    code: 0,
    signal: null,
  });
  // The primary exits once every worker it forked has: none is left serving.
  for (const pid of [...started(pool.lines).values()].flat()) expect(alive(pid)).toBe(false);
}, 60_000);

it("an old worker's crash during the reload does not count against its replacement's restarts", async () => {
  // maxRestarts 1: the old w1's crash is its slot's first (a restart is forked, then closed
  // as the replacement takes the slot). Before the fix the slot kept that crash, so the
  // replacement's first crash was the second and gave the slot up.
  const pool = startPool({ LW_MAX_RESTARTS: '1', LW_START_DELAY_MS: '1500' });
  await pool.port();
  const { old, next } = await crashDuringReload(pool);
  await pool.line(
    new RegExp(`worker w1 \\(pid ${old}\\) exited \\(signal SIGKILL\\); restarting in`),
  );

  process.kill(next, 'SIGKILL');
  const exit = await pool.line(
    new RegExp(`worker w1 \\(pid ${next}\\) exited \\(signal SIGKILL\\)`),
  );
  expect(exit).toMatch(/restarting in \d+ ms$/);
  pool.child.kill('SIGTERM');
  expect(await withinOrFail(pool.exited, 15_000, 'the primary exits')).toEqual({
    code: 0,
    signal: null,
  });
}, 60_000);

/**
 * A 1-worker pool on a build that crash-loops (each worker throws 1 s after its start()
 * returned; maxRestarts 1: the second exit gives the slot up), and the file that says which
 * build the next start runs. Resolves once the second (last) life has begun, with its pid.
 */
async function crashLooping(
  env: Record<string, string> = {},
): Promise<{ pool: Pool; modeFile: string; last: number }> {
  const dir = mkdtempSync(path.join(tmpdir(), 'lw-lifecycle-'));
  dirs.push(dir);
  const modeFile = path.join(dir, 'mode');
  writeFileSync(modeFile, 'crash:1000');
  const pool = startPool({ LW_WORKERS: '1', LW_MAX_RESTARTS: '1', LW_MODE_FILE: modeFile, ...env });
  await pool.line(/worker w1 \(pid \d+\) exited \(code 1\); restarting in \d+ ms/);
  const last = Number(
    /\(pid (\d+)\)/.exec(await pool.line(/worker w1 \(pid \d+\) mode crash 1000/, 15_000, 2))![1],
  );
  return { pool, modeFile, last };
}

/** `re`'s first line; rejects at once, with the log, if the pool stops first. */
function lineBeforeExit(pool: Pool, re: RegExp, timeoutMs = 15_000): Promise<string> {
  return Promise.race([
    pool.line(re, timeoutMs),
    pool.exited.then((e) => {
      throw new Error(
        `the pool stopped (${JSON.stringify(e)}) before ${re}: ${pool.lines.join(' / ')}`,
      );
    }),
  ]);
}

it('a crash-looping pool reloaded with a fix in its last life: the replacement takes the given-up slot, the pool serves on', async () => {
  const { pool, modeFile, last } = await crashLooping();
  // The fix is deployed, whose start() takes 3 s, and the pool reloaded: the replacement is
  // forked while the last life still serves, which crashes 1 s in, one exit too many.
  writeFileSync(modeFile, 'slow:3000');
  pool.child.kill('SIGHUP');
  const next = Number(
    /\(pid (\d+)\)/.exec(await pool.line(/worker w1 \(pid \d+\) mode slow 3000/))![1],
  );
  await pool.line(
    new RegExp(
      `worker w1 \\(pid ${last}\\) exited \\(code 1\\) 2 times in \\d+ ms; not restarting it`,
    ),
  );
  // Before the fix every slot given up stopped the pool there: the replacement was SIGKILLed
  // as "not listened yet" and the primary exited 1.
  await lineBeforeExit(pool, /reloaded 1 worker\(s\)/);
  const port = Number(
    /on (\d+)$/.exec(await pool.line(new RegExp(`worker w1 \\(pid ${next}\\) listening on`)))![1],
  );
  expect(await get(port)).toEqual({ status: 200, body: `w1 ${next} -` });
  expect(pool.lines.some((l) => l.includes('every worker was given up; stopping'))).toBe(false);
  expect(pool.lines.some((l) => l.includes('has not listened yet'))).toBe(false);
  const at = (re: RegExp): number => pool.lines.findIndex((l) => re.test(l));
  const waited = at(/every worker was given up; the reload under way may bring one back/);
  expect(waited).toBeGreaterThan(at(/not restarting it$/));
  expect(at(new RegExp(`worker w1 \\(pid ${next}\\) takes its slot, given up`))).toBeGreaterThan(
    waited,
  );
  // None of the old code's exits count against the replacement: its first crash restarts it.
  writeFileSync(modeFile, 'slow:0');
  process.kill(next, 'SIGKILL');
  expect(
    await lineBeforeExit(
      pool,
      new RegExp(`worker w1 \\(pid ${next}\\) exited \\(signal SIGKILL\\)`),
    ),
  ).toMatch(/restarting in \d+ ms$/);
  pool.child.kill('SIGTERM');
  expect(await withinOrFail(pool.exited, 15_000, 'the primary exits')).toEqual({
    code: 0,
    signal: null,
  });
}, 30_000);

it("a crash-looping pool whose reload's replacement fails too stops with code 1 once the reload has failed", async () => {
  const { pool, modeFile, last } = await crashLooping();
  writeFileSync(modeFile, 'slow-fail:2500');
  pool.child.kill('SIGHUP');
  const next = Number(
    /\(pid (\d+)\)/.exec(await pool.line(/worker w1 \(pid \d+\) mode slow-fail 2500/))![1],
  );
  expect(await withinOrFail(pool.exited, 15_000, 'the pool gives up')).toEqual({
    code: 1,
    signal: null,
  });
  const at = (re: RegExp): number => pool.lines.findIndex((l) => re.test(l));
  const gaveUp = at(new RegExp(`worker w1 \\(pid ${last}\\) exited .* not restarting it`));
  const failed = at(
    new RegExp(
      `reload stopped: the new worker w1 \\(pid ${next}\\) exited \\(code 1\\) before its start\\(\\) returned; slot w1 stays given up`,
    ),
  );
  const stopping = at(/every worker was given up; stopping$/);
  expect(gaveUp).toBeGreaterThanOrEqual(0);
  // Given up while the replacement warmed up: the stop waited for the reload's end.
  const waited = at(/the reload under way may bring one back/);
  expect(waited).toBeGreaterThan(gaveUp);
  expect(failed).toBeGreaterThan(waited);
  expect(stopping).toBeGreaterThan(failed);
  expect(pool.lines.at(-1)).toMatch(/stopped \(code 1\)$/);
}, 30_000);

it('a pool whose every slot is given up with no reload under way stops with code 1 at once', async () => {
  const { pool, last } = await crashLooping({ LW_WORKERS: '2' });
  expect(await withinOrFail(pool.exited, 15_000, 'the pool gives up')).toEqual({
    code: 1,
    signal: null,
  });
  const log = pool.lines;
  expect(log.some((l) => new RegExp(`\\(pid ${last}\\) exited .* not restarting it`).test(l))).toBe(
    true,
  );
  for (const id of ['w1', 'w2']) {
    expect(log.filter((l) => l.includes(`worker ${id} started`))).toHaveLength(2);
  }
  // The last line but one gives the stop its reason, right after the last give-up.
  expect(log.slice(-3).map((l) => l.replace(/\(pid \d+\)|\d+ ms/g, ''))).toEqual([
    expect.stringMatching(/exited \(code 1\) 2 times in ; not restarting it$/),
    'loadwise workers: every worker was given up; stopping',
    'loadwise workers: stopped (code 1)',
  ]);
}, 30_000);
