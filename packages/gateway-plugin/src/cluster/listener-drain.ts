/**
 * The servers whose connections `closeListener` (run-workers.ts) closes, at
 * once or gradually, each with its decision: whether an answer's connection
 * closes after it. While the balancer drains (`lb.close()`), it otherwise
 * answers every request on a server that has stopped listening with
 * `Connection: close`; on these it asks the decision instead.
 *
 * closeListener decides in its first 'request' listener for the requests that
 * come after it is called. An answer already under way then was decided by no
 * one: it said keep-alive, and its connection stayed open after it until
 * `keepAliveTimeout` or the end of `lb.close()`'s grace (5 s of a 5 s grace in
 * a review, against 0.3 s with `server.close()`). Such an answer is decided
 * where it is next seen: by the balancer as it writes the head of an answer it
 * proxies (`closesForDrain`), so the head says `close`; else as the answer
 * ends (Node's `http.server.response.finish` diagnostics channel, for the
 * app's own answers and for heads that went out before), and then its
 * connection closes right after it.
 */
import { subscribe, unsubscribe } from 'node:diagnostics_channel';
import type { ServerResponse } from 'node:http';

/**
 * closeListener's decision for one answer: true when its connection is to
 * close after it (and `res.shouldKeepAlive` is then false). Taken once per
 * answer: a second call returns the first one's.
 */
export type CloseDecision = (res: ServerResponse) => boolean;

/** Servers closeListener closes, with its decision. */
const decisions = new WeakMap<object, CloseDecision>();
/** How many servers are in `decisions`: none, and nothing is looked up or subscribed. */
let registered = 0;

const FINISH_CHANNEL = 'http.server.response.finish';

/**
 * An answer that ends on such a server without a decision (under way when closeListener was
 * called, its head not the balancer's): decided now; to close, its connection closes once it
 * is written, as Node does after an answer whose client half-closed (`_last`). Node calls
 * this before it looks at `_last` (resOnFinish in node:_http_server).
 */
function onFinish(message: unknown): void {
  const { server, response, request, socket } = message as {
    server?: object;
    response?: ServerResponse;
    request?: unknown;
    socket?: { parser?: { incoming?: unknown } | null };
  };
  const decide = server === undefined ? undefined : decisions.get(server);
  if (decide === undefined || response === undefined) return;
  try {
    if (!decide(response)) return;
    // A request pipelined behind this one was read already (the parser's latest is not this
    // one): closed now, Node would destroy the connection before that request's answer, whose
    // handler ran (behind the balancer: a backend served it) and whose client was told
    // keep-alive. Its own answer is decided as it ends, and closes the connection then.
    const latest = socket?.parser?.incoming;
    if (latest !== undefined && latest !== null && latest !== request) return;
    (response as { _last?: boolean })._last = true;
  } catch {
    // A throwing `now` or `random`: the answer keeps its keep-alive; never a throw in Node's.
  }
}

/**
 * closeListener: `decide` is the decision for `server`'s answers from now on.
 * Returns how to end that once the server has closed. A second registration for
 * the same server keeps the first decision (returns a no-op).
 */
export function decideConnectionCloses(server: object, decide: CloseDecision): () => void {
  if (decisions.has(server)) return () => undefined;
  decisions.set(server, decide);
  if (registered++ === 0) subscribe(FINISH_CHANNEL, onFinish);
  let ended = false;
  return () => {
    if (ended) return;
    ended = true;
    decisions.delete(server);
    if (--registered === 0) unsubscribe(FINISH_CHANNEL, onFinish);
  };
}

/** True when the balancer's drain closes this server's connections itself (not closeListener). */
export function drainClosesConnections(server: object | undefined): boolean {
  return server === undefined || registered === 0 || !decisions.has(server);
}

/**
 * Whether the balancer's answer `res` on `server` closes its connection because a close
 * is under way: closeListener's decision on a server it closes (taken now for an answer
 * that was under way when it was called), else `draining`, the balancer's own drain.
 */
export function closesForDrain(
  server: object | undefined,
  res: ServerResponse,
  draining: boolean,
): boolean {
  if (registered === 0 || server === undefined) return draining;
  const decide = decisions.get(server);
  return decide === undefined ? draining : decide(res);
}
