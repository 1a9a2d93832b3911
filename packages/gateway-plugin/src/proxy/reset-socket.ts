import type { ServerResponse } from 'node:http';
import type { Socket } from 'node:net';

/**
 * Closes the client's socket with a TCP reset, so that a client reading a body framed by
 * the close sees it cut rather than complete: a TLS socket's own TCP socket is reset (its
 * destroy() alone sent a FIN, which Node's clients read as a clean end). A reset drops
 * what the kernel still held to send; with megabytes in flight a client may still see a
 * clean end now and then (loopback, about 1 run in 30 with 2 MB).
 */
export function resetSocket(socket: Socket): void {
  if (socket.destroyed) return;
  try {
    socket.resetAndDestroy();
  } catch {
    // ERR_INVALID_HANDLE_TYPE: not a TCP handle (a TLS socket). Its destroy() alone ends
    // the TCP connection with a FIN and no close_notify, which Node's clients read as a
    // clean end: the TCP socket under it is reset first.
    try {
      (socket as { _parent?: Socket })._parent?.resetAndDestroy();
    } catch {
      // Not a TCP socket under it either: the FIN is all there is.
    }
    socket.destroy();
  }
}

/**
 * Cuts an answer whose head may have gone out, as the client must see it: cut.
 * A chunked one lacks its last chunk and an answer with a Content-Length its
 * last bytes, whatever ends the connection; a body framed by the close (an
 * HTTP/1.0 client, no Content-Length) ended with a FIN reads as whole. So
 * anything but chunked is reset.
 */
export function cutAnswer(res: ServerResponse): void {
  const chunked = (res as { chunkedEncoding?: boolean }).chunkedEncoding === true;
  if (res.headersSent && !chunked && res.socket) resetSocket(res.socket);
  else res.destroy();
}
