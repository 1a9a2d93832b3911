/**
 * A backend's keep-alive pool that keeps its connections in step with the
 * backend's answers as far as HTTP/1.1 lets a client tell (docs/gateway.md,
 * "Headers"):
 *
 * - A pooled connection the backend writes to while no request is on it is
 *   closed, as nginx's upstream keepalive does (its idle connections' read
 *   handler closes them on any byte or EOF). Such bytes are the tail of an
 *   answer that was complete at its head (a body after a `HEAD`, `204` or
 *   `304`, sent in a later write), surplus after a `Content-Length` or the
 *   last chunk, or an answer nobody asked for: the backend and the gateway no
 *   longer agree where its answers start. Node drops bytes that arrive on an
 *   idle pooled socket without a word, and would hand the connection to the
 *   next request still out of step; a byte already buffered when the answer ends
 *   would be read as the next answer's first.
 * - That is proof the backend writes what nobody asked for, and a connection
 *   busy at the time cannot show it: an extra answer landing on a request in
 *   flight is read as that request's answer, and the connection stays one
 *   answer behind, each request given the one before's, for as long as it
 *   never idles. So the whole pool is retired (`retirePool`, once a second
 *   at most): idle connections closed, busy ones after their current answer.
 * - A connection carries `maxRequests` answers at most (nginx's
 *   `keepalive_requests`, 1000 by default there and here), which bounds how
 *   long an out-of-step connection nobody noticed can serve wrong answers.
 *
 * The connection left in step is untouched but for a count of its answers
 * (on the Agent's 'free') and one listener added when it is pooled, removed
 * when it is reused.
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
/** Answers the connection has carried to their end. */
const ANSWERS = Symbol('loadwise.answers');
/** The pool was retired while the connection was busy: it is not pooled again. */
const RETIRED = Symbol('loadwise.retired');
type GuardedSocket = Socket & {
  [GUARD]?: (chunk: Buffer) => void;
  [ANSWERS]?: number;
  [RETIRED]?: true;
};

/** Agent.prototype.keepSocketAlive returns whether to pool; Node's types say void. */
type KeepSocketAlive = (socket: Socket) => boolean;

/** Node's Agent bookkeeping: sockets per origin, in use and idle (public, untyped in @types/node). */
type SocketLists = Record<string, GuardedSocket[] | undefined>;

/**
 * Pools are retired once a second at most: a client that makes a backend
 * misbehave on purpose (a `HEAD` to a backend that sends a body after it,
 * over and over) would otherwise make the gateway reconnect, and redo its
 * TLS handshakes, for every request. In between, the connection the
 * evidence came on is still closed.
 */
export const RETIRE_INTERVAL_MS = 1_000;

/** How long a connection whose backend hints `Keep-Alive: timeout=1` stays pooled, ms. */
export const SHORT_HINT_IDLE_MS = 500;

/** The seconds of the backend's `Keep-Alive: timeout=N` hint on its last answer, as Node reads it. */
function hintSeconds(socket: Socket): number | undefined {
  const res = (socket as Socket & { _httpMessage?: { res?: { headers: Record<string, unknown> } } })
    ._httpMessage?.res;
  const hint = res?.headers['keep-alive'];
  if (typeof hint !== 'string') return undefined;
  const match = /^timeout=(\d+)/.exec(hint);
  return match ? Number(match[1]) : undefined;
}

const RETIRE = Symbol('loadwise.retirePool');
type PoolAgent = HttpAgent & { [RETIRE]?: () => void };

/**
 * Retires every connection of a backend's pool: the idle ones close now,
 * the ones carrying a request close after its answer. New requests open new
 * connections. For an agent of createPoolAgent's (no more than once every
 * RETIRE_INTERVAL_MS); a no-op for another.
 */
export function retirePool(agent: HttpAgent): void {
  (agent as PoolAgent)[RETIRE]?.();
}

/**
 * Closes a backend's idle pooled connections, and only those: one of them was just found
 * closed by the backend as it was reused (the idle-close race, request-flow.ts), and the
 * pool hands out the connection freed last (LIFO), so every other idle one has been idle
 * longer and most likely met the same idle timer. Left, the request sent again was handed
 * the next of them (3 of 60 GETs still got 503 with 5 connections idle together).
 */
export function closeIdle(agent: HttpAgent): void {
  for (const list of Object.values(agent.freeSockets as SocketLists))
    for (const socket of list ?? []) socket.destroy();
}

/**
 * A keep-alive pool (https when `tls` options are given) whose connections
 * are guarded as above: Node's own Agent with its two pooling hooks,
 * `keepSocketAlive` (a connection goes back to the pool) and `reuseSocket`
 * (a pooled one is taken), wrapped. https.Agent inherits both from http.Agent.
 */
export function createPoolAgent(
  options: HttpAgentOptions,
  tls: HttpsAgentOptions | undefined,
  maxRequests: number,
  onStray: StrayBytesHandler,
  now: () => number = Date.now,
): HttpAgent {
  const agent: PoolAgent = tls ? new HttpsAgent({ ...options, ...tls }) : new HttpAgent(options);
  const keepSocketAlive = agent.keepSocketAlive as unknown as KeepSocketAlive;
  const reuseSocket = agent.reuseSocket;
  let retiredAtMs = -Infinity;
  agent[RETIRE] = (): void => {
    const nowMs = now();
    if (nowMs - retiredAtMs < RETIRE_INTERVAL_MS) return;
    retiredAtMs = nowMs;
    for (const list of Object.values(agent.freeSockets as SocketLists))
      for (const socket of list ?? []) socket.destroy();
    for (const list of Object.values(agent.sockets as SocketLists))
      for (const socket of list ?? []) socket[RETIRED] = true;
  };
  const stray = (socket: GuardedSocket, bytes: number): void => {
    onStray(bytes);
    socket.destroy();
    retirePool(agent);
  };
  // An answer has ended: before the Agent hands the connection to a request waiting for
  // one, or pools it (its own 'free' listener, which passes over a destroyed socket).
  agent.prependListener('free', (socket: GuardedSocket) => {
    const answers = (socket[ANSWERS] ?? 0) + 1;
    socket[ANSWERS] = answers;
    if (answers >= maxRequests || socket[RETIRED] === true) socket.destroy();
  });
  const pool = (socket: GuardedSocket): boolean => {
    if (!keepSocketAlive.call(agent, socket)) {
      // Node keeps no connection whose backend says `Keep-Alive: timeout=1` (a
      // keepAliveTimeout of 1-1.999 s): it closes a second before the hint, which leaves
      // nothing. Every request then opened a connection (and a TLS handshake: 300 requests
      // took 1.36 s against 0.43 s with a 2 s hint). Kept for half the hint instead.
      if (hintSeconds(socket) !== 1) return false;
      socket.setTimeout(SHORT_HINT_IDLE_MS);
    }
    if (socket.readableLength > 0) {
      // Already read and waiting: pooled, it would be the next answer's start.
      stray(socket, socket.readableLength);
      return false;
    }
    let guard = socket[GUARD];
    if (guard === undefined) {
      guard = (chunk: Buffer): void => stray(socket, chunk.length);
      socket[GUARD] = guard;
    }
    socket.on('data', guard);
    return true;
  };
  agent.keepSocketAlive = pool;
  agent.reuseSocket = (socket: GuardedSocket, req: ClientRequest): void => {
    const guard = socket[GUARD];
    if (guard !== undefined) socket.removeListener('data', guard);
    reuseSocket.call(agent, socket, req);
  };
  return agent;
}
