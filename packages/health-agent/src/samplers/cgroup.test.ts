import { execFileSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { createAgent } from '../agent';
import { CgroupSampler, parseCpuMax } from './cgroup';

function fixture(files: Record<string, string>): string {
  const root = mkdtempSync(path.join(os.tmpdir(), 'lw-cgroup-'));
  for (const [rel, text] of Object.entries(files)) {
    mkdirSync(path.dirname(path.join(root, rel)), { recursive: true });
    writeFileSync(path.join(root, rel), text);
  }
  return root;
}

describe('parseCpuMax', () => {
  it.each([
    ['max 100000\n', undefined],
    ['200000 100000\n', 2],
    ['50000 100000', 0.5],
    ['150000', 1.5], // the period is the kernel's default
    ['', undefined],
    // Digits only, as every other cgroup figure: Number() read these as 0.00016 cores,
    // 1e-305, 1e-5 and 0.5.
    ['0x10 100000', undefined],
    ['1e-300 100000', undefined],
    ['1 0x186a0', undefined],
    ['50000 1e5', undefined],
    ['+50000 100000', undefined],
    ['50000.5 100000', undefined],
    ['-1 100000', undefined],
    ['0 100000', undefined],
    ['50000 0', undefined],
    ['99999999999999999999 100000', undefined], // past 2^53
  ])('%j → %s cores', (text, cores) => {
    expect(parseCpuMax(text)).toBe(cores);
  });
});

describe('CgroupSampler', () => {
  const roots: string[] = [];
  afterAll(() => roots.forEach((r) => rmSync(r, { recursive: true, force: true })));

  it('reads cgroup v2 limits and computes utilization against the quota', async () => {
    const root = fixture({
      'cgroup.controllers': 'cpu memory\n',
      'cpu.max': '150000 100000\n',
      'cpu.stat': 'usage_usec 1000000\nuser_usec 600000\nsystem_usec 400000\n',
      'memory.max': '536870912\n',
      'memory.current': '300000000\n',
      'memory.stat': 'anon 200000000\ninactive_file 31564800\nactive_file 1000\n',
    });
    roots.push(root);
    const procRoot = fixture({ 'self/cgroup': '0::/\n' });
    roots.push(procRoot);
    let t = 0;
    const s = new CgroupSampler({ root, procRoot, now: () => t });
    expect(await s.detect()).toBe(2);
    const first = await s.sample();
    expect(first).toEqual({
      cpuLimitCores: 1.5,
      memoryLimitBytes: 536870912,
      memoryUsedBytes: 300000000 - 31564800,
      memoryUtilization: (300000000 - 31564800) / 536870912,
    });
    // One second later, 0.75 s more CPU time used: half of a 1.5-core quota.
    t = 1000;
    writeFileSync(path.join(root, 'cpu.stat'), 'usage_usec 1750000\n');
    expect((await s.sample())?.cpuUtilization).toBeCloseTo(0.5, 10);
  });

  it('reports no limit for "max" and follows a process into its own v2 cgroup', async () => {
    const root = fixture({
      'cgroup.controllers': 'cpu memory\n',
      'cpu.max': 'max 100000\n',
      'memory.max': 'max\n',
      'memory.current': '1\n',
      'app.slice/cpu.max': '100000 100000\n',
      'app.slice/memory.max': '1000\n',
      'app.slice/memory.current': '250\n',
    });
    roots.push(root);
    const procRoot = fixture({ '4242/cgroup': '0::/app.slice\n', 'self/cgroup': '0::/\n' });
    roots.push(procRoot);
    const atRoot = await new CgroupSampler({ root, procRoot }).sample();
    expect(atRoot).toEqual({ memoryUsedBytes: 1 });
    const inApp = await new CgroupSampler({ root, procRoot, pid: () => 4242 }).sample();
    expect(inApp).toMatchObject({
      cpuLimitCores: 1,
      memoryLimitBytes: 1000,
      memoryUsedBytes: 250,
      memoryUtilization: 0.25,
    });
  });

  it("reads the root without a watched pid, not the agent's own group", async () => {
    // A systemd host: the agent in its unit (examples/systemd: CPUQuota=10%, MemoryMax=160M).
    const root = fixture({
      'cgroup.controllers': 'cpu memory\n',
      'cpu.stat': 'usage_usec 999999999\n',
      'system.slice/loadwise-agent.service/cpu.max': '10000 100000\n',
      'system.slice/loadwise-agent.service/memory.max': '167772160\n',
      'system.slice/loadwise-agent.service/memory.current': '152000000\n',
    });
    roots.push(root);
    const procRoot = fixture({ 'self/cgroup': '0::/system.slice/loadwise-agent.service\n' });
    roots.push(procRoot);
    // The host's root has no limits: no figures, rather than the agent's (memory 91%).
    expect(await new CgroupSampler({ root, procRoot }).sample()).toBeUndefined();
  });

  it('takes no CPU delta across two cgroups (the root, then the service its pid is in)', async () => {
    const root = fixture({
      'cgroup.controllers': 'cpu memory\n',
      'cpu.max': '100000 100000\n',
      'cpu.stat': 'usage_usec 1000\n',
      'memory.current': '1\n',
      'app.slice/cpu.max': '100000 100000\n',
      'app.slice/cpu.stat': 'usage_usec 900000000\n',
      'app.slice/memory.current': '1\n',
    });
    roots.push(root);
    const procRoot = fixture({ '4242/cgroup': '0::/app.slice\n' });
    roots.push(procRoot);
    let t = 0;
    // The service's pid is not known at first (the root is read), then it is.
    const service: { pid?: number } = {};
    const s = new CgroupSampler({ root, procRoot, now: () => t, pid: () => service.pid });
    expect((await s.sample())?.cpuUtilization).toBeUndefined();
    service.pid = 4242;
    t = 1000;
    // The agent's 1 ms against the service's 900 s: no figure, not 100%.
    expect((await s.sample())?.cpuUtilization).toBeUndefined();
    t = 2000;
    writeFileSync(path.join(root, 'app.slice/cpu.stat'), 'usage_usec 900250000\n');
    expect((await s.sample())?.cpuUtilization).toBeCloseTo(0.25, 10);
  });

  it('reads an empty, signed or too large figure as unknown, never as 0 or past 2^53', async () => {
    const root = fixture({
      'cgroup.controllers': 'cpu memory\n',
      'cpu.max': '0x10 100000\n', // was a limit of 0.00016 cores
      'memory.max': '\n', // was a 0-byte limit
      'memory.current': '99999999999999999999\n', // past 2^53: cost the whole report
    });
    roots.push(root);
    const procRoot = fixture({ 'self/cgroup': '0::/\n' });
    roots.push(procRoot);
    expect(await new CgroupSampler({ root, procRoot }).sample()).toBeUndefined();
  });

  it('falls back to cgroup v1 files and treats the huge default as unlimited', async () => {
    const root = fixture({
      'cpu/cpu.cfs_quota_us': '-1\n',
      'cpu/cpu.cfs_period_us': '100000\n',
      'cpuacct/cpuacct.usage': '5000000000\n',
      'memory/memory.limit_in_bytes': '9223372036854771712\n',
      'memory/memory.usage_in_bytes': '400000000\n',
      'memory/memory.stat': 'cache 1\ntotal_inactive_file 100000000\n',
    });
    roots.push(root);
    const s = new CgroupSampler({ root, procRoot: root });
    expect(await s.detect()).toBe(1);
    expect(await s.sample()).toEqual({ memoryUsedBytes: 300000000 });

    writeFileSync(path.join(root, 'cpu/cpu.cfs_quota_us'), '200000\n');
    writeFileSync(path.join(root, 'memory/memory.limit_in_bytes'), '1000000000\n');
    let t = 0;
    const limited = new CgroupSampler({ root, procRoot: root, now: () => t });
    await limited.sample();
    t = 2000;
    writeFileSync(path.join(root, 'cpuacct/cpuacct.usage'), String(5e9 + 2e9)); // 2 s of CPU in 2 s = 1 of 2 cores
    expect(await limited.sample()).toMatchObject({
      cpuLimitCores: 2,
      cpuUtilization: 0.5,
      memoryLimitBytes: 1e9,
      memoryUtilization: 0.3,
    });
  });

  it('reads v1 CPU utilisation past 2^53 ns of cpuacct.usage (104 CPU-days)', async () => {
    // The safe-integer check meant for limits dropped the figure for good from there on:
    // an 8-core group reaches it in 13 days.
    for (const [before, after] of [
      ['9000000000000000', '9000002000000000'], // under 2^53, as before
      ['9100000000000000', '9100002000000000'], // just past 2^53
      ['12345678901234567890', '12345678903234567890'], // near the u64 counter's end
    ]) {
      const root = fixture({
        'cpu/cpu.cfs_quota_us': '200000\n',
        'cpu/cpu.cfs_period_us': '100000\n',
        'cpuacct/cpuacct.usage': `${before}\n`,
        'memory/memory.limit_in_bytes': '1073741824\n',
        'memory/memory.usage_in_bytes': '536870912\n',
      });
      roots.push(root);
      let t = 0;
      const s = new CgroupSampler({ root, procRoot: root, now: () => t });
      await s.sample();
      t = 2000;
      writeFileSync(path.join(root, 'cpuacct/cpuacct.usage'), `${after}\n`); // 2 s in 2 s of 2 cores
      const sample = await s.sample();
      expect([before, sample?.cpuLimitCores]).toEqual([before, 2]);
      expect([before, sample?.cpuUtilization]).toEqual([before, expect.closeTo(0.5, 5)]);
    }
  });

  it('a named pipe or an oversized file in place of a cgroup file fails the read, never a hang', async () => {
    const files = {
      'cgroup.controllers': 'cpu memory\n',
      'cpu.stat': 'usage_usec 1000000\n',
      'memory.max': '536870912\n',
      'memory.current': '300000000\n',
    };
    const procRoot = fixture({ 'self/cgroup': '0::/\n' });
    roots.push(procRoot);
    // Past the bound: not 70 KiB read every sample.
    const big = fixture({ ...files, 'memory.stat': `anon 1\n${'x'.repeat(70_000)}\n` });
    roots.push(big);
    await expect(new CgroupSampler({ root: big, procRoot }).sample()).rejects.toThrow(
      `${big}/memory.stat: too large`,
    );
    // A FIFO nobody writes to: readFile() waited on it for good (the agent never connected).
    const fifo = fixture(files);
    roots.push(fifo);
    execFileSync('mkfifo', [path.join(fifo, 'cpu.max')]);
    const s = new CgroupSampler({ root: fifo, procRoot, now: () => 0 });
    expect(await s.detect()).toBe(2);
    await expect(s.sample()).rejects.toThrow(`${fifo}/cpu.max: not a regular file`);
  });

  it('a file there but unreadable fails the read, naming it; one not there is unknown', async () => {
    // Every read error was "absent": a v2 tree whose files were directories left the
    // cgroup block out of every report, and the agent's "cgroup read failed" never fired.
    const files = ['cpu.max', 'cpu.stat', 'memory.max', 'memory.current', 'memory.stat'];
    const root = fixture({ 'cgroup.controllers': 'cpu memory\n' });
    roots.push(root);
    for (const f of files) mkdirSync(path.join(root, f));
    const procRoot = fixture({ 'self/cgroup': '0::/\n' });
    roots.push(procRoot);
    await expect(new CgroupSampler({ root, procRoot }).sample()).rejects.toThrow(
      `${root}/cpu.max: not a regular file (and 4 more)`,
    );
    // v1 too, the first failure in a fixed order whichever read ends first.
    const v1 = fixture({ 'cpu/cpu.cfs_period_us': '100000\n' });
    roots.push(v1);
    mkdirSync(path.join(v1, 'memory/memory.usage_in_bytes'), { recursive: true });
    await expect(new CgroupSampler({ root: v1, procRoot: v1 }).sample()).rejects.toThrow(
      new RegExp(`^${v1}/memory/memory.usage_in_bytes: not a regular file$`),
    );
    // Absent files (ENOENT: a controller not enabled) are still just unknown.
    rmSync(path.join(root, 'cpu.max'), { recursive: true });
    rmSync(path.join(root, 'cpu.stat'), { recursive: true });
    rmSync(path.join(root, 'memory.max'), { recursive: true });
    rmSync(path.join(root, 'memory.stat'), { recursive: true });
    rmSync(path.join(root, 'memory.current'), { recursive: true });
    writeFileSync(path.join(root, 'memory.current'), '42\n');
    expect(await new CgroupSampler({ root, procRoot }).sample()).toEqual({ memoryUsedBytes: 42 });
  });

  it('an agent warns "cgroup read failed" naming the file, and reports without the block', async () => {
    const root = fixture({ 'cgroup.controllers': 'cpu memory\n', 'memory.current': '1\n' });
    roots.push(root);
    mkdirSync(path.join(root, 'memory.max'));
    const agent = createAgent({ backendId: 'cg-unreadable', cgroup: { root } });
    const warnings: string[] = [];
    agent.on('warning', (w: string) => warnings.push(w));
    try {
      const body = await agent.sample();
      expect(body.cgroup).toBeUndefined();
      expect(warnings).toEqual([`cgroup read failed: ${root}/memory.max: not a regular file`]);
    } finally {
      await agent.stop({ graceMs: 0 });
    }
  });

  it('returns undefined without a cgroup filesystem', async () => {
    const root = fixture({ 'unrelated.txt': '' });
    roots.push(root);
    expect(await new CgroupSampler({ root, procRoot: root }).sample()).toBeUndefined();
  });
});
