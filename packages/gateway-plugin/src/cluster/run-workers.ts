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
 * A worker is ready once its `start()` has returned (it says so over IPC):
 * not at its first listen, which may be a listener of its own (an ops port,
 * an embedded broker) while its main server still warms up.
 *
 * The primary restarts a crashed worker with backoff (restart-policy.ts),
 * kills one that is not ready `startTimeoutMs` after it was forked (a
 * failed start, counted as a crash), and on close() (or SIGTERM/SIGINT) asks
 * every worker to close gracefully, killing any that has not exited after
 * `shutdownTimeoutMs`.
 *
 * reload() (or SIGHUP) replaces the workers one slot at a time, as `nginx -s
 * reload` replaces its own: a new worker starts beside the old one, and only
 * once it is ready (its `start()` listens after `await lb.ready()`: broker and
 * warm-up done) is the old one asked to close gracefully. node:cluster keeps
 * the listen socket in the primary while any worker listens on it, so no
 * connection is refused on the way, and no slot ever serves cold.
 */
import cluster, { type Worker } from 'node:cluster';
import type { IncomingMessage, Server as HttpServer, ServerResponse } from 'node:http';
import { Server as NetServer } from 'node:net';
import { WORKER_ENV } from '@loadwise/protocol';
import { invalidOption } from '../errors';
import {
  functionOption,
  integerOption,
  numberOption,
  optionBag,
  rejectUnknownKeys,
} from '../load/option-check';
import { MAX_TIMER_MS } from '../options-validate';
import { decideConnectionCloses } from './listener-drain';
import { closeAcceptCopies } from './multi-accept';
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
  /**
   * The port the worker serves on, which `pool.listening()` reports (an
   * integer 1..65535; anything else fails the start). Without it the pool
   * reports the port of the first listen of its first ready worker: give it
   * when a worker listens on more than one port (an ops listener, an
   * embedded broker) before its main server.
   */
  port?: number;
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
  /**
   * How long a new worker may take to be ready (its `start()` returned), ms
   * (default 60 000). At a start or restart it is then killed and counted as
   * a crash of its slot (`restart`); on reload() the reload of its slot is
   * given up (it is killed, the old one keeps serving).
   */
  startTimeoutMs?: number;
  /** Lifecycle lines of the primary and workers (default: stderr, "loadwise workers: ..."). */
  log?: (line: string) => void;
  /**
   * The primary closes the pool on SIGTERM and SIGINT, reloads it on SIGHUP,
   * and exits with the pool's code once it stops (default true). False: the
   * caller calls `close()` / `reload()` and watches `done`.
   */
  handleSignals?: boolean;
}

export interface WorkerPool {
  /** Live workers: id → pid. */
  pids(): Map<string, number>;
  /**
   * Resolves with the port once every slot has a worker ready (its `start()` returned) and a
   * port is known: the `port` the first ready worker's `start()` returned, else the port of
   * that worker's first listen. Rejects if the pool stops first.
   */
  listening(): Promise<number>;
  /** Asks every worker to close, restarts none; resolves once all have exited. */
  close(): Promise<void>;
  /**
   * Replaces every worker, one slot at a time: starts the new one (running
   * the script's current code), waits until it is ready (its `start()`
   * returned), then asks the old one to close gracefully and waits for it to
   * exit. Resolves with the slots replaced. A new worker that exits or is not
   * ready within `startTimeoutMs` ends the reload (rejects): it is killed, the old worker
   * of that slot and of the slots after it keep serving. A call while a
   * reload runs returns the reload that follows it: one more, started once
   * the current one ends, which every call meanwhile shares.
   */
  reload(): Promise<ReloadResult>;
  /** The pool's exit code once it stops: 0 after close(), 1 when every slot was given up. */
  readonly done: Promise<number>;
}

/** What reload() did: the slots replaced, old pid → new pid. */
export interface ReloadResult {
  replaced: { id: string; oldPid: number | undefined; newPid: number | undefined }[];
}

const SHUTDOWN = 'loadwise:shutdown';
/** A worker's start() has returned: `{ loadwise: 'started', port? }` to the primary. */
const STARTED = 'started';
/** A closed worker's last round trip to the primary (leave()). */
const LEAVING = 'loadwise:leaving';
const LEFT = 'loadwise:left';
/** Emitted on a Worker in the primary once its start() has returned. */
const READY = 'loadwise:ready';
/** How long a ready worker may go without a listen before runWorkers says so. */
const NO_LISTEN_WARN_MS = 1_000;
const LEAVE_TIMEOUT_MS = 2_000;
const ENV_INDEX = WORKER_ENV.index;
const ENV_RESTARTS = WORKER_ENV.restarts;
/** How many times in a row this slot's worker failed in start() before: its stack is logged once. */
const ENV_FAILED_STARTS = WORKER_ENV.failedStarts;
const MAX_WORKERS = 256;
const DEFAULT_SHUTDOWN_TIMEOUT_MS = 15_000;
const DEFAULT_START_TIMEOUT_MS = 60_000;

/** In a worker of runWorkers: its id ('w1', ...), for log lines; undefined elsewhere. */
export function currentWorkerId(): string | undefined {
  const index = process.env[ENV_INDEX];
  return index === undefined ? undefined : `w${Number(index) + 1}`;
}

const defaultLog = (line: string): void => {
  process.stderr.write(`loadwise workers: ${line}\n`);
};

let outputGuarded = false;
/**
 * A stdout or stderr that fails stops the log, never the pool. With the log's reader gone
 * (journald restarted, a dead `| logger` pipe), the next lifecycle line was an uncaught
 * `write EPIPE`: the primary exited 1, and each worker, closing as its primary was gone,
 * died the same way at its next line, resetting the requests it had. Workers inherit the
 * primary's stdout and stderr, so both guard them. As the health agent's CLI does
 * (keepRunningWithoutOutput in packages/health-agent/src/cli.ts): the stream is left
 * destroyed and later writes to it are dropped. Once per process.
 */
function keepRunningWithoutOutput(): void {
  if (outputGuarded) return;
  outputGuarded = true;
  for (const stream of [process.stdout, process.stderr]) stream.on('error', () => undefined);
}

/**
 * In the primary: forks the workers and returns the pool. In a worker (the
 * same script, forked by the primary): runs `start()` and returns null.
 */
export async function runWorkers(opts: RunWorkersOptions): Promise<WorkerPool | null> {
  checkOptions(opts);
  keepRunningWithoutOutput();
  const log = opts.log ?? defaultLog;
  if (cluster.isWorker) {
    await runWorker(opts.start, log, opts.shutdownTimeoutMs ?? DEFAULT_SHUTDOWN_TIMEOUT_MS);
    return null;
  }
  return startPrimary(opts, log);
}

const KNOWN_OPTIONS = [
  'workers',
  'start',
  'env',
  'restart',
  'shutdownTimeoutMs',
  'startTimeoutMs',
  'log',
  'handleSignals',
];

/**
 * Every option, checked before anything forks, with a coded LW_GW_INVALID_OPTION: a timeout
 * past 2^31 - 1 ms (or NaN) fires after 1 ms, which turned every graceful close into a SIGKILL
 * and every reload into a failure; a misspelt key used to fall back to its default.
 */
function checkOptions(opts: RunWorkersOptions): void {
  const bag = optionBag('runWorkers options', opts);
  rejectUnknownKeys(bag, '', KNOWN_OPTIONS);
  // Required: no default to fall back to.
  if (bag.workers === undefined)
    throw invalidOption('workers', `an integer in [1, ${MAX_WORKERS}]`, undefined);
  integerOption(bag, '', 'workers', 1, 1, MAX_WORKERS);
  if (typeof bag.start !== 'function') throw invalidOption('start', 'a function', bag.start);
  functionOption(bag, '', 'log', defaultLog);
  numberOption(bag, '', 'shutdownTimeoutMs', 0, 0, MAX_TIMER_MS);
  numberOption(bag, '', 'startTimeoutMs', 0, 1, MAX_TIMER_MS);
  if (bag.handleSignals !== undefined && typeof bag.handleSignals !== 'boolean') {
    throw invalidOption('handleSignals', 'a boolean', bag.handleSignals);
  }
  const env = optionBag('env', bag.env);
  for (const [key, value] of Object.entries(env)) {
    if (typeof value !== 'string') throw invalidOption(`env.${key}`, 'a string', value);
  }
  resolveRestart(opts.restart);
}

function workerContext(): WorkerContext {
  const index = Number(process.env[ENV_INDEX] ?? 0);
  return {
    index,
    id: currentWorkerId() ?? 'w1',
    restarts: Number(process.env[ENV_RESTARTS] ?? 0),
  };
}

/**
 * Before a worker exits: a round trip to the primary. The primary may have
 * handed this worker a connection just before it learnt (from the server's
 * close()) that the worker stopped listening; node:cluster answers such a
 * connection "not accepted" and the primary gives it to another worker, but
 * only while this process lives: one in the IPC pipe of an exited worker
 * waits for the client's timeout. Messages on the channel keep their order,
 * so once the primary's answer arrives every earlier handoff has been
 * answered. Bounded by LEAVE_TIMEOUT_MS (a primary that does not answer).
 */
function leave(): Promise<void> {
  const send = process.send?.bind(process);
  if (!send || !process.connected) return Promise.resolve();
  return new Promise<void>((resolve) => {
    const done = (): void => {
      clearTimeout(timer);
      process.off('message', onMessage);
      resolve();
    };
    const onMessage = (m: unknown): void => {
      if (m === LEFT) done();
    };
    const timer = setTimeout(done, LEAVE_TIMEOUT_MS);
    process.on('message', onMessage);
    send(LEAVING, undefined, undefined, (err: Error | null) => err && done());
  });
}

async function runWorker(
  start: RunWorkersOptions['start'],
  log: (l: string) => void,
  shutdownTimeoutMs: number,
) {
  const ctx = workerContext();
  let started: StartedWorker | undefined;
  let starting = true;
  let closing = false;
  let repeatLogged = false;
  const close = (why: string): void => {
    if (closing) return;
    closing = true;
    log(`worker ${ctx.id} (pid ${process.pid}) closing: ${why}`);
    // The primary kills a worker that overruns its close; with the primary gone (or a signal
    // to this process alone) nobody would, so the worker bounds its own close the same way.
    setTimeout(() => {
      log(
        `worker ${ctx.id} (pid ${process.pid}) did not close in ${shutdownTimeoutMs} ms; exiting`,
      );
      exit(1);
    }, shutdownTimeoutMs).unref();
    // Asked while start() runs: its server may listen already, with connections handed to
    // it, so the worker closes what start() returns, once it has returned, rather than
    // exiting under them.
    if (!starting) finish();
  };
  const exit = (code: number): never => {
    process.off('SIGTERM', onSignal);
    process.off('SIGINT', onSignal);
    process.off('SIGHUP', onHup);
    return process.exit(code);
  };
  const finish = (): void => {
    Promise.resolve(started?.close())
      .then(leave)
      .then(
        () => exit(0),
        (err: unknown) => {
          log(`worker ${ctx.id} (pid ${process.pid}) close failed: ${String(err)}`);
          exit(1);
        },
      )
      .catch(() => exit(1));
  };
  // Every SIGTERM or SIGINT, not just the first: a repeat while the worker closes (to the
  // group twice, Ctrl-C twice) used to get Node's default action, and the worker died with
  // every request it still had reset. A repeat changes nothing, as in
  // examples/gateway-server.ts (nginx's graceful stop does not escalate either): the timer
  // in close() bounds the close all the same. exit() removes these handlers.
  const onSignal = (signal: NodeJS.Signals): void => {
    if (closing && !repeatLogged) {
      repeatLogged = true;
      log(`worker ${ctx.id} (pid ${process.pid}) ${signal}: already closing`);
    }
    close(signal);
  };
  // The primary asks; a signal to this process alone (or to the whole group,
  // e.g. Ctrl-C) does the same; a primary that died leaves no orphan.
  process.on('message', (m: unknown) => {
    if (m === SHUTDOWN) close('asked by the primary');
  });
  process.on('SIGTERM', onSignal);
  process.on('SIGINT', onSignal);
  // A SIGHUP reaches the workers too when it goes to the whole group (`kill -HUP -<pgid>`,
  // `pkill -HUP -f gateway`, the terminal hanging up), and Node's default action for it is
  // to exit: every worker died at once with its requests reset, and the primary restarted
  // them as crashes while it reloaded. A reload is the primary's to run, one slot at a
  // time; a worker leaves it to the primary (said once).
  let hupLogged = false;
  const onHup = (): void => {
    if (hupLogged) return;
    hupLogged = true;
    log(
      `worker ${ctx.id} (pid ${process.pid}) SIGHUP: ignored; reloads are the primary's (pid ${process.ppid})`,
    );
  };
  process.on('SIGHUP', onHup);
  // node:cluster's own 'disconnect' handler exits a worker at once when the primary is gone,
  // resetting every request in flight, unless the disconnect was asked for; it emits the
  // worker's 'disconnect' first, so marking it here turns that exit into a graceful close.
  cluster.worker?.once('disconnect', () => {
    cluster.worker!.exitedAfterDisconnect = true;
    close('the primary is gone');
  });
  let port: number | undefined;
  try {
    started = await start(ctx);
    port = servedPort(started);
  } catch (err) {
    // The stack at a slot's first failure; a slot that fails again (every restart, each
    // reload that retries it) says so in one line, not another screenful of the same stack.
    const failedBefore = Number(process.env[ENV_FAILED_STARTS] ?? 0);
    const why =
      failedBefore === 0
        ? ((err as Error)?.stack ?? String(err))
        : `${firstLine(err)} (failure ${failedBefore + 1} in a row; its stack is logged at the first)`;
    log(`worker ${ctx.id} (pid ${process.pid}) failed to start: ${why}`);
    exit(1);
  }
  // Ready: the primary counts this worker as serving (a reload closes the old one) now, not at
  // its first listen, which may be an ops listener or an embedded broker while the main server
  // still warms up. Sent after start()'s own listens, so the primary has seen those first.
  if (process.connected)
    process.send?.({ loadwise: STARTED, port }, undefined, undefined, () => undefined);
  starting = false;
  if (closing) finish();
}

/** The port a worker's `start()` returned, checked: undefined when it gave none. */
function servedPort(started: StartedWorker | undefined): number | undefined {
  const port = (started as { port?: unknown } | undefined)?.port;
  if (port === undefined) return undefined;
  if (typeof port !== 'number' || !Number.isInteger(port) || port < 1 || port > 65_535)
    throw invalidOption('start() port', 'an integer in [1, 65535]', port);
  return port;
}

/** The port of a worker's `{ loadwise: 'started', port? }` message; false for any other message. */
function startedMessage(m: unknown): { port: number | undefined } | false {
  if (typeof m !== 'object' || m === null || (m as { loadwise?: unknown }).loadwise !== STARTED)
    return false;
  const port = (m as { port?: unknown }).port;
  return { port: typeof port === 'number' ? port : undefined };
}

/** The first line of what was thrown: `Error: message`, never a throw of its own. */
function firstLine(err: unknown): string {
  let s: string;
  try {
    s = String(err);
  } catch {
    s = Object.prototype.toString.call(err);
  }
  return s.split('\n', 1)[0]!;
}

interface Slot {
  index: number;
  id: string;
  worker?: Worker;
  /** Its worker is ready: its start() has returned. */
  ready: boolean;
  starts: number;
  /** Workers of this slot in a row that failed in start() (exit 1 before ready). */
  failedStarts: number;
  crashTimes: number[];
  timer?: NodeJS.Timeout;
  /** Not restarted after too many crashes; only while the slot has no worker (a reload retries it). */
  gaveUp: boolean;
}

function startPrimary(opts: RunWorkersOptions, log: (l: string) => void): WorkerPool {
  const restart = resolveRestart(opts.restart);
  const shutdownTimeoutMs = opts.shutdownTimeoutMs ?? DEFAULT_SHUTDOWN_TIMEOUT_MS;
  const startTimeoutMs = opts.startTimeoutMs ?? DEFAULT_START_TIMEOUT_MS;
  const slots: Slot[] = Array.from({ length: opts.workers }, (_, index) => ({
    index,
    id: `w${index + 1}`,
    ready: false,
    starts: 0,
    failedStarts: 0,
    crashTimes: [],
    gaveUp: false,
  }));
  let closing: Promise<void> | undefined;
  let resolveDone!: (code: number) => void;
  const done = new Promise<number>((r) => (resolveDone = r));
  /** listening()'s port: set by the first worker ready (see notePort). */
  let port: number | undefined;
  const waiters: { resolve(p: number): void; reject(e: Error): void }[] = [];
  const settleListening = (): void => {
    // Every slot given up: none serves, though the pool may not have stopped yet (a reload
    // under way decides, see the workers' exit).
    if (
      port === undefined ||
      slots.some((s) => !s.ready && !s.gaveUp) ||
      slots.every((s) => s.gaveUp)
    )
      return;
    for (const w of waiters.splice(0)) w.resolve(port);
  };

  /**
   * Every worker forked that has not exited, in a slot or not (a reload's replacement still
   * starting, an old worker closing): close() stops them all. Collected from the slots, a
   * worker the slots had lost track of was left serving old code after the pool had stopped.
   */
  const forked = new Set<Worker>();
  /** Workers that have listened: the others hold no connection (close() stops them outright). */
  const listened = new WeakSet<Worker>();
  /** Workers whose start() has returned, with the port it returned, if any. */
  const ready = new WeakMap<Worker, number | undefined>();
  /** The ports each worker has listened on, in order. */
  const listenPorts = new WeakMap<Worker, number[]>();
  /**
   * The pool's port, once: what the first ready worker's start() returned, else the port of
   * that worker's first listen (which may come after start() returned, if it did not wait).
   * Not the first listen of any worker: an ops listener or an embedded broker may come first,
   * and listening() reported its port.
   */
  const notePort = (worker: Worker): void => {
    if (port !== undefined || !ready.has(worker)) return;
    const ports = listenPorts.get(worker) ?? [];
    port = ready.get(worker) ?? ports[0];
    if (ready.get(worker) === undefined && new Set(ports).size > 1) {
      log(
        `worker pid ${worker.process.pid} listens on ports ${[...new Set(ports)].join(', ')}; listening() reports ${port}, the first (return { port } from start() to choose)`,
      );
    }
  };

  /**
   * A worker ready with no port returned and no listen: listening() waits for its first
   * listen, and said nothing while it waited (a start() that returns before its server
   * listens, or that listens nowhere). Logged once a second later, if still so.
   */
  const warnIfNoListen = (worker: Worker, slot: Slot): void => {
    setTimeout(() => {
      if (port !== undefined || worker.isDead() || listened.has(worker)) return;
      log(
        `worker ${slot.id} (pid ${worker.process.pid}) is ready but has not listened; listening() waits for its first listen (return { port } from start())`,
      );
    }, NO_LISTEN_WARN_MS).unref();
  };

  /** Forks a worker for `slot`; it takes the slot's place only where the caller puts it there. */
  const spawn = (slot: Slot): Worker => {
    const worker = cluster.fork({
      ...opts.env,
      [ENV_INDEX]: String(slot.index),
      [ENV_RESTARTS]: String(slot.starts),
      [ENV_FAILED_STARTS]: String(slot.failedStarts),
    });
    slot.starts++;
    forked.add(worker);
    const pid = worker.process.pid;
    log(`worker ${slot.id} started (pid ${pid})`);
    // node:cluster says 'listening' for every listen of the worker (an ops listener, an
    // embedded broker): it may hold connections from then on, but is not ready yet.
    worker.on('listening', (address) => {
      listened.add(worker);
      const ports = listenPorts.get(worker);
      if (ports) ports.push(address.port);
      else listenPorts.set(worker, [address.port]);
      notePort(worker);
      settleListening();
    });
    // An IPC error (e.g. a send to a worker that just died) must not crash the primary.
    worker.on('error', (err) => log(`worker ${slot.id} (pid ${pid}): ${err.message}`));
    worker.on('message', (m: unknown) => {
      if (m === LEAVING && worker.isConnected())
        worker.send(LEFT, (err: Error | null) => err && undefined);
      const started = startedMessage(m);
      if (!started || ready.has(worker)) return;
      ready.set(worker, started.port);
      notePort(worker);
      if (port === undefined) warnIfNoListen(worker, slot);
      if (slot.worker === worker) {
        slot.ready = true;
        slot.failedStarts = 0;
      }
      settleListening();
      worker.emit(READY);
    });
    worker.once('exit', (code, signal) => {
      forked.delete(worker);
      const how = signal ? `signal ${signal}` : `code ${code}`;
      // A worker replaced by reload(), or a new one that never took its slot: no restart.
      if (slot.worker !== worker || closing) {
        log(`worker ${slot.id} (pid ${pid}) exited (${how})`);
        return;
      }
      // Exit 1 before ready: start() threw (or the worker died on its way there).
      if (!slot.ready && code === 1) slot.failedStarts++;
      slot.worker = undefined;
      slot.ready = false;
      const { decision, crashTimes } = decideRestart(slot.crashTimes, performance.now(), restart);
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
      if (!slots.every((s) => s.gaveUp)) settleListening();
      // A reload under way has a new worker starting (forked, not yet its slot's): stopping
      // here SIGKILLed it as "not listened yet" and the primary exited 1, when it was the
      // operator's fix (a 1-worker pool crash-looping, reloaded during its last life). The
      // reload decides: its new worker, once ready, takes the slot, given up or not;
      // if none comes back, the pool stops as below once the reload has ended.
      else if (reloading)
        log(
          'every worker was given up; the reload under way may bring one back, else the pool stops',
        );
      else stopGivenUp();
    });
    return worker;
  };

  /** Every slot given up, none coming back: the pool stops with code 1. */
  const stopGivenUp = (): void => {
    log('every worker was given up; stopping');
    void close(1);
  };

  /**
   * Starts `slot`'s worker (first start or restart) with a deadline: one that is not ready
   * (its start() has not returned) `startTimeoutMs` after its fork (start() hangs: a dependency that never answers) is killed,
   * and its exit counts as a crash of the slot, so a slot that never starts is restarted with
   * backoff and given up as one that crashes in a loop. Before, only a reload's new worker had
   * a deadline: such a slot went unnoticed for good, and `listening()` never resolved.
   */
  const fork = (slot: Slot): void => {
    slot.timer = undefined;
    slot.ready = false;
    const worker = spawn(slot);
    slot.worker = worker;
    const deadline = setTimeout(() => {
      // Replaced meanwhile (a reload), or the pool closes: whoever took over bounds it.
      if (slot.worker !== worker || slot.ready || closing || worker.isDead()) return;
      log(
        `worker ${slot.id} (pid ${worker.process.pid}) did not start in ${startTimeoutMs} ms (its start() had not returned); killing it (a failed start)`,
      );
      worker.process.kill('SIGKILL');
    }, startTimeoutMs);
    const settled = (): void => {
      clearTimeout(deadline);
      worker.off(READY, settled);
      worker.off('exit', settled);
    };
    worker.once(READY, settled);
    worker.once('exit', settled);
  };

  /** Asks a worker to close gracefully (SIGTERM if its IPC channel is gone). */
  const askToClose = (w: Worker): void => {
    if (w.isConnected()) w.send(SHUTDOWN, (err: Error | null) => err && undefined);
    else w.process.kill('SIGTERM');
  };

  /** Workers close() had to kill after `shutdownTimeoutMs`: its last line says how many. */
  let killedAtClose = 0;
  /** Resolves once `w` has exited; SIGKILL after `shutdownTimeoutMs`. */
  const exitOf = (w: Worker): Promise<void> =>
    new Promise<void>((resolve) => {
      if (w.isDead()) return resolve();
      const timer = setTimeout(() => {
        if (w.isDead()) return;
        log(`worker pid ${w.process.pid} did not close in ${shutdownTimeoutMs} ms; SIGKILL`);
        if (closing) killedAtClose++;
        w.process.kill('SIGKILL');
      }, shutdownTimeoutMs);
      w.once('exit', () => {
        clearTimeout(timer);
        resolve();
      });
    });

  /**
   * Starts `slot`'s replacement; resolves once it is ready (its start() has returned: its first
   * listen may be an ops listener while its main server warms up, and the old worker closed
   * then left the slot to a worker not serving yet), rejects if it exits or times out first.
   */
  const startReplacement = (slot: Slot): Promise<Worker> =>
    new Promise<Worker>((resolve, reject) => {
      const next = spawn(slot);
      const fail = (why: string): void => {
        clearTimeout(timer);
        next.off(READY, onReady);
        next.off('exit', onExit);
        if (!next.isDead()) next.process.kill('SIGKILL');
        reject(new Error(`the new worker ${slot.id} (pid ${next.process.pid}) ${why}`));
      };
      const onReady = (): void => {
        clearTimeout(timer);
        next.off('exit', onExit);
        resolve(next);
      };
      const onExit = (code: number | null, signal: string | null): void =>
        fail(
          `exited (${signal ? `signal ${signal}` : `code ${code}`}) before its start() returned`,
        );
      const timer = setTimeout(
        () => fail(`did not start in ${startTimeoutMs} ms (its start() had not returned)`),
        startTimeoutMs,
      );
      next.once(READY, onReady);
      next.once('exit', onExit);
    });

  /**
   * A reload tries a given-up slot again: the operator's reload is when the
   * cause (a dependency down, a bad deploy) may be fixed, and nothing else
   * ever would bring the slot back short of restarting the primary. A slot
   * that still fails stays given up; the reload goes on with the others.
   */
  const revive = async (slot: Slot, replaced: ReloadResult['replaced']): Promise<void> => {
    let next: Worker;
    try {
      next = await startReplacement(slot);
    } catch (err) {
      log(`reload: ${(err as Error).message}; slot ${slot.id} stays given up`);
      return;
    }
    if (closing) {
      askToClose(next);
      return;
    }
    slot.gaveUp = false;
    slot.crashTimes = [];
    slot.failedStarts = 0;
    slot.worker = next;
    slot.ready = true;
    log(`worker ${slot.id} is back (pid ${next.process.pid})`);
    replaced.push({ id: slot.id, oldPid: undefined, newPid: next.process.pid });
  };

  let reloading: Promise<ReloadResult> | undefined;
  /** The one reload asked for while another ran: it starts once that one has ended. */
  let followUp: Promise<ReloadResult> | undefined;
  /**
   * A call while a reload runs gets one more after it, not that one: the slots it has
   * replaced already run the code of before the call (a deploy that landed meanwhile), so
   * merging the two left the workers on mixed versions. Every call meanwhile shares the
   * same follow-up (a storm of SIGHUPs is one more reload), which runs whether the current
   * one succeeds or fails: the new call may be the fix.
   */
  const reload = (): Promise<ReloadResult> => {
    if (closing) return Promise.reject(new Error('the worker pool stopped'));
    if (reloading) {
      followUp ??= reloading
        .then(
          () => undefined,
          () => undefined, // logged by that reload
        )
        .then(() => {
          followUp = undefined;
          return reload();
        });
      return followUp;
    }
    reloading = (async () => {
      log(`reloading ${slots.length} worker(s), one at a time`);
      const replaced: ReloadResult['replaced'] = [];
      for (const slot of slots) {
        if (closing) throw new Error('the worker pool stopped during the reload');
        const old = slot.worker;
        if (slot.gaveUp) {
          await revive(slot, replaced);
          continue;
        }
        // A slot waiting for its restart gets the current code anyway.
        if (!old) continue;
        let next: Worker;
        try {
          next = await startReplacement(slot);
        } catch (err) {
          // The pool closes: close() stopped the replacement (it was not ready), and the
          // old worker is closing too; "keeps serving" would not be true.
          if (closing) throw new Error('the worker pool stopped during the reload');
          // The old worker may have died meanwhile: its slot restarts as after any crash, or
          // was given up (every slot given up: the pool stops as this reload ends).
          const after =
            slot.worker === old
              ? `the old worker ${slot.id} keeps serving`
              : slot.gaveUp
                ? `slot ${slot.id} stays given up`
                : `slot ${slot.id} restarts as after any crash`;
          log(`reload stopped: ${(err as Error).message}; ${after}`);
          throw err;
        }
        if (closing) {
          askToClose(next);
          throw new Error('the worker pool stopped during the reload');
        }
        // The new worker takes the slot before the old one is asked to close:
        // the primary's listen socket always has a worker.
        if (slot.worker === old) {
          slot.worker = next;
          slot.ready = true;
          slot.crashTimes = [];
          slot.failedStarts = 0;
          askToClose(old);
          await exitOf(old);
        } else {
          // The old worker died meanwhile: the new one takes the slot, and a
          // restart of it (pending, or already forked) is not needed. Nor is the
          // slot given up if that death was one too many, and the old code's
          // crashes do not count against the new one: left given up, the slot's
          // next reload revived it with another worker and lost track of this
          // one, which served on the old code, never closed (a third of the
          // connections of a 2-worker pool, and still running after close()).
          clearTimeout(slot.timer);
          slot.timer = undefined;
          if (slot.gaveUp)
            log(
              `worker ${slot.id} (pid ${next.process.pid}) takes its slot, given up as the old worker crashed`,
            );
          const restarted = slot.worker;
          slot.worker = next;
          slot.ready = true;
          slot.gaveUp = false;
          slot.crashTimes = [];
          slot.failedStarts = 0;
          if (restarted) askToClose(restarted);
        }
        replaced.push({ id: slot.id, oldPid: old.process.pid, newPid: next.process.pid });
      }
      log(`reloaded ${replaced.length} worker(s)`);
      settleListening();
      return { replaced };
    })().finally(() => {
      reloading = undefined;
      // Every slot given up while this reload ran, and none brought back (a worker's exit
      // left the stop to it): the pool stops, as it would have without the reload. Unless
      // another reload follows, which tries every given-up slot again (it may be the fix).
      if (!closing && !followUp && slots.every((s) => s.gaveUp)) stopGivenUp();
    });
    return reloading;
  };

  const close = (code = 0): Promise<void> => {
    closing ??= (async () => {
      const live = new Set<Worker>(forked);
      for (const slot of slots) clearTimeout(slot.timer);
      for (const w of waiters.splice(0)) w.reject(new Error('the worker pool stopped'));
      if (live.size > 0) {
        log(`closing ${live.size} worker(s)`);
        await Promise.all(
          [...live].map((w) => {
            const exited = exitOf(w);
            // A worker still starting (a reload's replacement warming up, a restart) has no
            // connection yet; asked to close, it closed only once its start() had returned,
            // which listens: the primary bound the port again after the last serving worker
            // had released it, took connections and reset them (helper: SIGTERM during a
            // reload), and the stop waited out the warm-up (up to the broker's 10 s).
            if (listened.has(w) || ready.has(w)) askToClose(w);
            else {
              log(`worker pid ${w.process.pid} has not listened yet; stopping it (SIGKILL)`);
              w.process.kill('SIGKILL');
            }
            return exited;
          }),
        );
      }
      // The exit code stays the caller's (a supervisor's stop succeeded), but a close that had
      // to kill workers mid-request says so in its last line.
      const killed =
        killedAtClose > 0
          ? `; ${killedAtClose} worker(s) killed after ${shutdownTimeoutMs} ms, their requests cut`
          : '';
      log(`stopped (code ${code})${killed}`);
      resolveDone(code);
    })();
    return closing;
  };

  if (opts.handleSignals !== false) {
    // Every SIGTERM or SIGINT, not just the first: a second one (to the group twice, Ctrl-C
    // twice, a supervisor that repeats its stop) used to get Node's default action, killing
    // the primary and with it the SIGKILL after `shutdownTimeoutMs`, so the supervisor saw
    // the service stopped while its workers still drained. A repeat changes nothing, as in
    // examples/gateway-server.ts and in the workers: exitOf() bounds the close all the same.
    let repeatLogged = false;
    const onSignal = (signal: NodeJS.Signals): void => {
      if (!closing) {
        log(`${signal}: closing every worker`);
        void close();
      } else if (!repeatLogged) {
        repeatLogged = true;
        log(
          `${signal}: already closing every worker (SIGKILL ${shutdownTimeoutMs} ms after the close began)`,
        );
      }
    };
    process.on('SIGTERM', onSignal);
    process.on('SIGINT', onSignal);
    const onHup = (): void => {
      if (closing) {
        log('SIGHUP: ignored while the pool closes');
        return;
      }
      if (followUp) log('SIGHUP: reload under way; another already follows it');
      else if (reloading) log('SIGHUP: reload under way; another follows it');
      else log('SIGHUP: reloading every worker');
      reload().then(
        () => undefined,
        () => undefined, // logged by reload()
      );
    };
    process.on('SIGHUP', onHup);
    // Once the pool stops (a signal, close(), or every slot given up), so does the primary,
    // its handlers removed first.
    void done.then((code) => {
      process.off('SIGTERM', onSignal);
      process.off('SIGINT', onSignal);
      process.off('SIGHUP', onHup);
      process.exit(code);
    });
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
    reload,
    done,
  };
}

/** closeListener()'s options: how the open connections end. */
export interface CloseListenerOptions {
  /**
   * Spread the connections' ends over this long, ms (default 0). The share
   * of answers that say `Connection: close` grows from none when the
   * listener stops to all `drainMs` later (HAProxy's close-spread-time,
   * Envoy's gradual drain), so the clients move to the other workers over
   * that time instead of all within a few milliseconds (docs/gateway.md,
   * Every core). 0: every answer from now on closes its connection, those
   * under way when closeListener is called included. At most
   * 2^31 - 1, as every ms option; checked when closeListener is called (a
   * bad value, a non-function `now` or `random`, or an unknown key throws
   * LW_GW_INVALID_OPTION before the server stops).
   */
  drainMs?: number;
  /** Clock of the ramp, ms (default Date.now). */
  now?: () => number;
  /** Random source of the per-answer draw (default Math.random). */
  random?: () => number;
}

/**
 * Stops `server` accepting connections, without closing the idle keep-alive
 * ones; resolves once every connection has ended. Node's http `server.close()`
 * closes idle keep-alive connections at once, and a client that picked one of
 * them to send its next request on gets ECONNRESET: 48-246 of them a reload at
 * 970 req/s in the bench's restart variant, against 0-1 this way (docs/bench.md,
 * "Restart as a reload"). Left open, each connection ends after its next
 * answer that says `Connection: close` (every answer from now on, whichever
 * route sends it, or a share growing over `drainMs`) or at the server's
 * `keepAliveTimeout`. An answer already under way is decided too: where its
 * head is still to go out from the balancer, the head says `close`; else its
 * connection closes as the answer ends (listener-drain.ts). For a worker's
 * `close()`, with `lb.close({ graceMs })` beside it.
 */
export function closeListener(server: HttpServer, opts: CloseListenerOptions = {}): Promise<void> {
  // Checked here, not at the first answer: a bad `now` would throw inside the 'request' listener.
  const bag = optionBag('closeListener options', opts);
  rejectUnknownKeys(bag, 'closeListener.', ['drainMs', 'now', 'random']);
  const drainMs = numberOption(bag, 'closeListener.', 'drainMs', 0, 0, MAX_TIMER_MS);
  const now = functionOption(bag, 'closeListener.', 'now', Date.now);
  const random = functionOption(bag, 'closeListener.', 'random', Math.random);
  const from = now();
  const closes = new WeakMap<ServerResponse, boolean>();
  const decide = (res: ServerResponse): boolean => {
    let close = closes.get(res);
    if (close === undefined) {
      const share = drainMs === 0 ? 1 : (now() - from) / drainMs;
      close = share >= 1 || random() < share;
      closes.set(res, close);
    }
    if (close) res.shouldKeepAlive = false;
    return close;
  };
  // The decision for every answer from now on, those already under way included (the
  // balancer asks it for their heads, and it is taken as any other ends: listener-drain.ts);
  // the balancer's drain leaves it to this one.
  const ended = decideConnectionCloses(server, decide);
  // First in line, before the app has written anything.
  server.prependListener('request', (_req: IncomingMessage, res: ServerResponse) => {
    decide(res);
  });
  return new Promise<void>((resolve) => {
    if (!server.listening) {
      // Already closed: wait for its connections, if any are left.
      server.getConnections((err, n) =>
        err || n === 0 ? resolve() : server.once('close', () => resolve()),
      );
      return;
    }
    closeAcceptCopies(server);
    NetServer.prototype.close.call(server, () => resolve());
  }).finally(ended);
}
