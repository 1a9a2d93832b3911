/**
 * N gateway workers on one host with node:cluster: one gateway process uses
 * one core. Every worker runs `start()`, a full gateway
 * (`app.use(loadBalance(opts))`) listening on the same port (the primary
 * hands connections to workers round robin) and connected to the same broker
 * under its own MQTT client id (transport/mqtt-source.ts adds a random
 * suffix to the prefix). To the load model each worker is one more gateway:
 * the requests the other workers keep on a backend are load it does not see,
 * which the cross-gateway cohort (load/cohort.ts) estimates from the agents'
 * reports, so the workers do not herd onto the same backend.
 *
 * The primary restarts a crashed worker with backoff (restart-policy.ts),
 * and on close() (or SIGTERM/SIGINT) asks every worker to close gracefully,
 * killing any that has not exited after `shutdownTimeoutMs`.
 */
import cluster, { type Worker } from 'node:cluster';
import { decideRestart, resolveRestart, type RestartOptions } from './restart-policy';

export interface WorkerContext {
  /** 0-based slot; a restarted worker keeps the slot of the one it replaces. */
  index: number;
  /** 'w1', 'w2', ...: for logs and, e.g., `broker.clientIdPrefix`. */
  id: string;
  /** How many times this slot's worker has been started before (0: first start). */
  restarts: number;
}

/** What `start()` returns: how to close the worker's gateway gracefully. */
export interface StartedWorker {
  close(): Promise<void>;
}

export interface RunWorkersOptions {
  /** How many workers (1..256). One per core the backends leave free. */
  workers: number;
  /** Runs in each worker: start its server and gateway. A throw exits the worker with code 1. */
  start(ctx: WorkerContext): Promise<StartedWorker> | StartedWorker;
  /** Extra environment for every worker (e.g. a broker URL the primary chose). */
  env?: Record<string, string>;
  restart?: RestartOptions;
  /** How long the primary waits for workers to close before SIGKILL, ms (default 15 000). */
  shutdownTimeoutMs?: number;
  /** Lifecycle lines of the primary and workers (default: stderr, "loadwise workers: ..."). */
  log?: (line: string) => void;
  /**
   * The primary closes the pool on SIGTERM and SIGINT, and exits with the
   * pool's code once it stops (default true). False: the caller calls
   * `close()` and watches `done`.
   */
  handleSignals?: boolean;
}

export interface WorkerPool {
  /** Live workers: id → pid. */
  pids(): Map<string, number>;
  /** Resolves with the port once every slot has a worker listening; rejects if the pool stops first. */
  listening(): Promise<number>;
  /** Asks every worker to close, restarts none; resolves once all have exited. */
  close(): Promise<void>;
  /** The pool's exit code once it stops: 0 after close(), 1 when every slot was given up. */
  readonly done: Promise<number>;
}

const SHUTDOWN = 'loadwise:shutdown';
const ENV_INDEX = 'LOADWISE_WORKER_INDEX';
const ENV_RESTARTS = 'LOADWISE_WORKER_RESTARTS';
const MAX_WORKERS = 256;
const DEFAULT_SHUTDOWN_TIMEOUT_MS = 15_000;

/** In a worker of runWorkers: its id ('w1', ...), for log lines; undefined elsewhere. */
export function currentWorkerId(): string | undefined {
  const index = process.env[ENV_INDEX];
  return index === undefined ? undefined : `w${Number(index) + 1}`;
}

const defaultLog = (line: string): void => {
  process.stderr.write(`loadwise workers: ${line}\n`);
};

/**
 * In the primary: forks the workers and returns the pool. In a worker (the
 * same script, forked by the primary): runs `start()` and returns null.
 */
export async function runWorkers(opts: RunWorkersOptions): Promise<WorkerPool | null> {
  if (!Number.isInteger(opts.workers) || opts.workers < 1 || opts.workers > MAX_WORKERS) {
    throw new RangeError(`workers must be an integer 1..${MAX_WORKERS}, got ${opts.workers}`);
  }
  if (typeof opts.start !== 'function') throw new TypeError('start must be a function');
  const log = opts.log ?? defaultLog;
  if (cluster.isWorker) {
    await runWorker(opts.start, log);
    return null;
  }
  return startPrimary(opts, log);
}

function workerContext(): WorkerContext {
  const index = Number(process.env[ENV_INDEX] ?? 0);
  return {
    index,
    id: currentWorkerId() ?? 'w1',
    restarts: Number(process.env[ENV_RESTARTS] ?? 0),
  };
}

async function runWorker(start: RunWorkersOptions['start'], log: (l: string) => void) {
  const ctx = workerContext();
  let started: StartedWorker | undefined;
  let closing = false;
  const close = (why: string): void => {
    if (closing) return;
    closing = true;
    log(`worker ${ctx.id} (pid ${process.pid}) closing: ${why}`);
    Promise.resolve(started?.close())
      .then(
        () => process.exit(0),
        (err: unknown) => {
          log(`worker ${ctx.id} (pid ${process.pid}) close failed: ${String(err)}`);
          process.exit(1);
        },
      )
      .catch(() => process.exit(1));
  };
  // The primary asks; a signal to this process alone (or to the whole group,
  // e.g. Ctrl-C) does the same; a primary that died leaves no orphan.
  process.on('message', (m: unknown) => {
    if (m === SHUTDOWN) close('asked by the primary');
  });
  process.once('SIGTERM', () => close('SIGTERM'));
  process.once('SIGINT', () => close('SIGINT'));
  process.once('disconnect', () => close('the primary is gone'));
  try {
    started = await start(ctx);
  } catch (err) {
    log(`worker ${ctx.id} (pid ${process.pid}) failed to start: ${(err as Error).stack ?? err}`);
    process.exit(1);
  }
  if (closing) close('closed while starting');
}

interface Slot {
  index: number;
  id: string;
  worker?: Worker;
  listening: boolean;
  starts: number;
  crashTimes: number[];
  timer?: NodeJS.Timeout;
  gaveUp: boolean;
}

function startPrimary(opts: RunWorkersOptions, log: (l: string) => void): WorkerPool {
  const restart = resolveRestart(opts.restart);
  const shutdownTimeoutMs = opts.shutdownTimeoutMs ?? DEFAULT_SHUTDOWN_TIMEOUT_MS;
  const slots: Slot[] = Array.from({ length: opts.workers }, (_, index) => ({
    index,
    id: `w${index + 1}`,
    listening: false,
    starts: 0,
    crashTimes: [],
    gaveUp: false,
  }));
  let closing: Promise<void> | undefined;
  let resolveDone!: (code: number) => void;
  const done = new Promise<number>((r) => (resolveDone = r));
  let port: number | undefined;
  const waiters: { resolve(p: number): void; reject(e: Error): void }[] = [];
  const settleListening = (): void => {
    if (port === undefined || slots.some((s) => !s.listening && !s.gaveUp)) return;
    for (const w of waiters.splice(0)) w.resolve(port);
  };

  const fork = (slot: Slot): void => {
    slot.timer = undefined;
    const worker = cluster.fork({
      ...opts.env,
      [ENV_INDEX]: String(slot.index),
      [ENV_RESTARTS]: String(slot.starts),
    });
    slot.starts++;
    slot.worker = worker;
    slot.listening = false;
    const pid = worker.process.pid;
    log(`worker ${slot.id} started (pid ${pid})`);
    worker.on('listening', (address) => {
      if (slot.worker !== worker) return;
      slot.listening = true;
      port ??= address.port;
      settleListening();
    });
    // An IPC error (e.g. a send to a worker that just died) must not crash the primary.
    worker.on('error', (err) => log(`worker ${slot.id} (pid ${pid}): ${err.message}`));
    worker.once('exit', (code, signal) => {
      if (slot.worker === worker) slot.worker = undefined;
      slot.listening = false;
      const how = signal ? `signal ${signal}` : `code ${code}`;
      if (closing) {
        log(`worker ${slot.id} (pid ${pid}) exited (${how})`);
        return;
      }
      const { decision, crashTimes } = decideRestart(slot.crashTimes, Date.now(), restart);
      slot.crashTimes = crashTimes;
      if (decision.restart) {
        log(`worker ${slot.id} (pid ${pid}) exited (${how}); restarting in ${decision.delayMs} ms`);
        slot.timer = setTimeout(() => fork(slot), decision.delayMs);
        return;
      }
      slot.gaveUp = true;
      log(
        `worker ${slot.id} (pid ${pid}) exited (${how}) ${crashTimes.length} times in ${restart.windowMs} ms; not restarting it`,
      );
      if (slots.every((s) => s.gaveUp)) {
        log('every worker was given up; stopping');
        void close(1);
      } else settleListening();
    });
  };

  const close = (code = 0): Promise<void> => {
    closing ??= new Promise<void>((resolve) => {
      const live: Worker[] = [];
      for (const slot of slots) {
        clearTimeout(slot.timer);
        if (slot.worker) live.push(slot.worker);
      }
      for (const w of waiters.splice(0)) w.reject(new Error('the worker pool stopped'));
      let left = live.length;
      const finish = (): void => {
        clearTimeout(killTimer);
        log(`stopped (code ${code})`);
        resolveDone(code);
        resolve();
      };
      const killTimer = setTimeout(() => {
        for (const w of live) {
          if (w.isDead()) continue;
          log(`worker pid ${w.process.pid} did not close in ${shutdownTimeoutMs} ms; SIGKILL`);
          w.process.kill('SIGKILL');
        }
      }, shutdownTimeoutMs);
      if (left === 0) return finish();
      log(`closing ${left} worker(s)`);
      for (const w of live) {
        w.once('exit', () => {
          if (--left === 0) finish();
        });
        if (w.isConnected()) w.send(SHUTDOWN, (err: Error | null) => err && undefined);
        else w.process.kill('SIGTERM');
      }
    });
    return closing;
  };

  if (opts.handleSignals !== false) {
    const onSignal = (signal: NodeJS.Signals): void => {
      log(`${signal}: closing every worker`);
      void close();
    };
    process.once('SIGTERM', onSignal);
    process.once('SIGINT', onSignal);
    // Once the pool stops (a signal, close(), or every slot given up), so does the primary.
    void done.then((code) => process.exit(code));
  }
  log(`primary pid ${process.pid}: starting ${opts.workers} worker(s)`);
  for (const slot of slots) fork(slot);

  return {
    pids: () => {
      const m = new Map<string, number>();
      for (const s of slots) if (s.worker?.process.pid) m.set(s.id, s.worker.process.pid);
      return m;
    },
    listening: () =>
      new Promise<number>((resolve, reject) => {
        if (closing) return reject(new Error('the worker pool stopped'));
        waiters.push({ resolve, reject });
        settleListening();
      }),
    close: () => close(0),
    done,
  };
}
