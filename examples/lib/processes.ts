/**
 * Child-process plumbing shared by the quick start and the test kit: start the
 * example backend and a real health agent (the loadwise-agent CLI) as child
 * processes, learn the backend's port from its first stdout line, and stop
 * them with real signals. Everything listens on loopback, port 0 by default.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import path from 'node:path';
import { createInterface } from 'node:readline';

/** How long a child may take to print its port before we give up, ms. */
export const DEFAULT_START_TIMEOUT_MS = 15_000;
/** How long a child may take to exit after SIGTERM before it gets SIGKILL, ms. */
export const DEFAULT_STOP_TIMEOUT_MS = 5_000;
/** stderr kept per child for error messages, characters. */
const STDERR_TAIL_CHARS = 4_000;

export const TRACKER_STATS_PATH = '/.well-known/loadwise/stats';

/** The repository root: the first parent holding packages/health-agent (works from src and dist). */
export function repoRoot(): string {
  let dir = __dirname;
  for (;;) {
    if (existsSync(path.join(dir, 'packages', 'health-agent', 'package.json'))) return dir;
    const parent = path.dirname(dir);
    if (parent === dir) throw new Error(`cannot find the loadwise repository above ${__dirname}`);
    dir = parent;
  }
}

export function backendScript(): string {
  return path.join(repoRoot(), 'examples', 'dist', 'backend.js');
}

export function agentCli(): string {
  return path.join(repoRoot(), 'packages', 'health-agent', 'dist', 'cli.js');
}

/**
 * Node flags that make a child stop when this process dies, even by SIGKILL (no exit
 * handler runs then): exit-with-parent.js, preloaded, watches the stdin pipe ManagedChild
 * gives every child and sends the child SIGTERM when it closes. For a program without a
 * flag of its own for it, such as the backend's `--exit-with-parent`.
 */
export function exitWithParentArgs(): string[] {
  return ['--require', path.join(repoRoot(), 'examples', 'dist', 'lib', 'exit-with-parent.js')];
}

export interface Exit {
  code: number | null;
  signal: NodeJS.Signals | null;
}

/** A child process with its exit as a promise and the tail of its stderr. */
export class ManagedChild {
  readonly child: ChildProcess;
  readonly pid: number;
  readonly exited: Promise<Exit>;
  private exit: Exit | undefined;
  private stderr = '';
  private readonly stderrListeners = new Set<(line: string) => void>();

  /**
   * `ownGroup`: the child runs in a process group of its own, so a signal to ours (a
   * terminal's Ctrl-C) does not reach it and we stop it when we choose.
   */
  constructor(
    readonly name: string,
    command: string,
    args: string[],
    env: NodeJS.ProcessEnv = process.env,
    ownGroup = false,
  ) {
    // stdin is a pipe the child may watch (the backend's --exit-with-parent): it closes when we die.
    this.child = spawn(command, args, { stdio: ['pipe', 'pipe', 'pipe'], env, detached: ownGroup });
    if (this.child.pid === undefined) throw new Error(`${name}: spawn failed`);
    this.pid = this.child.pid;
    live.add(this);
    this.exited = new Promise((resolve) => {
      this.child.once('exit', (code, signal) => {
        this.exit = { code, signal };
        live.delete(this);
        resolve(this.exit);
      });
    });
    this.child.stdin?.on('error', () => undefined);
    createInterface({ input: this.child.stderr! }).on('line', (line) => {
      this.stderr = (this.stderr + line + '\n').slice(-STDERR_TAIL_CHARS);
      for (const l of this.stderrListeners) l(line);
    });
  }

  get running(): boolean {
    return this.exit === undefined;
  }

  stderrTail(): string {
    return this.stderr;
  }

  /** Resolves with the first stderr line matching `pattern` (including lines already seen). */
  waitForStderr(pattern: RegExp, timeoutMs = DEFAULT_START_TIMEOUT_MS): Promise<string> {
    const seen = this.stderr.split('\n').find((l) => pattern.test(l));
    if (seen !== undefined) return Promise.resolve(seen);
    return new Promise((resolve, reject) => {
      const done = (): void => {
        clearTimeout(timer);
        this.stderrListeners.delete(listener);
      };
      const listener = (line: string): void => {
        if (!pattern.test(line)) return;
        done();
        resolve(line);
      };
      const timer = setTimeout(() => {
        done();
        reject(
          new Error(
            `${this.name}: no stderr line matching ${pattern} in ${timeoutMs} ms:\n${this.stderr}`,
          ),
        );
      }, timeoutMs);
      this.stderrListeners.add(listener);
    });
  }

  signal(signal: NodeJS.Signals): void {
    if (this.running) this.child.kill(signal);
  }

  /** Sends `signal`, waits for the exit; SIGKILL if it does not come within `timeoutMs`. */
  async stop(
    signal: NodeJS.Signals = 'SIGTERM',
    timeoutMs = DEFAULT_STOP_TIMEOUT_MS,
  ): Promise<Exit> {
    if (!this.running) return this.exited;
    // A stopped (SIGSTOP) process handles no signal but SIGKILL until continued.
    this.child.kill(signal);
    if (signal !== 'SIGKILL' && signal !== 'SIGCONT') this.child.kill('SIGCONT');
    let timer: NodeJS.Timeout | undefined;
    const timedOut = new Promise<'timeout'>((resolve) => {
      timer = setTimeout(() => resolve('timeout'), timeoutMs);
    });
    const first = await Promise.race([this.exited, timedOut]);
    clearTimeout(timer);
    if (first === 'timeout') {
      this.child.kill('SIGKILL');
      return this.exited;
    }
    return first;
  }
}

/** Every child still running, so a crashing parent can still kill them on exit. */
const live = new Set<ManagedChild>();
process.on('exit', () => {
  for (const c of live) {
    try {
      c.child.kill('SIGKILL');
    } catch {
      // already gone
    }
  }
});

export interface BackendProcessOptions {
  id: string;
  /** Worker slots (concurrency limit, default 8). */
  slots?: number;
  /** Service time per request, ms (default 10). */
  serviceMs?: number;
  /** Port to listen on (default 0: any free port). */
  port?: number;
  maxQueue?: number;
  /** The backend writes its PID here once listening (for the agent's --service-pid-file). */
  pidFile?: string;
  startTimeoutMs?: number;
  /** In a process group of its own (ManagedChild's ownGroup; default false). */
  ownGroup?: boolean;
}

/** A running backend: its port and the process serving it. */
export interface StartedBackend {
  id: string;
  port: number;
  url: string;
  process: ManagedChild;
}

/**
 * Waits for a child's first stdout line `{"event":"listening","port":N}` (the
 * example backend and gateway-server print it) and returns the port; kills
 * the child and rejects if it exits or stays silent for `timeoutMs`.
 */
export function waitForListening(proc: ManagedChild, timeoutMs: number): Promise<number> {
  return new Promise<number>((resolve, reject) => {
    const lines = createInterface({ input: proc.child.stdout! });
    const fail = (why: string): void => {
      clearTimeout(timer);
      lines.close();
      reject(new Error(`${proc.name}: ${why}\n${proc.stderrTail()}`));
    };
    const timer = setTimeout(() => {
      fail(`did not print its port within ${timeoutMs} ms`);
      proc.signal('SIGKILL');
    }, timeoutMs);
    void proc.exited.then((e) =>
      fail(`exited (code ${e.code}, signal ${e.signal}) before listening`),
    );
    lines.on('line', (line) => {
      try {
        const msg = JSON.parse(line) as { event?: string; port?: number };
        if (msg.event === 'listening' && typeof msg.port === 'number') {
          clearTimeout(timer);
          resolve(msg.port);
        }
      } catch {
        // not a JSON line: ignore
      }
    });
  });
}

/** Starts examples/dist/backend.js and waits until it prints its port. */
export async function startBackendProcess(opts: BackendProcessOptions): Promise<StartedBackend> {
  const args = [
    backendScript(),
    '--id',
    opts.id,
    '--slots',
    String(opts.slots ?? 8),
    '--service-ms',
    String(opts.serviceMs ?? 10),
    '--port',
    String(opts.port ?? 0),
    '--exit-with-parent',
  ];
  if (opts.maxQueue !== undefined) args.push('--max-queue', String(opts.maxQueue));
  if (opts.pidFile !== undefined) args.push('--pid-file', opts.pidFile);
  const proc = new ManagedChild(
    `backend ${opts.id}`,
    process.execPath,
    args,
    process.env,
    opts.ownGroup,
  );
  const port = await waitForListening(proc, opts.startTimeoutMs ?? DEFAULT_START_TIMEOUT_MS);
  return { id: opts.id, port, url: `http://127.0.0.1:${port}`, process: proc };
}

export interface AgentProcessOptions {
  backendId: string;
  brokerUrl: string;
  /** Topic prefix (default: the agent's, 'loadwise'). */
  prefix?: string;
  /** The backend's port: the agent reads its tracker and probes its /health. */
  backendPort: number;
  /** The backend's PID, for its process CPU and RSS. */
  servicePid?: number;
  /** Or a file holding it, re-read every sample: follows a restarted backend. */
  servicePidFile?: string;
  intervalMs?: number;
  /** Drain grace on SIGTERM, ms (the agent's default is 2000). */
  drainGraceMs?: number;
  /** Further loadwise-agent flags (e.g. ['--key-file', f]). */
  extraArgs?: string[];
  /**
   * The agent stops (SIGTERM, its graceful stop) when this process dies, even by SIGKILL
   * (exitWithParentArgs; default false). The agent pid stays the agent's own: signals to
   * it (drain, undrain) reach it as before.
   */
  exitWithParent?: boolean;
  /** In a process group of its own (ManagedChild's ownGroup; default false). */
  ownGroup?: boolean;
}

/** Starts packages/health-agent/dist/cli.js beside a backend. */
export function startAgentProcess(opts: AgentProcessOptions): ManagedChild {
  const base = `http://127.0.0.1:${opts.backendPort}`;
  const args = [
    ...(opts.exitWithParent ? exitWithParentArgs() : []),
    agentCli(),
    '--backend-id',
    opts.backendId,
    '--broker',
    opts.brokerUrl,
    '--tracker-url',
    `${base}${TRACKER_STATS_PATH}`,
    '--probe-url',
    `${base}/health`,
    '--interval-ms',
    String(opts.intervalMs ?? 1000),
  ];
  if (opts.prefix !== undefined) args.push('--prefix', opts.prefix);
  if (opts.servicePid !== undefined) args.push('--service-pid', String(opts.servicePid));
  if (opts.servicePidFile !== undefined) args.push('--service-pid-file', opts.servicePidFile);
  if (opts.drainGraceMs !== undefined) args.push('--drain-grace-ms', String(opts.drainGraceMs));
  args.push(...(opts.extraArgs ?? []));
  return new ManagedChild(
    `agent ${opts.backendId}`,
    process.execPath,
    args,
    process.env,
    opts.ownGroup,
  );
}
