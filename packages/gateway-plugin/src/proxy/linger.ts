/**
 * Lingering close (RFC 9112 §9.6; nginx's `lingering_close`): a connection
 * the gateway closes while the client is still sending its request body (an
 * answer before the whole upload: a backend's 401 or 413, a 502 after the
 * backend reset mid-upload, a refusal) keeps reading, and dropping, what the
 * client sends for a while after its answer, instead of closing at once.
 *
 * Closed at once, with the body still arriving, the kernel answers the next
 * segment with a reset, and a reset makes the client's kernel drop what it
 * had received and not yet handed to the client: the answer. Measured, a
 * 32 MiB PUT answered 401 at once got the 401 in 6 of 10 runs through the
 * gateway (EPIPE in the rest), 10 of 10 directly from the same Node backend;
 * a backend reset mid-upload gave EPIPE in 4 of 10 where the client should
 * read 502. Clients that send their whole body before reading (Python's
 * requests, many SDKs) are the ones that lose the answer.
 *
 * The answer goes out, then a FIN; what the client sends is read and dropped
 * until it closes its side, sends nothing for LINGER_IDLE_MS, or LINGER_MAX_MS
 * pass (nginx's lingering_timeout and lingering_time), then the connection is
 * destroyed. A request the parser finds behind the body is dropped unserved,
 * an upgrade too: its client never gets an answer, and a POST run with its
 * answer lost is one the client sends again.
 */
import type { IncomingMessage } from 'node:http';
import type { Socket } from 'node:net';

/** Without a byte from the client this long, the connection goes (nginx's lingering_timeout). */
export const LINGER_IDLE_MS = 5_000;
/** And this long after the answer at most, however it sends (nginx's lingering_time). */
export const LINGER_MAX_MS = 30_000;

const LINGER_REQ = Symbol('loadwise.lingerRequest');
type LingeringSocket = Socket & { [LINGER_REQ]?: IncomingMessage };

/**
 * Node's http server ends a `Connection: close` answer's connection with
 * `socket.destroySoon()`: this one takes its place on that socket.
 */
function lingeringClose(this: LingeringSocket): void {
  const req = this[LINGER_REQ];
  this[LINGER_REQ] = undefined;
  // Read on, and drop: the body's bytes go through the parser to the request, no one's now.
  if (req !== undefined) {
    req.unpipe();
    req.resume();
  }
  // What the parser finds after the body is no request of anyone's.
  const parser = (this as { parser?: { onIncoming?: unknown } | null }).parser;
  if (parser) parser.onIncoming = dropIncoming;
  if (this.writable) this.end();
  if (this.destroyed) return;
  // Idle: the socket's own timer, which every read the parser makes starts again.
  this.setTimeout(LINGER_IDLE_MS, destroySocket);
  // In all: LINGER_MAX_MS, and no longer once its server has stopped listening (a
  // graceful shutdown waits for every connection, and a client trickling its body held
  // server.close() for the whole linger).
  const until = performance.now() + LINGER_MAX_MS;
  const server = (this as { server?: { listening?: boolean } | null }).server;
  const check = setInterval(() => {
    if (server?.listening === false || performance.now() >= until) this.destroy();
  }, LINGER_CHECK_MS);
  this.once('close', () => clearInterval(check));
}

/** How often a lingering connection looks at its time and its server. */
const LINGER_CHECK_MS = 250;

function destroySocket(this: Socket): void {
  this.destroy();
}

/**
 * The parser's onIncoming on a lingering connection (Node's server calls it with each
 * request head it parses): the request is not handed to the server, its body is read
 * and dropped, and an upgrade is not one (Node emits 'upgrade' for a head that says so,
 * whatever this returns). 0: the parser reads the body as a body.
 */
function dropIncoming(incoming: IncomingMessage & { upgrade: boolean }): number {
  incoming.upgrade = false;
  incoming.resume();
  return 0;
}

/** `req`'s connection lingers when Node closes it after this answer (its body is unread). */
export function lingerOnClose(req: IncomingMessage): void {
  const socket = req.socket as LingeringSocket | null;
  if (!socket || socket.destroyed || req.complete) return;
  socket[LINGER_REQ] = req;
  (socket as { destroySoon: () => void }).destroySoon = lingeringClose;
}
