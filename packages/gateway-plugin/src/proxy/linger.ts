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
 * until it closes its side or LINGER_MS pass, then the connection is
 * destroyed. Requests pipelined behind the body are not served (the caller
 * marks the connection closing).
 */
import type { IncomingMessage } from 'node:http';
import type { Socket } from 'node:net';

/** At most this long after the answer (nginx's lingering_timeout: 5 s). */
export const LINGER_MS = 5_000;

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
  if (this.writable) this.end();
  if (this.destroyed) return;
  const timer = setTimeout(() => this.destroy(), LINGER_MS);
  this.once('close', () => clearTimeout(timer));
}

/** `req`'s connection lingers when Node closes it after this answer (its body is unread). */
export function lingerOnClose(req: IncomingMessage): void {
  const socket = req.socket as LingeringSocket | null;
  if (!socket || socket.destroyed || req.complete) return;
  socket[LINGER_REQ] = req;
  (socket as { destroySoon: () => void }).destroySoon = lingeringClose;
}
