/**
 * bench/lib/cgroups.ts on the machine's real cgroup filesystem: a group is
 * created with a quota, a short-lived child moved in burns CPU, the group's
 * usage counter sees it, and the group is removed. Needs root and a writable
 * cpu controller; elsewhere the test is skipped and says why.
 */
import { spawn } from 'node:child_process';
import { existsSync, lstatSync, mkdtempSync, readlinkSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { cgroupProblem, createCpuGroup, type CpuGroup } from './cgroups';

const problem = cgroupProblem();
if (problem) console.log(`bench/lib/cgroups.test.ts skipped: ${problem}`);

(problem ? describe.skip : describe)('CPU cgroups (root, writable cgroup fs)', () => {
  let group: CpuGroup | undefined;
  let dir: string;

  beforeAll(() => {
    dir = mkdtempSync(join(tmpdir(), 'loadwise-cgroups-test-'));
  });

  afterAll(async () => {
    await group?.remove();
    rmSync(dir, { recursive: true, force: true });
  });

  it('creates a group with a quota, counts a member’s CPU, and removes it', async () => {
    group = createCpuGroup('test', { quotaCores: 0.5, periodUs: 10_000 });
    expect(group.name).toMatch(new RegExp(`^loadwise-bench-${process.pid}-\\d+-test$`));
    expect(group.limits()).toEqual({ quotaUs: 5_000, periodUs: 10_000 });
    expect(group.usageUs()).toBe(0);

    // Waits for a line on stdin, then burns ~100 ms of CPU time and exits:
    // it is in the group before it burns anything.
    const child = spawn(
      process.execPath,
      [
        '-e',
        "process.stdin.once('data', () => { const s = process.cpuUsage(); " +
          'while (process.cpuUsage(s).user < 100000); process.exit(0); });',
      ],
      { stdio: ['pipe', 'ignore', 'inherit'] },
    );
    const exited = new Promise<number | null>((resolve) => child.once('exit', resolve));
    group.addPid(child.pid!);
    expect(group.pids()).toEqual([child.pid]);
    child.stdin!.write('go\n');
    expect(await exited).toBe(0);

    // At least the burn itself, counted by the group's own accounting.
    expect(group.usageUs()).toBeGreaterThanOrEqual(100_000);
    expect(group.pids()).toEqual([]);

    const root = group.agentRoot(dir);
    if (group.version === 1) {
      expect(readlinkSync(join(root, 'cpu'))).toBe(group.cpuDir);
      expect(readlinkSync(join(root, 'cpuacct'))).toBe(group.acctDir);
      expect(lstatSync(join(root, 'cpu')).isSymbolicLink()).toBe(true);
    } else {
      expect(root).toBe(group.cpuDir);
    }

    const g = group;
    group = undefined;
    await g.remove();
    expect(existsSync(g.cpuDir)).toBe(false);
    expect(existsSync(g.acctDir)).toBe(false);
  });

  it('kills a member that is still running when the group is removed', async () => {
    group = createCpuGroup('busy', { quotaCores: 0.1, periodUs: 10_000 });
    const child = spawn('sh', ['-c', 'while :; do :; done'], { stdio: 'ignore' });
    const exited = new Promise<NodeJS.Signals | null>((resolve) =>
      child.once('exit', (_code, signal) => resolve(signal)),
    );
    group.addPid(child.pid!);
    const g = group;
    group = undefined;
    await g.remove();
    expect(await exited).toBe('SIGKILL');
    expect(existsSync(g.cpuDir)).toBe(false);
  });
});
