import { spawn, spawnSync } from 'node:child_process';
import {
  closeSync,
  constants,
  mkdirSync,
  mkdtempSync,
  openSync,
  readFileSync,
  rmSync,
  truncateSync,
  writeFileSync,
} from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import {
  MAX_PID_FILE_BYTES,
  ProcessSampler,
  parsePid,
  parseProcPidStat,
  parseVmRssBytes,
  readPidFile,
  type ProcessSample,
} from './process';
import { until, within } from '../../../../test/kit/agent-http';
import { AgentError } from '../errors';

const STAT = (utime: number, stime: number, state = 'S'): string =>
  `1234 (my (weird) app) ${state} 1 1234 1234 0 -1 4194560 1000 0 0 0 ${utime} ${stime} 0 0 20 0 11 0 5000 1000000 2500 18446744073709551615\n`;

describe('process sampler', () => {
  const dirs: string[] = [];
  const tmp = (): string => {
    const d = mkdtempSync(path.join(os.tmpdir(), 'lw-proc-'));
    dirs.push(d);
    return d;
  };
  afterAll(() => dirs.forEach((d) => rmSync(d, { recursive: true, force: true })));

  it('parses utime + stime after a comm with spaces and parentheses', () => {
    expect(parseProcPidStat(STAT(300, 50))).toEqual({ state: 'S', ticks: 350 });
    expect(parseProcPidStat(STAT(300, 50, 'Z'))).toEqual({ state: 'Z', ticks: 350 });
    expect(parseVmRssBytes('Name:\tx\nVmRSS:\t   2048 kB\n')).toBe(2048 * 1024);
    expect(parseVmRssBytes('Name:\tx\n')).toBeUndefined();
  });

  it('computes CPU cores from tick deltas over wall time', async () => {
    const root = tmp();
    mkdirSync(path.join(root, '1234'));
    writeFileSync(path.join(root, '1234/stat'), STAT(100, 0));
    writeFileSync(path.join(root, '1234/status'), 'VmRSS:\t 51200 kB\n');
    let t = 0;
    const s = new ProcessSampler({ pid: 1234, procRoot: root, now: () => t });
    expect(await s.sample()).toEqual({
      ok: true,
      metrics: { pid: 1234, cpuCores: 0, rssBytes: 51200 * 1024 },
    });
    t = 2000;
    writeFileSync(path.join(root, '1234/stat'), STAT(350, 50)); // 300 ticks = 3 s of CPU in 2 s
    const r = await s.sample();
    expect(r.ok && r.metrics.cpuCores).toBeCloseTo(1.5, 10);
  });

  it('re-reads the PID file and reports a missing process', async () => {
    const root = tmp();
    const pidFile = path.join(root, 'svc.pid');
    writeFileSync(pidFile, `${process.pid}\n`);
    const s = new ProcessSampler({ pidFile, procRoot: '/proc' });
    const live = await s.sample();
    expect(live.ok && live.metrics.pid).toBe(process.pid);
    expect(live.ok && live.metrics.rssBytes).toBeGreaterThan(0);
    writeFileSync(pidFile, '999999999\n');
    expect(await s.sample()).toEqual({ ok: false, reason: 'process 999999999 is not running' });
    writeFileSync(pidFile, 'not a pid\n');
    const bad = await s.sample();
    expect(bad.ok).toBe(false);
    expect(!bad.ok && bad.reason).toContain('LW_AGENT_PID_FILE');
  });

  it.each(['Z', 'X'])(
    'reports a process in state %s (exited, not reaped) as not running, as a missing one',
    async (state) => {
      // It was reported running with cpuCores 0 and rssBytes 0 (a zombie has no VmRSS),
      // so the verdict never went down.
      const root = tmp();
      mkdirSync(path.join(root, '1234'));
      writeFileSync(path.join(root, '1234/stat'), STAT(100, 0));
      writeFileSync(path.join(root, '1234/status'), 'VmRSS:\t 51200 kB\n');
      const s = new ProcessSampler({ pid: 1234, procRoot: root });
      expect((await s.sample()).ok).toBe(true);
      writeFileSync(path.join(root, '1234/stat'), STAT(100, 0, state));
      writeFileSync(path.join(root, '1234/status'), `State:\t${state} (zombie)\n`);
      expect(await s.sample()).toEqual({
        ok: false,
        reason: `process 1234 is not running (state ${state})`,
      });
    },
  );

  it('reports a real zombie as not running', async () => {
    // sh starts a child, then becomes `sleep`, which never reaps it; the child exits once
    // its parent is `sleep` (before, sh might reap it).
    const script =
      'p=$$; (while read -r c < /proc/$p/comm && [ "$c" != sleep ]; do :; done) & echo $!; exec sleep 30';
    const parent = spawn('sh', ['-c', script], {
      stdio: ['ignore', 'pipe', 'ignore'],
    });
    try {
      let out = '';
      parent.stdout.on('data', (d: Buffer) => (out += d.toString()));
      await until(() => out.includes('\n'), 5000, 'the child pid');
      const pid = Number(out.trim());
      const state = (): string => readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]![0]!;
      await until(() => state() === 'Z', 5000, 'the child to exit');
      const s = new ProcessSampler({ pid, procRoot: '/proc' });
      expect(await s.sample()).toEqual({
        ok: false,
        reason: `process ${pid} is not running (state Z)`,
      });
    } finally {
      parent.kill('SIGKILL');
    }
  });

  it('readPidFile throws a coded error', async () => {
    await expect(readPidFile('/nonexistent/x.pid')).rejects.toBeInstanceOf(AgentError);
  });

  it.each<[string, number | undefined]>([
    ['1234\n', 1234],
    ['  42  ', 42],
    ['007', 7],
    ['9007199254740991', Number.MAX_SAFE_INTEGER],
    // Number() read these: ` 1e0 ` as PID 1 (init), `0x35a6` as 13734.
    [' 1e0 ', undefined],
    ['0x35a6', undefined],
    ['0b1', undefined],
    ['0o7', undefined],
    ['1.0', undefined],
    ['+5', undefined],
    ['Infinity', undefined],
    ['1 2', undefined],
    ['', undefined],
    ['0', undefined],
    ['9007199254740993', undefined],
    ['123456789012345678901', undefined],
  ])('parsePid(%j) is %s', (text, pid) => {
    expect(parsePid(text)).toBe(pid);
  });

  it('a PID file holding an exponent or hex form holds no process id', async () => {
    const root = tmp();
    for (const text of [' 1e0 \n', `0x${process.pid.toString(16)}\n`]) {
      const f = path.join(root, 'svc.pid');
      writeFileSync(f, text);
      await expect(readPidFile(f)).rejects.toThrow(
        `LW_AGENT_PID_FILE: ${f} does not hold a process id`,
      );
    }
  });
});

const hasMkfifo = spawnSync('mkfifo', ['--version']).error === undefined;

// The application owns its --service-pid-file and may put anything there.
// readFile() took it whole, every sample: a named pipe blocked a libuv thread
// for good (no report again, and no exit on SIGTERM), a 256 MiB file cost
// seconds of CPU and 1.36 GB RSS. Each is now "no valid PID", at once.
describe('process sampler: a PID file that is no PID file', () => {
  let dir: string;
  beforeEach(() => {
    dir = mkdtempSync(path.join(os.tmpdir(), 'lw-pidfile-'));
  });
  afterEach(() => rmSync(dir, { recursive: true, force: true }));

  const sample = (pidFile: string): Promise<ProcessSample | 'still pending'> =>
    within(new ProcessSampler({ pidFile, procRoot: '/proc' }).sample(), 3000);

  (hasMkfifo ? it : it.skip)('a named pipe with no writer', async () => {
    const fifo = path.join(dir, 'svc.pid');
    expect(spawnSync('mkfifo', [fifo]).status).toBe(0);
    try {
      expect(await sample(fifo)).toEqual({
        ok: false,
        reason: `LW_AGENT_PID_FILE: ${fifo} is not a regular file`,
      });
    } finally {
      // A reader still blocked on the pipe (the bug) gets its end of file, so jest can exit.
      try {
        closeSync(openSync(fifo, constants.O_WRONLY | constants.O_NONBLOCK));
      } catch {
        // no reader left: nothing blocked
      }
    }
  });

  it('a 256 MiB file (sparse) starting with a valid PID: only the first bytes are read', async () => {
    const big = path.join(dir, 'svc.pid');
    writeFileSync(big, `${process.pid}\n`);
    truncateSync(big, 256 * 1024 * 1024);
    expect(await sample(big)).toEqual({
      ok: false,
      reason: `LW_AGENT_PID_FILE: ${big} is over ${MAX_PID_FILE_BYTES} bytes: no process id`,
    });
  });

  it('a directory', async () => {
    const sub = path.join(dir, 'svc.pid');
    mkdirSync(sub);
    expect(await sample(sub)).toEqual({
      ok: false,
      reason: `LW_AGENT_PID_FILE: ${sub} is not a regular file`,
    });
  });

  it('still reads a PID file of exactly the limit, and refuses one byte more', async () => {
    const f = path.join(dir, 'svc.pid');
    const pid = String(process.pid);
    writeFileSync(f, pid + ' '.repeat(MAX_PID_FILE_BYTES - pid.length - 1) + '\n');
    expect(await readPidFile(f)).toBe(process.pid);
    writeFileSync(f, pid + ' '.repeat(MAX_PID_FILE_BYTES - pid.length) + '\n');
    await expect(readPidFile(f)).rejects.toThrow(`over ${MAX_PID_FILE_BYTES} bytes`);
  });
});
