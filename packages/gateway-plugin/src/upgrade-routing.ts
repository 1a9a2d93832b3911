/**
 * WebSocket upgrades through the app: `server.on('upgrade', routeUpgrades(app))`.
 *
 * Node hands an upgrade request to the server's 'upgrade' listeners, never to
 * the 'request' handler, so an Express app's middleware (authentication, rate
 * limits, request ids) and its mount paths do not see it. A balancer's own
 * upgrade handler attached there directly would proxy every upgrade, whatever
 * its path and whoever sent it.
 *
 * routeUpgrades runs the upgrade request through the app like any request,
 * with a response bound to the upgrade's socket:
 * - a middleware that answers (401, 429, ...) writes a plain HTTP response on
 *   the socket, which is then closed;
 * - a path no route or balancer serves gets the app's 404;
 * - a `loadBalance` middleware that the request reaches (through its mount
 *   path, after every middleware before it) takes the socket over and proxies
 *   the upgrade to one of its backends.
 * The same approach as express-ws (an http.ServerResponse on the upgrade
 * socket, passed through the app).
 */
import { ServerResponse, type IncomingMessage } from 'node:http';
import type { Socket } from 'node:net';
import { sendError } from './error-response';

export type UpgradeListener = (req: IncomingMessage, socket: Socket, head: Buffer) => void;

/** What a balancer reached by an upgrade request needs to take its socket over. */
interface PendingUpgrade {
  socket: Socket;
  head: Buffer;
  res: ServerResponse;
  /** Stops reading the socket (watchWhileRouted); with `keep`, puts what it read back. */
  stopWatching: (keep: boolean) => void;
}

/**
 * Bytes a client may send before its upgrade is answered and still have them passed on,
 * while the app's middleware runs and while the backend has not answered (upgrade-flow):
 * past them, the client is let go here and refused there.
 */
export const MAX_EARLY_BYTES = 64 * 1024;

/**
 * Reads an upgrade's socket while the app's middleware runs, so that a client that
 * leaves is seen at once: Node's parser has let go of the socket at the upgrade, and the
 * server's sockets allow half-open connections, so unread it said nothing. Behind a
 * middleware that never answered (a session lookup without a timeout), each client that
 * left with a FIN kept its socket in CLOSE_WAIT for good and `server.close()` never
 * completed; behind a slow one (an async auth step), its upgrade was proxied after all,
 * a 101 written to nobody and a backend WebSocket opened for it. `onLeft` runs on the
 * client's FIN or close, `onTooMuch` past MAX_EARLY_BYTES (a WebSocket client sends
 * nothing before the answer, RFC 6455 §4.1). The returned stop() ends the reading; with
 * `keep` it puts the bytes read back in front of whatever comes next.
 */
function watchWhileRouted(
  socket: Socket,
  head: Buffer,
  onLeft: () => void,
  onTooMuch: () => void,
): (keep: boolean) => void {
  const early: Buffer[] = [];
  // What Node read past the request's head counts too (the balancer passes it on first).
  let bytes = head.length;
  let stopped = false;
  const stop = (keep: boolean): void => {
    if (stopped) return;
    stopped = true;
    socket.off('data', onData);
    socket.off('end', left);
    socket.off('close', left);
    socket.off('newListener', otherReader);
    socket.pause();
    if (keep && early.length > 0 && !socket.readableEnded) socket.unshift(Buffer.concat(early));
    // As Node leaves an upgrade's socket: the next reader's on('data') starts the flow.
    (socket as { readableFlowing: boolean | null }).readableFlowing = null;
  };
  // The app reads the socket itself (a WebSocket server of its own on a route,
  // `wss.handleUpgrade(req, req.socket, ...)`): its bytes are the app's. Watched on, that
  // connection was cut after 64 KiB.
  const otherReader = (event: string | symbol): void => {
    if (event !== 'data' && event !== 'readable') return;
    stop(true);
    // Nor is it cut with the balancer's leftovers at shutdown (cutRoutedUpgrades).
    unrouted(socket);
  };
  const left = (): void => {
    stop(false);
    onLeft();
  };
  const onData = (chunk: Buffer): void => {
    bytes += chunk.length;
    if (bytes <= MAX_EARLY_BYTES) return void early.push(chunk);
    stop(false);
    onTooMuch();
  };
  socket.on('data', onData);
  socket.once('end', left);
  socket.once('close', left);
  socket.on('newListener', otherReader);
  socket.resume();
  return stop;
}

const pending = new WeakMap<IncomingMessage, PendingUpgrade>();

/**
 * The sockets of upgrades in the app's middleware, per server they came
 * through: Node stops tracking a socket as its connection once it is handed
 * over as an upgrade, so server.closeAllConnections() at shutdown never cut
 * one whose middleware hung (a session lookup that never answers), and the
 * stopped process lived until the client left (cutRoutedUpgrades). A
 * WeakMap: a server dropped with a socket that never closed (a Duplex handed
 * in with emit('connection')) is not held. Only a server a balancer has
 * noted is cut (a request or an upgrade reached it there): a closing
 * balancer cannot tell another app's server, or one fed connections without
 * listening, from one that has stopped.
 */
const routing = new WeakMap<object, Set<Socket>>();

function serverOf(socket: Socket): object | undefined {
  return (socket as { server?: object }).server ?? undefined;
}

function unrouted(socket: Socket): void {
  const server = serverOf(socket);
  const sockets = server && routing.get(server);
  if (!sockets) return;
  sockets.delete(socket);
  if (sockets.size === 0) routing.delete(server);
}

/**
 * Destroys the sockets of upgrades still in the app's middleware on `server`
 * (no balancer took them): with its other leftover connections once the
 * shutdown's grace is over (request-flow.ts, forgetServers).
 */
export function cutRoutedUpgrades(server: object): void {
  const sockets = routing.get(server);
  if (!sockets) return;
  routing.delete(server);
  for (const socket of sockets) socket.destroy();
}

/** An Express app, a connect app, or any `(req, res, next)` handler. */
export type AppHandler = (
  req: IncomingMessage,
  res: ServerResponse,
  next?: (err?: unknown) => void,
) => unknown;

/**
 * Runs `run` once no answer of an earlier request is still being written on
 * `socket`, at once when none is. Node hands an upgrade request over as soon
 * as it is parsed, also when it was pipelined behind a request whose answer
 * is not out yet: binding a response to that socket then threw
 * ERR_HTTP_SOCKET_ASSIGNED inside Node's parser callback, and one write from
 * any client (`GET /` and an upgrade) ended the gateway process; a 101
 * written at once would have gone out before that answer. So the upgrade
 * waits for the answers ahead of it, in order, as the client expects. If the
 * connection closes first, nothing runs.
 */
export function afterPendingAnswers(socket: Socket, run: () => void): void {
  // Node's own field: the response bound to the socket (the next queued one is bound
  // when it finishes); the public API has no other way to see it.
  const ahead = (): ServerResponse | null | undefined =>
    (socket as { _httpMessage?: ServerResponse | null })._httpMessage;
  if (!ahead()) return run();
  // Node took its own 'error' listener off the socket at the upgrade: a client that resets
  // while the upgrade waits must not be an unhandled 'error' event.
  socket.on('error', () => socket.destroy());
  const wait = (answer: ServerResponse): void =>
    void answer.once('close', () => {
      // Closed after that answer (`Connection: close`): no upgrade on it.
      if (socket.destroyed || !socket.writable) return void socket.destroy();
      const next = ahead();
      if (next) wait(next);
      else run();
    });
  wait(ahead()!);
}

/**
 * A response bound to an upgrade's socket, for an answer over HTTP (the app's,
 * or an upgrade served as a plain request): the connection ends with it, as
 * the client asked to switch protocols and what follows on the socket is not
 * HTTP. Undefined, and the socket destroyed, if another response holds the
 * socket after all: never a throw out of Node's parser callback.
 */
export function responseOnSocket(req: IncomingMessage, socket: Socket): ServerResponse | undefined {
  socket.on('error', () => socket.destroy());
  const res = new ServerResponse(req);
  res.shouldKeepAlive = false;
  try {
    res.assignSocket(socket);
  } catch {
    socket.destroy();
    return undefined;
  }
  res.once('finish', () => socket.destroySoon());
  // Node's server passes a socket's 'drain' on to the response it serves, and took that
  // listener off at the upgrade: an answer past the socket's buffer (an upgrade served as
  // a plain request, `Upgrade: h2c` from curl --http2 or Java's HttpClient) stopped at
  // 64 KiB and the client waited for good.
  const drain = (): void => {
    if ((socket as { _httpMessage?: unknown })._httpMessage === res && !res.writableFinished)
      res.emit('drain');
  };
  socket.on('drain', drain);
  res.once('close', () => socket.off('drain', drain));
  return res;
}

/** The 'upgrade' listener that routes upgrade requests through `app`. */
export function routeUpgrades(app: AppHandler): UpgradeListener {
  if (typeof app !== 'function') throw new TypeError('routeUpgrades(app): app must be a function');
  return (req, socket, head) => {
    socket.on('error', () => socket.destroy());
    afterPendingAnswers(socket, () => route(app, req, socket, head));
  };
}

function route(app: AppHandler, req: IncomingMessage, socket: Socket, head: Buffer): void {
  // The client's FIN was read already (while the upgrade waited for answers ahead of it).
  if (socket.readableEnded) return void socket.destroy();
  const res = responseOnSocket(req, socket);
  if (res === undefined) return;
  const stopWatching = watchWhileRouted(
    socket,
    head,
    () => {
      // Gone before any balancer took it: nobody to answer. The app's middleware, still
      // running, sees its request close, as it would a plain request's.
      if (!pending.has(req)) return;
      pending.delete(req);
      socket.destroy();
      req.destroy();
    },
    () => {
      // Refused as the balancer refuses it while the backend has not answered, with the
      // 400 the app's middleware has not given yet: it was a close with no answer, while
      // an async auth step ran. Not counted: no balancer has seen the request.
      if (!pending.has(req)) return void socket.destroy();
      pending.delete(req);
      sendError(
        res,
        'LW_GW_BAD_REQUEST',
        undefined,
        `more than ${MAX_EARLY_BYTES} bytes sent before the answer to the upgrade`,
      );
      // The app's middleware sees its request close once the answer is out (the request's
      // destroy() would take the socket, and the answer, with it).
      socket.once('close', () => req.destroy());
    },
  );
  pending.set(req, { socket, head, res, stopWatching });
  const server = serverOf(socket);
  if (server) {
    let sockets = routing.get(server);
    if (!sockets) routing.set(server, (sockets = new Set()));
    sockets.add(socket);
    socket.once('close', () => unrouted(socket));
  }
  // An answer of the app's own goes out whole: reading on would only see the client leave.
  res.once('finish', () => stopWatching(false));
  const final = (err?: unknown): void => {
    // A balancer has the socket: an error passed on after that (connect-timeout's 503 for
    // a WebSocket open longer than its timeout) is no longer the app's to answer. Closing
    // here cut every WebSocket when the app's timeout ran out.
    if (taken.has(req)) return;
    if (res.headersSent || !pending.has(req)) return void socket.destroy();
    // As Express's final handler: `status` or `statusCode` (an error of the 4xx-5xx
    // range), and the error's own headers (an auth error's WWW-Authenticate). Read only
    // `status`, an auth error with `statusCode: 403` went out as a 500.
    const e = err as { status?: unknown; statusCode?: unknown; headers?: unknown } | undefined;
    const valid = (v: unknown): v is number => typeof v === 'number' && v >= 400 && v < 600;
    const status = valid(e?.status) ? e.status : valid(e?.statusCode) ? e.statusCode : undefined;
    const own = status !== undefined;
    res.statusCode = err === undefined ? 404 : (status ?? 500);
    if (own && isHeaderBag(e?.headers)) {
      for (const [name, value] of Object.entries(e.headers)) {
        try {
          res.setHeader(name, value as string | string[]);
        } catch {
          // An invalid header name or value: left out, as finalhandler would throw on it.
        }
      }
    }
    res.setHeader('content-length', '0');
    res.end();
  };
  try {
    void app(req, res, final);
  } catch (err) {
    final(err);
  }
}

/**
 * Called by a balancer the request reached: returns the socket and head and
 * detaches the response from the socket (the proxy writes the 101 itself),
 * or undefined for an ordinary request.
 */
export function takeUpgrade(req: IncomingMessage): { socket: Socket; head: Buffer } | undefined {
  const p = pending.get(req);
  if (p === undefined) return undefined;
  pending.delete(req);
  taken.add(req);
  unrouted(p.socket);
  p.stopWatching(true);
  p.res.detachSocket(p.socket);
  // The app's response is done with: its head hooks run (on-headers, which connect-timeout
  // clears its timer on), with the status the proxy's answer will have, and nothing is
  // written (it has no socket). connect-timeout's timer ran on, and its 503 closed the
  // WebSocket.
  try {
    p.res.writeHead(101);
  } catch {
    // A middleware's head hook threw: the proxy's answer does not depend on it.
  }
  return { socket: p.socket, head: p.head };
}

/** Upgrade requests a balancer took over (takeUpgrade). */
const taken = new WeakSet<IncomingMessage>();

/** An error's `headers`: a plain object of header values (finalhandler's `err.headers`). */
function isHeaderBag(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

/** Whether `req` is an upgrade routeUpgrades is passing through the app. */
export function isRoutedUpgrade(req: IncomingMessage): boolean {
  return pending.has(req);
}

/**
 * Called by a balancer that serves the upgrade request as an ordinary one
 * (it is not a WebSocket's): the response stays bound to the socket, with
 * what the app's middleware set on it, and the socket closes after it.
 */
export function releaseUpgrade(req: IncomingMessage): void {
  const p = pending.get(req);
  if (p === undefined) return;
  pending.delete(req);
  unrouted(p.socket);
  // Served as a request: its bytes (none, a request with no body) are its own to read.
  p.stopWatching(true);
}
