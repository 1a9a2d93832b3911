import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { HostSampler, parseMeminfo } from './host';
import { cpuUtilizationBetween, parseProcStatCpu } from './proc-stat';

const statLine = (user: number, system: number, idle: number, iowait = 0): string =>
  `cpu  ${user} 0 ${system} ${idle} ${iowait} 0 0 0 0 0\ncpu0 1 2 3 4 5 6 7 8 9 10\n`;

describe('host sampler', () => {
  it('parses /proc/stat and computes busy share between readings', () => {
    const a = parseProcStatCpu(statLine(100, 100, 800));
    const b = parseProcStatCpu(statLine(250, 150, 900, 100));
    expect(a).toEqual({ busy: 200, total: 1000 });
    // +200 busy, +200 idle/iowait → 0.5
    expect(cpuUtilizationBetween(a, b)).toBe(0.5);
    expect(cpuUtilizationBetween(a, a)).toBeUndefined();
    expect(parseProcStatCpu('intr 1 2 3\n')).toBeUndefined();
  });

  it('parses /proc/meminfo, with the pre-3.14 estimate when MemAvailable is absent', () => {
    expect(parseMeminfo('MemTotal: 1000 kB\nMemFree: 100 kB\nMemAvailable: 400 kB\n')).toEqual({
      totalBytes: 1024000,
      availableBytes: 409600,
    });
    expect(
      parseMeminfo('MemTotal: 1000 kB\nMemFree: 100 kB\nBuffers: 50 kB\nCached: 150 kB\n'),
    ).toEqual({
      totalBytes: 1024000,
      availableBytes: 300 * 1024,
    });
  });

  it('samples a fixture procfs (source proc)', async () => {
    const root = mkdtempSync(path.join(os.tmpdir(), 'lw-host-'));
    try {
      writeFileSync(path.join(root, 'stat'), statLine(100, 100, 800));
      writeFileSync(path.join(root, 'meminfo'), 'MemTotal: 1000 kB\nMemAvailable: 250 kB\n');
      const s = new HostSampler({ source: 'proc', procRoot: root });
      await s.prime();
      writeFileSync(path.join(root, 'stat'), statLine(400, 100, 900));
      const h = await s.sample();
      expect(h.cpuUtilization).toBe(0.75);
      expect(h.memoryUtilization).toBe(0.75);
      expect(h.memoryAvailableBytes).toBe(250 * 1024);
      expect(h.cpuCount).toBe(os.availableParallelism());
      expect(h.loadAverage1m).toBeGreaterThanOrEqual(0);
    } finally {
      rmSync(root, { recursive: true, force: true });
    }
  });

  it('does not report a delta of a few jiffies as 0% or 100%', async () => {
    const root = mkdtempSync(path.join(os.tmpdir(), 'lw-host-'));
    try {
      writeFileSync(path.join(root, 'stat'), statLine(300, 100, 600));
      writeFileSync(path.join(root, 'meminfo'), 'MemTotal: 1000 kB\nMemAvailable: 250 kB\n');
      const s = new HostSampler({ source: 'proc', procRoot: root });
      await s.prime();
      writeFileSync(path.join(root, 'stat'), statLine(303, 100, 600)); // 3 busy jiffies of 3
      expect((await s.sample()).cpuUtilization).toBeCloseTo(403 / 1003, 10); // the since-boot average instead
      writeFileSync(path.join(root, 'stat'), statLine(310, 100, 690)); // 100 jiffies since prime, 10 busy
      expect((await s.sample()).cpuUtilization).toBe(0.1);
    } finally {
      rmSync(root, { recursive: true, force: true });
    }
  });

  it('samples the real host with systeminformation', async () => {
    const s = new HostSampler({ source: 'systeminformation', procRoot: '/proc' });
    await s.prime();
    const h = await s.sample();
    expect(h.cpuUtilization).toBeGreaterThanOrEqual(0);
    expect(h.cpuUtilization).toBeLessThanOrEqual(1);
    expect(h.memoryUtilization).toBeGreaterThan(0);
    expect(h.memoryAvailableBytes).toBeGreaterThan(0);
  });
});
