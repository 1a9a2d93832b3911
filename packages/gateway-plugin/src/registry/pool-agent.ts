/**
 * A backend's keep-alive pool that closes a pooled connection the backend
 * writes to while no request is on it, as nginx's upstream keepalive does
 * (its idle connections' read handler closes them on any byte or EOF).
 *
 * Such bytes are the tail of an answer that was complete at its head (a body
 * after a `HEAD`, `204` or `304`, sent in a later write) or surplus after a
 * `Content-Length` or the last chunk: the backend and the gateway no longer
 * agree where its answers start. Node drops bytes that arrive on an idle
 * pooled socket without a word, and the connection is handed to the next
 * request still out of step; a byte already buffered when the answer ends
 * would be read as the next answer's first. The pool now refuses such a
 * connection and says so (`onStray`). The connection left in step is
 * untouched: one listener added when it is pooled, removed when reused.
 *
 * What no pool can see: bytes that arrive after the connection was handed to
 * the next request, which that request's parser reads (docs/gateway.md,
 * "Answers and connections").
 */
import { Agent as HttpAgent, type AgentOptions as HttpAgentOptions } from 'node:http';
import { Agent as HttpsAgent, type AgentOptions as HttpsAgentOptions } from 'node:https';
import type { Socket } from 'node:net';

/** Called with the number of bytes a backend sent on an idle pooled connection. */
export type StrayBytesHandler = (bytes: number) => void;

const GUARD = Symbol('loadwise.idleGuard');
type GuardedSocket = Socket & { [GUARD]?: (chunk: Buffer) => void };

/** Agent.prototype.keepSocketAlive returns whether to pool; Node's types say void. */
type KeepSocketAlive = (socket: Socket) => boolean;

function pool(socket: GuardedSocket, kept: boolean, onStray: StrayBytesHandler): boolean {
  if (!kept) return false;
  if (socket.readableLength > 0) {
    // Already read and waiting: pooled, it would be the next answer's start.
    onStray(socket.readableLength);
    return false; // the Agent destroys it
  }
  let guard = socket[GUARD];
  if (guard === undefined) {
    guard = (chunk: Buffer): void => {
      onStray(chunk.length);
      socket.destroy();
    };
    socket[GUARD] = guard;
  }
  socket.on('data', guard);
  return true;
}

function unpool(socket: GuardedSocket): void {
  const guard = socket[GUARD];
  if (guard !== undefined) socket.removeListener('data', guard);
}

class GuardedHttpAgent extends HttpAgent {
  constructor(
    options: HttpAgentOptions,
    private readonly onStray: StrayBytesHandler,
  ) {
    super(options);
  }
  override keepSocketAlive(socket: Socket): boolean {
    const kept = (HttpAgent.prototype.keepSocketAlive as unknown as KeepSocketAlive).call(
      this,
      socket,
    );
    return pool(socket, kept, this.onStray);
  }
  override reuseSocket(socket: Socket, req: Parameters<HttpAgent['reuseSocket']>[1]): void {
    unpool(socket);
    super.reuseSocket(socket, req);
  }
}

class GuardedHttpsAgent extends HttpsAgent {
  constructor(
    options: HttpsAgentOptions,
    private readonly onStray: StrayBytesHandler,
  ) {
    super(options);
  }
  override keepSocketAlive(socket: Socket): boolean {
    const kept = (HttpsAgent.prototype.keepSocketAlive as unknown as KeepSocketAlive).call(
      this,
      socket,
    );
    return pool(socket, kept, this.onStray);
  }
  override reuseSocket(socket: Socket, req: Parameters<HttpsAgent['reuseSocket']>[1]): void {
    unpool(socket);
    super.reuseSocket(socket, req);
  }
}

/** A keep-alive pool (https when `tls` options are given) whose idle connections are guarded. */
export function createPoolAgent(
  options: HttpAgentOptions,
  tls: HttpsAgentOptions | undefined,
  onStray: StrayBytesHandler,
): HttpAgent {
  return tls
    ? new GuardedHttpsAgent({ ...options, ...tls }, onStray)
    : new GuardedHttpAgent(options, onStray);
}
