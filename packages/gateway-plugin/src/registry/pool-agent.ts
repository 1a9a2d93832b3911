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
import {
  Agent as HttpAgent,
  type AgentOptions as HttpAgentOptions,
  type ClientRequest,
} from 'node:http';
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

/**
 * A keep-alive pool (https when `tls` options are given) whose idle
 * connections are guarded: Node's own Agent with its two pooling hooks,
 * `keepSocketAlive` (a connection goes back to the pool) and `reuseSocket`
 * (a pooled one is taken), wrapped. https.Agent inherits both from http.Agent.
 */
export function createPoolAgent(
  options: HttpAgentOptions,
  tls: HttpsAgentOptions | undefined,
  onStray: StrayBytesHandler,
): HttpAgent {
  const agent = tls ? new HttpsAgent({ ...options, ...tls }) : new HttpAgent(options);
  const keepSocketAlive = agent.keepSocketAlive as unknown as KeepSocketAlive;
  const reuseSocket = agent.reuseSocket;
  agent.keepSocketAlive = (socket: Socket): boolean =>
    pool(socket, keepSocketAlive.call(agent, socket), onStray);
  agent.reuseSocket = (socket: Socket, req: ClientRequest): void => {
    unpool(socket);
    reuseSocket.call(agent, socket, req);
  };
  return agent;
}
