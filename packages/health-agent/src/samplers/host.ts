import { readFile } from 'node:fs/promises';
import os from 'node:os';
import type { HostMetrics } from '@loadwise/protocol';
import { clamp01, cpuUtilizationBetween, readProcStatCpu, type CpuTimes } from './proc-stat';

/**
 * - 'systeminformation': `si.currentLoad()` and `si.mem()`, as the issue names.
 *   On Linux `currentLoad()` runs `execSync('cat /proc/stat | grep cpu')` on every
 *   call (systeminformation 5.x lib/cpu.js getLoad): a shell spawn that blocks the
 *   event loop for a few ms each sample. See docs/agent.md for its measured cost.
 * - 'proc': the same figures read straight from /proc/stat and /proc/meminfo
 *   (no child process); falls back to os.cpus() / os.freemem() off Linux.
 */
export type HostSource = 'systeminformation' | 'proc';
export const HOST_SOURCES: readonly HostSource[] = ['systeminformation', 'proc'];

export interface HostSamplerOptions {
  source: HostSource;
  /** Root of procfs; tests point it at a fixture directory. */
  procRoot: string;
}

export function parseMeminfo(
  text: string,
): { totalBytes: number; availableBytes: number } | undefined {
  let total: number | undefined;
  let available: number | undefined;
  let free = 0;
  let buffers = 0;
  let cached = 0;
  for (const line of text.split('\n')) {
    const m = /^(\w+):\s+(\d+)\s*kB/.exec(line);
    if (!m) continue;
    const bytes = Number(m[2]) * 1024;
    switch (m[1]) {
      case 'MemTotal':
        total = bytes;
        break;
      case 'MemAvailable':
        available = bytes;
        break;
      case 'MemFree':
        free = bytes;
        break;
      case 'Buffers':
        buffers = bytes;
        break;
      case 'Cached':
        cached = bytes;
        break;
    }
  }
  if (!total) return undefined;
  // MemAvailable exists since Linux 3.14; older kernels get the classic estimate.
  return { totalBytes: total, availableBytes: available ?? free + buffers + cached };
}

function osCpuTimes(): CpuTimes {
  let busy = 0;
  let total = 0;
  for (const cpu of os.cpus()) {
    const t = cpu.times;
    const all = t.user + t.nice + t.sys + t.idle + t.irq;
    total += all;
    busy += all - t.idle;
  }
  // os.cpus() counts ms; /proc/stat counts 10 ms jiffies. Same unit for MIN_DELTA_TICKS.
  return { busy: busy / 10, total: total / 10 };
}

/** Loaded only when chosen: requiring systeminformation alone adds ~10 MB of RSS (measured, docs/agent.md). */
function systeminformation(): typeof import('systeminformation') {
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  return require('systeminformation') as typeof import('systeminformation');
}

/** 20 jiffies: 100 ms on 2 CPUs, 5% resolution at worst. */
const MIN_DELTA_TICKS = 20;

export class HostSampler {
  private prevCpu: CpuTimes | undefined;
  private lastCpuUtilization: number | undefined;
  private readonly cpuCount = os.availableParallelism();

  constructor(private readonly opts: HostSamplerOptions) {}

  /** Takes the first CPU reading so the next sample has a delta. */
  async prime(): Promise<void> {
    if (this.opts.source === 'systeminformation') await systeminformation().currentLoad();
    else this.prevCpu = await this.readCpu();
  }

  async sample(): Promise<HostMetrics> {
    return this.opts.source === 'systeminformation' ? this.sampleSi() : this.sampleProc();
  }

  private async sampleSi(): Promise<HostMetrics> {
    const si = systeminformation();
    const [load, mem] = await Promise.all([si.currentLoad(), si.mem()]);
    const total = mem.total || 1;
    return {
      cpuUtilization: clamp01(load.currentLoad / 100),
      memoryUtilization: clamp01(1 - mem.available / total),
      memoryAvailableBytes: Math.max(0, Math.round(mem.available)),
      loadAverage1m: os.loadavg()[0] ?? 0,
      cpuCount: this.cpuCount,
    };
  }

  private async sampleProc(): Promise<HostMetrics> {
    const [cpu, mem] = await Promise.all([this.readCpu(), this.readMem()]);
    // /proc/stat counts in jiffies (1/100 s per CPU): a delta of a few jiffies
    // reads as 0% or 100%. Below MIN_DELTA_TICKS keep the baseline and repeat
    // the last figure (or, before any, the since-boot average).
    let util: number;
    if (this.prevCpu && cpu.total - this.prevCpu.total >= MIN_DELTA_TICKS) {
      util = cpuUtilizationBetween(this.prevCpu, cpu) ?? 0;
      this.prevCpu = cpu;
    } else {
      util = this.lastCpuUtilization ?? (cpu.total > 0 ? clamp01(cpu.busy / cpu.total) : 0);
      this.prevCpu ??= cpu;
    }
    this.lastCpuUtilization = util;
    return {
      cpuUtilization: util,
      memoryUtilization: clamp01(1 - mem.availableBytes / (mem.totalBytes || 1)),
      memoryAvailableBytes: Math.max(0, Math.round(mem.availableBytes)),
      loadAverage1m: os.loadavg()[0] ?? 0,
      cpuCount: this.cpuCount,
    };
  }

  private async readCpu(): Promise<CpuTimes> {
    return (await readProcStatCpu(this.opts.procRoot)) ?? osCpuTimes();
  }

  private async readMem(): Promise<{ totalBytes: number; availableBytes: number }> {
    try {
      const parsed = parseMeminfo(await readFile(`${this.opts.procRoot}/meminfo`, 'utf8'));
      if (parsed) return parsed;
    } catch {
      // not Linux, or procfs not mounted: Node's own figures
    }
    return { totalBytes: os.totalmem(), availableBytes: os.freemem() };
  }
}
