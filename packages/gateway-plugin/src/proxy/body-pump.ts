/**
 * Streams the client's request body into the backend request, in place of
 * the `req.pipe(proxyReq)` http-proxy does (web-incoming.js, `stream` pass).
 * Two things Readable.pipe cannot do:
 *
 * - Every write and the end are guarded. Node's ClientRequest validates and
 *   writes its head lazily, on the first write() or end() (`_implicitHeader`
 *   → `_storeHeader` in _http_outgoing.js), and throws there: with
 *   Readable.pipe that happens inside the request's 'data'/'end' listener,
 *   where nothing can catch it, so the process died (ERR_HTTP_TRAILER_INVALID
 *   from one `Trailer` header). A throw here becomes `threw(err)`.
 * - It says whom the upload is waiting for: the client (its next bytes, the
 *   body idle timeout and minimum rate) or the backend (backpressure: the
 *   socket is not taking more, or the pool has no socket yet; the backend's
 *   timeout), and how many bytes came. A trickling client must not make a
 *   healthy backend look like it timed out, nor a slow backend's
 *   backpressure make a fast client look like it trickles.
 */
import type { Readable, Writable } from 'node:stream';
import { asError } from './upstream-errors';

export interface PumpEvents {
  /**
   * The upload waits for the client's next bytes (at the start, after each chunk and after
   * a drain); `bytes`: the chunk's length, 0 at the start and after a drain.
   */
  waitingForClient(bytes: number): void;
  /** The backend request is not taking more (backpressure) after a chunk of `bytes`: the upload waits for it. */
  waitingForBackend(bytes: number): void;
  /** The whole body is handed to the backend request. */
  ended(): void;
  /** write() or end() threw; the pump has stopped. */
  threw(err: Error): void;
}

/**
 * Ends the backend request of a request with nothing left to read (a GET, say), after
 * `first`, the body's prefix read before dispatch, when there is one.
 */
function endWithoutBody(dest: Writable, ev: PumpEvents, first: Buffer | undefined): void {
  if (dest.destroyed) return;
  try {
    if (first === undefined) dest.end();
    else dest.end(first);
  } catch (err) {
    return ev.threw(asError(err));
  }
  ev.ended();
}

/**
 * `first`: the body's first bytes, read before dispatch (requestBuffering, request-body.ts
 * readBody), written before the rest; `src` was paused after them.
 */
export function pumpBody(src: Readable, dest: Writable, ev: PumpEvents, first?: Buffer): void {
  // Nothing to stream: the body was read by a middleware (ended), or the
  // parser has the whole message and nothing is buffered (a request without
  // a body, most of them). End the destination a tick later, as Readable.pipe
  // does on an ended stream, without the listeners and closures below: they
  // cost a few µs on every request (bench/results/profile.md). Node's server
  // dumps the unread end of the request when the response finishes.
  if (
    src.readableEnded ||
    ((src as { complete?: boolean }).complete === true && src.readableLength === 0)
  ) {
    process.nextTick(endWithoutBody, dest, ev, first);
    return;
  }
  let waitingForDrain = false;
  let stopped = false;
  const stop = (): void => {
    stopped = true;
    src.off('data', onData);
    src.off('end', onEnd);
    dest.off('drain', onDrain);
    dest.off('close', stop);
    // Paused here for a backend request now gone: no one else resumes it. A streamed body
    // is never sent again (request-flow.ts, retryable), so the rest is the lingering
    // close's to read and drop (linger.ts); left paused, the client's upload stalled with
    // the gateway's 502 unread in its kernel until the linger's idle timeout reset it
    // (over TLS, where the answer's end comes before the backend request's close).
    if (waitingForDrain) {
      waitingForDrain = false;
      src.resume();
    }
  };
  const guarded = (fn: () => void): boolean => {
    try {
      fn();
      return true;
    } catch (err) {
      stop();
      ev.threw(asError(err));
      return false;
    }
  };
  function onData(chunk: Buffer): void {
    let ok = true;
    if (!guarded(() => (ok = dest.write(chunk)))) return;
    if (ok) return ev.waitingForClient(chunk.length);
    waitingForDrain = true;
    src.pause();
    ev.waitingForBackend(chunk.length);
  }
  function onDrain(): void {
    if (!waitingForDrain || stopped) return;
    waitingForDrain = false;
    src.resume();
    ev.waitingForClient(0);
  }
  function onEnd(): void {
    if (stopped) return;
    stop();
    if (guarded(() => dest.end())) ev.ended();
  }
  dest.on('drain', onDrain);
  dest.once('close', stop);
  src.on('data', onData);
  src.once('end', onEnd);
  if (first !== undefined) {
    // Its bytes were counted while they were read: none come with this wait.
    let ok = true;
    if (!guarded(() => (ok = dest.write(first)))) return;
    if (!ok) {
      // `src` stays paused (readBody paused it: a 'data' listener does not resume it).
      waitingForDrain = true;
      src.pause();
      return ev.waitingForBackend(0);
    }
  }
  ev.waitingForClient(0);
  // 'data' listeners start the flow unless the stream was paused explicitly.
  src.resume();
}
