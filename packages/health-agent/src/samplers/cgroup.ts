import { access } from 'node:fs/promises';
import type { CgroupMetrics } from '@loadwise/protocol';
import { readRegularFile } from './bounded-read';
import { clamp01 } from './proc-stat';

/**
 * Container limits, so utilization is relative to what the service may use.
 *
 * cgroup v2 (Documentation/admin-guide/cgroup-v2.rst): cpu.max "<quota|max>
 * <period>", cpu.stat usage_usec, memory.max "<bytes|max>", memory.current,
 * memory.stat inactive_file. cgroup v1: cpu/cpu.cfs_quota_us (-1 = none),
 * cpu/cpu.cfs_period_us, cpuacct/cpuacct.usage (ns), memory/memory.limit_in_bytes
 * (a page-aligned huge number = none), memory/memory.usage_in_bytes,
 * memory/memory.stat total_inactive_file.
 *
 * Memory "used" is the working set (usage minus inactive file cache), as
 * cAdvisor, kubelet and `docker stats` report it: reclaimable page cache is
 * not pressure.
 */
export interface CgroupSamplerOptions {
  /** cgroup filesystem mount point; tests point it at a fixture directory. */
  root: string;
  /** procfs root, to find a process's own v2 cgroup. */
  procRoot: string;
  /**
   * Process whose cgroup to read (v2). Without one, the root: in a container with its own
   * cgroup namespace that is the container's group; never the agent's own group, which on a
   * systemd host is the agent's unit and its limits, not the service's.
   */
  pid?: () => number | undefined;
  now?: () => number;
}

/** v1 "no limit" is LONG_MAX rounded down to a page; anything this large is unlimited. */
const V1_UNLIMITED_BYTES = 2 ** 60;

/** The most read of a cgroup file: memory.stat, the largest, is a few KiB. */
export const MAX_CGROUP_FILE_BYTES = 64 * 1024;

/**
 * Errors of a read that mean the file is not there: a controller not enabled (no
 * cpu.max in the root group), a process gone while its /proc/<pid>/cgroup was read.
 */
const ABSENT = new Set(['ENOENT', 'ESRCH']);

/**
 * A cgroup or procfs file's text, undefined when it is not there, or an Error naming
 * the file and why it could not be read (bounded-read.ts: a named pipe, anything but
 * a regular file, more than MAX_CGROUP_FILE_BYTES, EACCES...). Every failure used to be
 * undefined, as if the file were absent: a tree of unreadable files (directories in
 * their place) left the cgroup block out of every report without a word.
 */
async function readText(path: string): Promise<string | undefined> {
  const r = await readRegularFile(path, MAX_CGROUP_FILE_BYTES);
  if ('text' in r) return r.text;
  if (ABSENT.has(r.error)) return undefined;
  throw new Error(`${path}: ${r.error}`);
}

/**
 * The texts of `paths`, read side by side. A read that fails fails the whole (the agent
 * warns "cgroup read failed" and leaves the block out), with the first failure in the
 * order given, so that the message is the same every sample and its warning is
 * repeated once a minute, not each time another read loses the race.
 */
async function readAll(paths: readonly string[]): Promise<(string | undefined)[]> {
  const results = await Promise.allSettled(paths.map(readText));
  const failed = results.filter((r) => r.status === 'rejected');
  if (failed.length > 0) {
    const first = (failed[0]!.reason as Error).message;
    throw new Error(failed.length === 1 ? first : `${first} (and ${failed.length - 1} more)`);
  }
  return results.map((r) => (r as PromiseFulfilledResult<string | undefined>).value);
}

async function exists(path: string): Promise<boolean> {
  try {
    await access(path);
    return true;
  } catch {
    return false;
  }
}

/**
 * A figure of a cgroup file: a non-negative safe integer, else unknown. Number() read an
 * empty file as 0 (a 0-byte memory limit) and a value past 2^53 cost the whole report.
 */
function num(text: string | undefined): number | undefined {
  const t = text?.trim();
  if (!t || !/^\d+$/.test(t)) return undefined;
  const n = Number(t);
  return Number.isSafeInteger(n) ? n : undefined;
}

/**
 * A cumulative counter of a cgroup file (v1 `cpuacct.usage`, ns): digits, any size. Only
 * its deltas are used, and a double keeps them to a few ns at 2^53 (about 2 µs at 2^64,
 * the counter's own bound). num()'s safe-integer check dropped cgroup CPU utilisation for
 * good once the group had used 2^53 ns, 104 CPU-days: 13 days for an 8-core group.
 */
function counter(text: string | undefined): number | undefined {
  const t = text?.trim();
  if (!t || !/^\d+$/.test(t)) return undefined;
  const n = Number(t);
  return Number.isFinite(n) ? n : undefined;
}

function statField(text: string | undefined, field: string): number | undefined {
  if (!text) return undefined;
  const m = new RegExp(`^${field} (\\d+)$`, 'm').exec(text);
  return m ? Number(m[1]) : undefined;
}

/**
 * cpu.max's limit in cores: quota / period, each a figure as num() reads one, else
 * unknown (as is "max", or a zero quota or period). Number() read `0x10 100000` as
 * 0.00016 cores and `1e-300 100000` as 1e-305.
 */
export function parseCpuMax(text: string | undefined): number | undefined {
  if (!text) return undefined;
  const [quota, period] = text.trim().split(/\s+/);
  if (quota === undefined || quota === 'max') return undefined;
  const q = num(quota);
  const p = num(period ?? '100000');
  return q !== undefined && q > 0 && p !== undefined && p > 0 ? q / p : undefined;
}

interface Raw {
  /** Which cgroup was read: a CPU-time delta means something only between reads of one. */
  source: string;
  cpuLimitCores?: number;
  /** Cumulative CPU time, µs. */
  cpuUsageUs?: number;
  memoryLimitBytes?: number;
  memoryUsedBytes?: number;
}

export type CgroupVersion = 1 | 2 | undefined;

export class CgroupSampler {
  private version: CgroupVersion | null = null;
  private prev: { usageUs: number; atMs: number; source: string } | undefined;
  private readonly now: () => number;

  constructor(private readonly opts: CgroupSamplerOptions) {
    this.now = opts.now ?? (() => performance.now());
  }

  async detect(): Promise<CgroupVersion> {
    if (this.version !== null) return this.version;
    if (await exists(`${this.opts.root}/cgroup.controllers`)) this.version = 2;
    else if ((await exists(`${this.opts.root}/memory`)) || (await exists(`${this.opts.root}/cpu`)))
      this.version = 1;
    else this.version = undefined;
    return this.version;
  }

  /**
   * Undefined when there is no cgroup filesystem or none of its files is there; rejects
   * when one that is there cannot be read (the agent then warns and leaves the block out).
   */
  async sample(): Promise<CgroupMetrics | undefined> {
    const version = await this.detect();
    if (version === undefined) return undefined;
    const raw = version === 2 ? await this.readV2() : await this.readV1();
    const out: CgroupMetrics = {};
    const atMs = this.now();
    if (raw.cpuLimitCores !== undefined) out.cpuLimitCores = raw.cpuLimitCores;
    if (raw.cpuUsageUs !== undefined) {
      // Not across two cgroups: the agent's own (read before the service's pid is known,
      // or when the service has died) minus the service's was a false 100% and `degraded`.
      const prev = this.prev?.source === raw.source ? this.prev : undefined;
      if (raw.cpuLimitCores !== undefined && prev && atMs > prev.atMs) {
        const usedCores = (raw.cpuUsageUs - prev.usageUs) / 1000 / (atMs - prev.atMs);
        out.cpuUtilization = clamp01(usedCores / raw.cpuLimitCores);
      }
      this.prev = { usageUs: raw.cpuUsageUs, atMs, source: raw.source };
    }
    if (raw.memoryLimitBytes !== undefined) out.memoryLimitBytes = raw.memoryLimitBytes;
    if (raw.memoryUsedBytes !== undefined) {
      out.memoryUsedBytes = raw.memoryUsedBytes;
      if (raw.memoryLimitBytes)
        out.memoryUtilization = clamp01(raw.memoryUsedBytes / raw.memoryLimitBytes);
    }
    return Object.keys(out).length === 0 ? undefined : out;
  }

  private async v2Dir(): Promise<string> {
    const pid = this.opts.pid?.();
    // Not /proc/self: the agent run as examples/systemd's unit reported its own CPUQuota=10%
    // and MemoryMax=160M as the backend's (memory 91%: degraded), and gateways modelled the
    // backend's CPU as 0.1 core.
    if (pid === undefined) return this.opts.root;
    const text = await readText(`${this.opts.procRoot}/${pid}/cgroup`);
    const m = text ? /^0::(\/.*)$/m.exec(text) : null;
    if (m && m[1] !== '/') {
      const dir = `${this.opts.root}${m[1]}`;
      if (await exists(`${dir}/memory.current`)) return dir;
    }
    return this.opts.root;
  }

  private async readV2(): Promise<Raw> {
    const dir = await this.v2Dir();
    const [cpuMax, cpuStat, memMax, memCurrent, memStat] = await readAll([
      `${dir}/cpu.max`,
      `${dir}/cpu.stat`,
      `${dir}/memory.max`,
      `${dir}/memory.current`,
      `${dir}/memory.stat`,
    ]);
    const current = num(memCurrent);
    const inactive = statField(memStat, 'inactive_file') ?? 0;
    const limit = memMax?.trim() === 'max' ? undefined : num(memMax);
    return {
      source: dir,
      cpuLimitCores: parseCpuMax(cpuMax),
      cpuUsageUs: statField(cpuStat, 'usage_usec'),
      memoryLimitBytes: limit,
      memoryUsedBytes: current === undefined ? undefined : Math.max(0, current - inactive),
    };
  }

  private async readV1(): Promise<Raw> {
    const r = this.opts.root;
    const [quota, period, usageNs, memLimit, memUsage, memStat] = await readAll([
      `${r}/cpu/cpu.cfs_quota_us`,
      `${r}/cpu/cpu.cfs_period_us`,
      `${r}/cpuacct/cpuacct.usage`,
      `${r}/memory/memory.limit_in_bytes`,
      `${r}/memory/memory.usage_in_bytes`,
      `${r}/memory/memory.stat`,
    ]);
    const q = num(quota);
    const p = num(period);
    const limit = num(memLimit);
    const usage = num(memUsage);
    const inactive = statField(memStat, 'total_inactive_file') ?? 0;
    const ns = counter(usageNs);
    return {
      source: r,
      cpuLimitCores: q !== undefined && q > 0 && p ? q / p : undefined,
      cpuUsageUs: ns === undefined ? undefined : ns / 1000,
      memoryLimitBytes: limit !== undefined && limit < V1_UNLIMITED_BYTES ? limit : undefined,
      memoryUsedBytes: usage === undefined ? undefined : Math.max(0, usage - inactive),
    };
  }
}
