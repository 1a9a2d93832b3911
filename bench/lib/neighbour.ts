/**
 * The noisy neighbour of the CPU-bound scenario: a busy-loop process in one
 * backend's CPU cgroup (lib/cgroups.ts), taking part of that group's quota.
 *
 * The neighbour and the backend are pinned to the same CPU while it runs.
 * Unpinned, the two usually sit on different CPUs, and CFS bandwidth control
 * then hands out the group's quota per CPU in slices (5 ms by default,
 * kernel.sched_cfs_bandwidth_slice_us): whichever CPU asks first in a 10 ms
 * period takes most of a 3 ms quota, so the neighbour's part of a saturated
 * 0.3-core group varied from 0.085 to 0.198 core between tries. On one CPU,
 * CFS's fair share between the two runnable tasks applies: 0.145-0.147.
 */
import { execFileSync } from 'node:child_process';
import { cpus } from 'node:os';
import type { LoadgenConfig, LoadgenResult } from '../procs/loadgen';
import type { RunningBackend } from './cluster';
import { CpuMeter, forkProc, spawnProc, type Proc } from './procs';

/** The affinity mask (hex, as taskset prints it) of a process. */
function affinityMask(pid: number): string {
  const out = execFileSync('taskset', ['-p', String(pid)], { encoding: 'utf8' });
  const m = /mask:\s*([0-9a-f]+)/i.exec(out);
  if (!m) throw new Error(`taskset -p ${pid}: unexpected output ${JSON.stringify(out)}`);
  return m[1]!;
}

function setAffinity(pid: number, args: string[]): void {
  try {
    // -a: every thread of the process.
    execFileSync('taskset', ['-a', '-p', ...args, String(pid)], { stdio: 'ignore' });
  } catch (err) {
    throw new Error(
      `taskset could not set the CPU affinity of ${pid} (util-linux's taskset is needed to ` +
        `pin the neighbour and its backend together): ${(err as Error).message}`,
    );
  }
}

export interface Neighbour {
  proc: Proc;
  /** Ends the busy loop and gives the backend back its earlier affinity. */
  stop(): Promise<void>;
}

/** Starts the busy loop in `backend`'s cgroup, both pinned to the machine's last CPU. */
export function startNeighbour(backend: RunningBackend): Neighbour {
  const group = backend.group;
  if (!group) throw new Error(`neighbour: backend ${backend.id} has no cgroup`);
  // A shell's builtin busy loop: one runnable thread, no allocation, no syscalls.
  const proc = spawnProc(`neighbour-${backend.id}`, 'sh', ['-c', 'while :; do :; done']);
  const before = affinityMask(backend.proc.pid);
  const cpu = String(cpus().length - 1);
  try {
    group.addPid(proc.pid);
    setAffinity(proc.pid, ['-c', cpu]);
    setAffinity(backend.proc.pid, ['-c', cpu]);
  } catch (err) {
    void proc.stop();
    throw err;
  }
  return {
    proc,
    async stop() {
      await proc.stop();
      if (backend.proc.child.exitCode === null) setAffinity(backend.proc.pid, [before]);
    },
  };
}

export interface NeighbourCalibration {
  /** The neighbour's CPU while the backend had work queued throughout, cores. */
  neighbourCores: number;
  /** The backend's CPU meanwhile, cores. */
  backendCores: number;
  /** Requests the backend answered per second meanwhile: its capacity beside the neighbour. */
  backendRps: number;
}

/**
 * What the neighbour takes when the backend is busy: a closed loop of 8
 * requests straight to the backend (no balancer) keeps its queue non-empty
 * while the neighbour runs, and both processes' CPU is read over the measured
 * part. Over a balancer's run the neighbour also takes whatever the backend
 * leaves idle, so its CPU there depends on the routing; this does not.
 */
export async function calibrateNeighbour(
  backend: RunningBackend,
  quick: boolean,
): Promise<NeighbourCalibration> {
  const neighbour = startNeighbour(backend);
  const meter = new CpuMeter([
    { name: 'neighbour', pid: neighbour.proc.pid },
    { name: 'backend', pid: backend.proc.pid },
  ]);
  const cfg: LoadgenConfig = {
    targets: [`${backend.url}/calibrate`],
    mode: 'closed',
    concurrency: 8,
    warmupMs: quick ? 500 : 1_000,
    durationMs: quick ? 1_500 : 4_000,
    maxSockets: 8,
    timeoutMs: 10_000,
    windowMs: 1_000,
  };
  const gen = forkProc('calibrate-neighbour', 'loadgen.js', cfg);
  const timer = setTimeout(() => meter.begin(), cfg.warmupMs);
  try {
    const result = await gen.waitFor<LoadgenResult>(
      'result',
      cfg.warmupMs + cfg.durationMs + cfg.timeoutMs + 10_000,
    );
    const cpu = meter.end();
    return {
      neighbourCores: cpu.neighbour!,
      backendCores: cpu.backend!,
      backendRps: result.throughputRps,
    };
  } finally {
    clearTimeout(timer);
    await gen.stop();
    await neighbour.stop();
  }
}
