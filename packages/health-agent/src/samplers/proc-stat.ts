import { readFile } from 'node:fs/promises';

/** Host-wide CPU jiffies from the first line of /proc/stat (proc(5)). */
export interface CpuTimes {
  busy: number;
  total: number;
}

export function parseProcStatCpu(text: string): CpuTimes | undefined {
  const nl = text.indexOf('\n');
  const line = nl < 0 ? text : text.slice(0, nl);
  if (!line.startsWith('cpu ')) return undefined;
  const f = line.trim().split(/\s+/).slice(1).map(Number);
  if (f.length < 4 || f.some((n) => !Number.isFinite(n))) return undefined;
  // user nice system idle iowait irq softirq steal guest guest_nice. guest and
  // guest_nice are already included in user and nice, so they are not added
  // again; idle + iowait is time with nothing to run.
  const [user = 0, nice = 0, system = 0, idle = 0, iowait = 0, irq = 0, softirq = 0, steal = 0] = f;
  const idleAll = idle + iowait;
  const total = user + nice + system + idleAll + irq + softirq + steal;
  return { busy: total - idleAll, total };
}

export async function readProcStatCpu(procRoot: string): Promise<CpuTimes | undefined> {
  try {
    return parseProcStatCpu(await readFile(`${procRoot}/stat`, 'utf8'));
  } catch {
    return undefined;
  }
}

/** Busy share between two readings, 0..1; undefined without a usable delta. */
export function cpuUtilizationBetween(
  prev: CpuTimes | undefined,
  cur: CpuTimes | undefined,
): number | undefined {
  if (!prev || !cur) return undefined;
  const total = cur.total - prev.total;
  if (total <= 0) return undefined;
  return clamp01((cur.busy - prev.busy) / total);
}

export function clamp01(x: number): number {
  return x < 0 ? 0 : x > 1 ? 1 : x;
}
