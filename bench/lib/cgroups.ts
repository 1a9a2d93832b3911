/**
 * CPU cgroups for the bench's CPU-bound scenarios: one group per backend with
 * a CFS quota (a fraction of a core) and a short period, so a backend's
 * capacity is its quota, not the machine's idle cores.
 *
 * cgroup v2 where the machine's cgroup2 hierarchy has the cpu controller
 * (`cpu.max` "<quota> <period>", `+cpu` in the parent's
 * `cgroup.subtree_control`, usage from `cpu.stat` usage_usec); v1 otherwise
 * (`cpu.cfs_period_us`, `cpu.cfs_quota_us`, and the same-named group in the
 * cpuacct hierarchy for `cpuacct.usage`). Groups are named
 * `loadwise-bench-<pid>-<n>-<tag>`, and every group this process created is
 * removed when it ends, also on error, SIGINT and SIGTERM: member processes
 * are killed first (only processes this harness put there), then the
 * directories removed.
 *
 * Needs root and a writable cpu controller; cgroupProblem() says why not.
 */
import { accessSync, constants, existsSync, mkdirSync, readdirSync, readFileSync } from 'node:fs';
import { rmdirSync, symlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { onExitSync } from './procs';

export const GROUP_PREFIX = 'loadwise-bench-';

interface Mount {
  type: string;
  dir: string;
  options: string[];
}

function mounts(): Mount[] {
  try {
    return readFileSync('/proc/self/mounts', 'utf8')
      .split('\n')
      .filter(Boolean)
      .map((line) => {
        const [, dir = '', type = '', opts = ''] = line.split(' ');
        // Mount points with spaces are octal-escaped (\040) in /proc/self/mounts.
        return {
          type,
          dir: dir.replace(/\\(\d{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8))),
          options: opts.split(','),
        };
      });
  } catch {
    return [];
  }
}

function read(path: string): string | undefined {
  try {
    return readFileSync(path, 'utf8');
  } catch {
    return undefined;
  }
}

/** Where the cpu controller lives on this machine. */
export type CpuHierarchy =
  { version: 2; mount: string } | { version: 1; cpuMount: string; cpuacctMount: string };

/** The cpu controller's hierarchy: v2 if its cgroup2 mount offers `cpu`, else v1's cpu and cpuacct mounts. */
export function findCpuHierarchy(): CpuHierarchy | undefined {
  const all = mounts();
  for (const m of all.filter((x) => x.type === 'cgroup2')) {
    const controllers = read(join(m.dir, 'cgroup.controllers'))?.trim().split(/\s+/) ?? [];
    if (controllers.includes('cpu')) return { version: 2, mount: m.dir };
  }
  const v1 = all.filter((x) => x.type === 'cgroup');
  const cpu = v1.find((m) => m.options.includes('cpu'));
  const cpuacct = v1.find((m) => m.options.includes('cpuacct'));
  if (cpu && cpuacct) return { version: 1, cpuMount: cpu.dir, cpuacctMount: cpuacct.dir };
  return undefined;
}

/** Why this process cannot create CPU cgroups, or undefined when it can. */
export function cgroupProblem(): string | undefined {
  if (process.platform !== 'linux') return `cgroups are Linux only (this is ${process.platform})`;
  const uid = process.getuid?.();
  if (uid !== 0)
    return `creating cgroups and moving processes into them needs root (running as uid ${uid})`;
  const h = findCpuHierarchy();
  if (!h)
    return (
      'no cpu controller found: neither a cgroup2 mount whose cgroup.controllers lists cpu ' +
      'nor cgroup v1 cpu and cpuacct mounts in /proc/self/mounts'
    );
  const dirs = h.version === 2 ? [h.mount] : [h.cpuMount, h.cpuacctMount];
  for (const d of dirs) {
    try {
      accessSync(d, constants.W_OK);
    } catch (err) {
      return `the cgroup filesystem at ${d} is not writable (${(err as NodeJS.ErrnoException).code})`;
    }
  }
  return undefined;
}

export interface CpuGroupOptions {
  /** CPU quota in cores (0.3 = 30% of one core per period). */
  quotaCores: number;
  /** CFS period, µs (the kernel accepts 1,000 to 1,000,000). */
  periodUs: number;
}

export interface CpuGroup {
  readonly name: string;
  readonly version: 1 | 2;
  readonly quotaCores: number;
  readonly periodUs: number;
  /** The group's directory in the cpu hierarchy. */
  readonly cpuDir: string;
  /** Its directory in the cpuacct hierarchy (v2 and a joint v1 mount: cpuDir). */
  readonly acctDir: string;
  /** Moves a process (all its threads) into the group. */
  addPid(pid: number): void;
  /** Processes in the group now. */
  pids(): number[];
  /** The group's quota and period as the kernel holds them, µs (quota undefined = none). */
  limits(): { quotaUs: number | undefined; periodUs: number };
  /** CPU time every member used since the group was made, µs. */
  usageUs(): number;
  /**
   * A `--cgroup-root` under which the health agent (packages/health-agent/src/samplers/cgroup.ts)
   * reads this group as its own. v1: the agent reads `<root>/cpu/...` and
   * `<root>/cpuacct/...`, so a directory under `dir` with those two names as
   * symlinks to the group. v2: the group's own directory; the agent follows
   * /proc/<pid>/cgroup only into a group with memory.current (the memory
   * controller), and falls back to its root, which is then this group.
   */
  agentRoot(dir: string): string;
  /** Kills the members (SIGKILL), waits for them to leave, removes the directories. */
  remove(): Promise<void>;
}

const live = new Set<LiveGroup>();
let counter = 0;

interface LiveGroup {
  dirs: string[];
  removeSync(): void;
}

/** Synchronous sleep, for the exit path where no event loop runs. */
function sleepSync(ms: number): void {
  Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms);
}

function procsOf(dir: string): number[] {
  const text = read(join(dir, 'cgroup.procs')) ?? '';
  return text
    .split('\n')
    .filter(Boolean)
    .map(Number)
    .filter((n) => Number.isSafeInteger(n) && n > 0);
}

function killAll(dirs: string[]): void {
  for (const d of dirs) {
    for (const pid of procsOf(d)) {
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        // already gone
      }
    }
  }
}

/** rmdir each directory; false while one still has members (EBUSY). */
function tryRmdirs(dirs: string[]): boolean {
  let done = true;
  for (const d of dirs) {
    if (!existsSync(d)) continue;
    try {
      rmdirSync(d);
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code === 'ENOENT') continue;
      if (code !== 'EBUSY') throw err;
      done = false;
    }
  }
  return done;
}

function removeAllSync(): void {
  for (const g of [...live]) {
    try {
      g.removeSync();
    } catch {
      // best effort on the way out
    }
  }
}

function write(file: string, text: string): void {
  try {
    writeFileSync(file, text);
  } catch (err) {
    throw new Error(`cannot write "${text}" to ${file}: ${(err as Error).message}`);
  }
}

/** Adds `+cpu` to a v2 parent's subtree_control unless it is already there. */
function enableCpu(parent: string): void {
  const control = join(parent, 'cgroup.subtree_control');
  const enabled = read(control)?.trim().split(/\s+/) ?? [];
  if (!enabled.includes('cpu')) write(control, '+cpu');
}

/**
 * Creates a group with the given quota and period (throws with the reason when
 * it cannot). `tag` names it (e.g. the backend id); the name is unique per run.
 */
export function createCpuGroup(tag: string, opts: CpuGroupOptions): CpuGroup {
  const problem = cgroupProblem();
  if (problem) throw new Error(`cannot create a CPU cgroup: ${problem}`);
  const h = findCpuHierarchy()!;
  if (!(opts.quotaCores > 0)) throw new Error(`quotaCores must be > 0, got ${opts.quotaCores}`);
  const quotaUs = Math.round(opts.quotaCores * opts.periodUs);
  if (quotaUs < 1000)
    throw new Error(`a CFS quota below 1 ms is refused by the kernel (${quotaUs} µs)`);
  const name = `${GROUP_PREFIX}${process.pid}-${++counter}-${tag.replace(/[^a-zA-Z0-9_-]/g, '_')}`;
  const cpuDir = join(h.version === 2 ? h.mount : h.cpuMount, name);
  const acctDir = h.version === 2 ? cpuDir : join(h.cpuacctMount, name);
  const dirs = [...new Set([cpuDir, acctDir])];
  const removeSync = (): void => {
    killAll(dirs);
    for (let i = 0; i < 200 && !tryRmdirs(dirs); i++) sleepSync(10);
    if (!tryRmdirs(dirs)) throw new Error(`cgroup ${name} still has members after 2 s`);
    live.delete(entry);
  };
  const entry: LiveGroup = { dirs, removeSync };
  onExitSync(removeAllSync);
  live.add(entry);
  try {
    if (h.version === 2) enableCpu(h.mount);
    for (const d of dirs) mkdirSync(d);
    if (h.version === 2) {
      write(join(cpuDir, 'cpu.max'), `${quotaUs} ${opts.periodUs}`);
    } else {
      // A fresh group has no quota (-1), so the period can change first.
      write(join(cpuDir, 'cpu.cfs_period_us'), String(opts.periodUs));
      write(join(cpuDir, 'cpu.cfs_quota_us'), String(quotaUs));
    }
  } catch (err) {
    removeSync();
    throw err;
  }
  return {
    name,
    version: h.version,
    quotaCores: opts.quotaCores,
    periodUs: opts.periodUs,
    cpuDir,
    acctDir,
    addPid(pid) {
      for (const d of dirs) write(join(d, 'cgroup.procs'), String(pid));
    },
    pids: () => procsOf(cpuDir),
    limits() {
      if (h.version === 2) {
        const [q = 'max', p = '100000'] = (read(join(cpuDir, 'cpu.max')) ?? '').trim().split(/\s+/);
        return { quotaUs: q === 'max' ? undefined : Number(q), periodUs: Number(p) };
      }
      const q = Number(read(join(cpuDir, 'cpu.cfs_quota_us')));
      return {
        quotaUs: q > 0 ? q : undefined,
        periodUs: Number(read(join(cpuDir, 'cpu.cfs_period_us'))),
      };
    },
    usageUs() {
      if (h.version === 2) {
        const m = /^usage_usec (\d+)$/m.exec(read(join(cpuDir, 'cpu.stat')) ?? '');
        return m ? Number(m[1]) : NaN;
      }
      return Number(read(join(acctDir, 'cpuacct.usage'))) / 1000;
    },
    agentRoot(dir) {
      if (h.version === 2) return cpuDir;
      const root = join(dir, `cgroup-${name}`);
      mkdirSync(root, { recursive: true });
      symlinkSync(cpuDir, join(root, 'cpu'));
      symlinkSync(acctDir, join(root, 'cpuacct'));
      return root;
    },
    async remove() {
      killAll(dirs);
      for (let i = 0; i < 200 && !tryRmdirs(dirs); i++) await new Promise((r) => setTimeout(r, 10));
      removeSync();
    },
  };
}

/**
 * Removes empty groups that an earlier run left behind when it was killed
 * (its pid no longer exists). Groups that still have members are left, and
 * named in the result, since their processes are not this run's.
 */
export function sweepStaleGroups(): { removed: string[]; busy: string[] } {
  const out = { removed: [] as string[], busy: [] as string[] };
  const h = findCpuHierarchy();
  if (!h) return out;
  const mountsOf = h.version === 2 ? [h.mount] : [...new Set([h.cpuMount, h.cpuacctMount])];
  for (const mount of mountsOf) {
    let names: string[];
    try {
      names = readdirSync(mount).filter((n) => n.startsWith(GROUP_PREFIX));
    } catch {
      continue;
    }
    for (const n of names) {
      const pid = Number(/^loadwise-bench-(\d+)-/.exec(n)?.[1]);
      if (!pid || pid === process.pid || existsSync(`/proc/${pid}`)) continue;
      const dir = join(mount, n);
      if (procsOf(dir).length > 0) out.busy.push(dir);
      else if (tryRmdirs([dir])) out.removed.push(dir);
    }
  }
  return out;
}
