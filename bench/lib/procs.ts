/**
 * Child processes of a bench run. Every component (backend, agent, gateway,
 * load generator) runs in its own process so none shares an event loop with
 * another: otherwise one component's stalls would show up as another's tails.
 * Every child is registered here and stopped on exit, SIGINT and SIGTERM.
 */
import { fork, spawn, type ChildProcess } from 'node:child_process';
import { appendFileSync, readFileSync } from 'node:fs';
import { isAbsolute, join } from 'node:path';

const children = new Set<ChildProcess>();
/** Synchronous clean-ups for the way out, in registration order (onExitSync). */
const exitCleanups: Array<() => void> = [];
let hooked = false;

/**
 * Runs `cleanup` when this process exits, and on SIGINT or SIGTERM (then exits
 * 130): one hook for every clean-up of a bench run (its children here, its
 * cgroups in cgroups.ts). Each runs once, registered ones in order.
 */
export function onExitSync(cleanup: () => void): void {
  if (!exitCleanups.includes(cleanup)) exitCleanups.push(cleanup);
  if (hooked) return;
  hooked = true;
  const runAll = (): void => {
    for (const fn of exitCleanups.splice(0)) fn();
  };
  process.once('exit', runAll);
  for (const sig of ['SIGINT', 'SIGTERM'] as const) {
    process.once(sig, () => {
      runAll();
      process.exit(130);
    });
  }
}

/** Synchronous last resort (process 'exit'): SIGKILL whatever is still registered. */
function killAllNow(): void {
  for (const child of children) {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
  }
  children.clear();
}

export interface Proc {
  readonly name: string;
  readonly child: ChildProcess;
  readonly pid: number;
  /** Resolves with the first IPC message of the given type. */
  waitFor<T = Record<string, unknown>>(type: string, timeoutMs?: number): Promise<T>;
  send(msg: Record<string, unknown>): void;
  /** SIGTERM, then SIGKILL after graceMs; resolves when the process has exited. */
  stop(graceMs?: number): Promise<void>;
  /** Last lines of stderr, for error messages. */
  stderrTail(): string;
}

function wrap(name: string, child: ChildProcess): Proc {
  children.add(child);
  onExitSync(killAllNow);
  const tail: string[] = [];
  child.stderr?.on('data', (d: Buffer) => {
    tail.push(d.toString());
    if (tail.length > 20) tail.shift();
  });
  child.stdout?.on('data', () => undefined);
  const exited = new Promise<void>((resolve) => {
    child.once('exit', () => {
      children.delete(child);
      resolve();
    });
  });
  const proc: Proc = {
    name,
    child,
    pid: child.pid ?? -1,
    waitFor<T>(type: string, timeoutMs = 15_000): Promise<T> {
      return new Promise<T>((resolve, reject) => {
        const timer = setTimeout(() => {
          cleanup();
          reject(new Error(`${name}: no '${type}' within ${timeoutMs} ms\n${proc.stderrTail()}`));
        }, timeoutMs);
        const onMsg = (m: unknown): void => {
          const msg = m as { type?: string };
          if (msg && msg.type === type) {
            cleanup();
            resolve(msg as T);
          } else if (msg && msg.type === 'error') {
            cleanup();
            reject(new Error(`${name}: ${JSON.stringify(msg)}`));
          }
        };
        const onExit = (code: number | null): void => {
          cleanup();
          reject(new Error(`${name} exited (${code}) before '${type}'\n${proc.stderrTail()}`));
        };
        const cleanup = (): void => {
          clearTimeout(timer);
          child.off('message', onMsg);
          child.off('exit', onExit);
        };
        child.on('message', onMsg);
        child.once('exit', onExit);
      });
    },
    send(msg) {
      if (child.connected) child.send(msg);
    },
    async stop(graceMs = 3_000) {
      if (child.exitCode !== null || child.signalCode !== null) return;
      child.kill('SIGTERM');
      const timer = setTimeout(() => child.kill('SIGKILL'), graceMs);
      await exited;
      clearTimeout(timer);
    },
    stderrTail: () => tail.join('').split('\n').slice(-15).join('\n'),
  };
  return proc;
}

// Children always run compiled JS: from bench/dist/lib this is ../procs; under
// ts-jest (bench/lib/*.ts) it is ../dist/procs, so `npm test` builds first.
const PROCS_DIR = __filename.endsWith('.ts')
  ? join(__dirname, '..', 'dist', 'procs')
  : join(__dirname, '..', 'procs');

/**
 * Forks one of bench/dist/procs/*.js with its config as JSON in argv[2]; an
 * absolute `script` path runs that file instead (another checkout's build).
 */
export function forkProc(
  name: string,
  script: string,
  config: unknown,
  execArgv: string[] = [],
): Proc {
  const path = isAbsolute(script) ? script : join(PROCS_DIR, script);
  const child = fork(path, [JSON.stringify(config)], {
    stdio: ['ignore', 'pipe', 'pipe', 'ipc'],
    execArgv: [...execArgv, ...gatewayNodeArgs(path)],
  });
  const proc = wrap(name, child);
  const out = isLoadwiseGateway(path) ? gatewayStdoutFile() : undefined;
  if (out) {
    // Each chunk stamped with when it arrived: V8's --trace-opt/--trace-deopt print no time.
    child.stdout?.on('data', (d: Buffer) => appendFileSync(out, `@${Date.now()} ${name}\n${d}`));
  }
  return proc;
}

/**
 * Diagnosis only: Node flags for every loadwise gateway process a benchmark
 * starts, from LOADWISE_BENCH_GATEWAY_NODE_ARGS (space-separated), e.g.
 * `--cpu-prof --cpu-prof-dir=/tmp/gw --cpu-prof-interval=200` or
 * `--log-deopt --logfile=/tmp/v8.log --no-logfile-per-isolate`
 * (docs/bench.md, "Cold start"). The figures of such a run are not the
 * product's: a profiler costs the gateway CPU.
 */
function gatewayNodeArgs(path: string): string[] {
  const args = process.env.LOADWISE_BENCH_GATEWAY_NODE_ARGS;
  return args && isLoadwiseGateway(path) ? args.split(' ').filter(Boolean) : [];
}

/** The loadwise gateway's script, this checkout's or another's (`--baseline`). */
function isLoadwiseGateway(path: string): boolean {
  return path.endsWith('gateway-loadwise.js');
}

/**
 * Diagnosis only: LOADWISE_BENCH_GATEWAY_STDOUT=FILE appends every loadwise
 * gateway process's stdout to FILE, each chunk after a line `@<epoch ms>
 * <process>`, and the engine adds `@load <epoch ms> <balancer> run <n>` for
 * each run's first measured request. With
 * LOADWISE_BENCH_GATEWAY_NODE_ARGS="--trace-opt --trace-deopt" it shows what
 * V8 compiles and throws away, and when (docs/bench.md, "Cold start").
 */
export function gatewayStdoutFile(): string | undefined {
  return process.env.LOADWISE_BENCH_GATEWAY_STDOUT || undefined;
}

/** Spawns a native program (nginx, haproxy, the agent CLI). */
export function spawnProc(name: string, command: string, args: string[], cwd?: string): Proc {
  const child = spawn(command, args, { stdio: ['ignore', 'pipe', 'pipe'], cwd });
  return wrap(name, child);
}

const CLOCK_TICKS_PER_S = 100; // Linux USER_HZ; /proc/<pid>/stat counts in these.

/** CPU time (user + system) a process has used so far, seconds; 0 once it is gone. */
export function cpuSeconds(pid: number): number {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    // The command name (field 2) may contain spaces; fields after its ')' are fixed.
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    const utime = Number(fields[11]);
    const stime = Number(fields[12]);
    return (utime + stime) / CLOCK_TICKS_PER_S;
  } catch {
    return 0;
  }
}

/** Measures CPU use of a set of processes over an interval, in cores (1 = one full core). */
export class CpuMeter {
  private readonly start = new Map<string, number>();
  private startedAtMs = 0;
  private endedAtMs = 0;
  constructor(private readonly procs: Array<{ name: string; pid: number }>) {}
  /** One more process (before begin()). */
  add(p: { name: string; pid: number }): void {
    this.procs.push(p);
  }
  /** Seconds from begin() to the last end(). */
  elapsedS(): number {
    return Math.max((this.endedAtMs - this.startedAtMs) / 1000, 1e-3);
  }
  begin(): void {
    this.startedAtMs = Date.now();
    for (const p of this.procs) this.start.set(p.name, cpuSeconds(p.pid));
  }
  end(): Record<string, number> {
    this.endedAtMs = Date.now();
    const elapsedS = this.elapsedS();
    const out: Record<string, number> = {};
    for (const p of this.procs) {
      const used = cpuSeconds(p.pid) - (this.start.get(p.name) ?? 0);
      out[p.name] = Math.round((used / elapsedS) * 1000) / 1000;
    }
    return out;
  }
}

export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
