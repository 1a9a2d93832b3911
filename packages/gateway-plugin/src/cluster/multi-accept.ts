/**
 * multiAccept(server, { handles }): more than one connection accepted per
 * event-loop turn on Node 20.
 *
 * libuv 1.45+ (Node 20) accepts one connection per listen handle per loop
 * turn (libuv pull request 3696) and relies on level-triggered polling for
 * the next. A gateway whose turns are busy (each turn reads every ready
 * connection's requests) then takes new connections at the rate of its
 * turns: under a connection storm (a cold start, clients opening sockets
 * when answers slow down) thousands wait in the kernel's accept queue for
 * seconds, out of reach of the gateway's own admission and shedding
 * (docs/gateway.md, "Accept queue"; `npm run bench:accept-rate`).
 *
 * nginx answers the same problem with `multi_accept`; Node 22.12 with
 * `reusePort`. On Node 20 the portable remedy is more handles on the same
 * listen socket: each duplicate file descriptor is a watcher of its own, so a
 * turn accepts up to `handles` connections. Node cannot dup(2) a socket, so a
 * short-lived child process receives the listen socket as an inherited file
 * descriptor (it never listens, so it accepts nothing) and sends it back over
 * IPC `handles - 1` times; each copy arrives as a new descriptor (SCM_RIGHTS),
 * as node:cluster's shared handles do. multiAccept resolves once the helper
 * has exited, so no other process holds the socket.
 *
 * Every connection a copy accepts is handed to `server` as its own: counted
 * in its connections, subject to its `maxConnections`, closed with it. The
 * copies stop accepting when `server.close()` is called (or closeListener(),
 * or the server emits 'close'), and follow its ref()/unref().
 */
import { spawn } from 'node:child_process';
import cluster from 'node:cluster';
import { Server as NetServer, type Socket } from 'node:net';
import { invalidOption } from '../errors';
import { integerOption, optionBag, rejectUnknownKeys } from '../load/option-check';

export interface MultiAcceptOptions {
  /**
   * Accept handles in all, the server's own included (2..64): the most
   * connections one event-loop turn can accept. 1 leaves the server as it is.
   */
  handles: number;
  /**
   * The backlog the server listens with (default 511, Node's own). Each copy
   * listens on the same socket again, and listen(2) sets the socket's
   * backlog anew, so a wrong figure here changes the server's.
   */
  backlog?: number;
  /** How long the helper process may take to hand the copies over, ms (default 10 000). */
  timeoutMs?: number;
}

const MAX_HANDLES = 64;
const DEFAULT_TIMEOUT_MS = 10_000;
/** Node's listen backlog when none is given. */
const DEFAULT_BACKLOG = 511;
/** The listen socket's descriptor in the helper: stdio 0-2, the IPC channel at 3. */
const CHILD_FD = 4;
/**
 * The helper: wraps the inherited descriptor in a TCP handle without
 * listening (libuv does not watch it, so it accepts nothing), sends it
 * `count` times, and exits once the parent says it has them all.
 */
const HELPER = `
const { TCP, constants } = process.binding('tcp_wrap');
const handle = new TCP(constants.SERVER);
const err = handle.open(${CHILD_FD});
if (err) { process.send({ error: err }); process.exit(1); }
const count = Number(process.argv[1]);
for (let i = 0; i < count; i++) process.send({ copy: i }, handle);
process.on('message', () => process.exit(0));
process.on('disconnect', () => process.exit(0));
`;

/** What net.Server keeps about its connections; internal, stable since Node 0.x. */
interface ServerInternals {
  _connections: number;
  _handle: unknown;
  noDelay?: boolean;
  keepAlive?: boolean;
  keepAliveInitialDelay?: number;
  allowHalfOpen?: boolean;
  pauseOnConnect?: boolean;
  /** Set by unref(). */
  _unref?: boolean;
}
interface SocketInternals {
  server: unknown;
  _server: unknown;
}

/** The copies of each server multiAccept was given, for closeListener (run-workers.ts). */
const copiesOf = new WeakMap<NetServer, NetServer[]>();

/** Stops every copy of `server`'s listen handle from accepting (no-op without copies). */
export function closeAcceptCopies(server: NetServer): void {
  const copies = copiesOf.get(server);
  if (copies === undefined) return;
  copiesOf.delete(server);
  for (const copy of copies) if (copy.listening) copy.close();
}

/** Handles the helper sends back: raw TCP handles on new descriptors of the listen socket. */
function copyListenHandle(server: NetServer, count: number, timeoutMs: number): Promise<unknown[]> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ['--no-deprecation', '-e', HELPER, String(count)], {
      // The listen socket itself (its raw handle), inherited as descriptor 4.
      stdio: [
        'ignore',
        'ignore',
        'inherit',
        'ipc',
        (server as unknown as ServerInternals)._handle as never,
      ],
      env: { ...process.env, NODE_OPTIONS: '' },
    });
    const copies: unknown[] = [];
    let settled = false;
    const fail = (why: string): void => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      for (const handle of copies) (handle as { close(): void }).close();
      child.kill('SIGKILL');
      reject(new Error(`multiAccept: ${why}`));
    };
    const timer = setTimeout(
      () => fail(`the helper process sent ${copies.length} of ${count} copies in ${timeoutMs} ms`),
      timeoutMs,
    );
    child.on('error', (e) => fail(`could not start the helper process (${e.message})`));
    child.on('exit', (code, signal) => {
      if (settled) return;
      if (copies.length < count) {
        fail(`the helper process exited (${signal ?? code}) before sending every copy`);
        return;
      }
      // Only now: while the helper holds its descriptor the socket stays open, and a
      // closed server's port would still complete handshakes nobody accepts.
      settled = true;
      clearTimeout(timer);
      resolve(copies);
    });
    child.on('message', (message: { error?: number }, handle: unknown) => {
      if (settled || copies.length === count) {
        (handle as { close?: () => void } | undefined)?.close?.();
        return;
      }
      if (message.error !== undefined || handle === undefined) {
        fail(`the helper process could not open the listen socket (${message.error})`);
        return;
      }
      copies.push(handle);
      if (copies.length === count) child.send('done');
    });
  });
}

/**
 * Adds `handles - 1` accept handles to a listening TCP server (see the top of
 * this file). Resolves once they accept; rejects, leaving the server as it
 * was, if the server is not listening on TCP, in a node:cluster worker (the
 * primary accepts there), or the helper process fails.
 */
export async function multiAccept(server: NetServer, opts: MultiAcceptOptions): Promise<void> {
  const bag = optionBag('multiAccept options', opts);
  rejectUnknownKeys(bag, 'multiAccept.', ['handles', 'backlog', 'timeoutMs']);
  if (bag['handles'] === undefined) {
    throw invalidOption('multiAccept.handles', `an integer in [1, ${MAX_HANDLES}]`, undefined);
  }
  const handles = integerOption(bag, 'multiAccept.', 'handles', 1, 1, MAX_HANDLES);
  const timeoutMs = integerOption(bag, 'multiAccept.', 'timeoutMs', DEFAULT_TIMEOUT_MS, 1, 600_000);
  const backlog = integerOption(bag, 'multiAccept.', 'backlog', DEFAULT_BACKLOG, 1, 65_535);
  if (handles === 1) return;
  if (cluster.isWorker) {
    throw new Error('multiAccept: in a node:cluster worker the primary accepts the connections');
  }
  const address = server.address();
  if (!server.listening || address === null || typeof address === 'string') {
    throw new Error('multiAccept: the server must be listening on a TCP port');
  }
  if (copiesOf.has(server)) throw new Error('multiAccept: already called on this server');
  const raw = await copyListenHandle(server, handles - 1, timeoutMs);
  if (!server.listening) {
    // Closed while the helper ran.
    for (const handle of raw) (handle as { close(): void }).close();
    return;
  }
  const main = server as unknown as ServerInternals;
  const copies = raw.map((handle) => {
    const copy = new NetServer({
      allowHalfOpen: main.allowHalfOpen,
      pauseOnConnect: main.pauseOnConnect,
      noDelay: main.noDelay,
      keepAlive: main.keepAlive,
      keepAliveInitialDelay: main.keepAliveInitialDelay,
    });
    copy.on('connection', (socket: Socket) => adopt(server, copy, socket));
    // Accept errors (EMFILE...) are the server's, as on its own handle.
    copy.on('error', (e) => server.emit('error', e));
    copy.listen(handle as Parameters<NetServer['listen']>[0], backlog);
    return copy;
  });
  copiesOf.set(server, copies);
  // Stop accepting when the server stops: close() (however it is called) and 'close'.
  const close = server.close;
  server.close = function closeWithCopies(
    this: NetServer,
    ...args: Parameters<NetServer['close']>
  ) {
    closeAcceptCopies(server);
    return close.apply(this, args);
  } as NetServer['close'];
  server.once('close', () => closeAcceptCopies(server));
  // ref()/unref() cover the copies: an unref'd server must not keep the process alive.
  if (main._unref) for (const copy of copies) copy.unref();
  const { ref, unref } = server;
  server.ref = function refWithCopies(this: NetServer) {
    for (const copy of copiesOf.get(server) ?? []) copy.ref();
    return ref.call(this);
  };
  server.unref = function unrefWithCopies(this: NetServer) {
    for (const copy of copiesOf.get(server) ?? []) copy.unref();
    return unref.call(this);
  };
}

/** Moves a connection a copy accepted onto `server`, as if its own handle had accepted it. */
function adopt(server: NetServer, copy: NetServer, socket: Socket): void {
  const from = copy as unknown as ServerInternals;
  const to = server as unknown as ServerInternals;
  from._connections--;
  if (!server.listening || (server.maxConnections && to._connections >= server.maxConnections)) {
    socket.destroy();
    return;
  }
  to._connections++;
  const s = socket as unknown as SocketInternals;
  s.server = server;
  s._server = server;
  server.emit('connection', socket);
}
