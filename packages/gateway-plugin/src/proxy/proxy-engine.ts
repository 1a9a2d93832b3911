/**
 * The adapter over http-proxy-middleware 3. One HPM instance per backend
 * protocol (http/https), created with:
 * - `xfwd: false`: X-Forwarded-* are overwritten by forwarded.ts instead;
 * - `ejectPlugins: true` with our own listeners: HPM's default error plugin
 *   would answer 502/504 itself, but the balancer must first decide whether
 *   to retry on another backend, and answer with a coded error otherwise;
 * - per request, `selfHandleResponse: true`: the balancer writes the answer's
 *   head a tick after it arrives and pipes its body (request-flow.ts,
 *   relayHead), so an answer that fails in the read that brought it can
 *   still be retried.
 *
 * A request goes straight to the http-proxy server HPM made and configured
 * (handed to our plugin), with this attempt's target and its backend's
 * keep-alive pool as per-request options: HPM's own per-request layer is a
 * path filter, a router and a path rewrite, none of which the balancer uses,
 * run over three awaits and a copy of every option (docs/bench.md, "Where
 * the time goes"). A WebSocket upgrade still goes through HPM's handler,
 * with `router` returning the target the balancer picked and `agent` a
 * dispatcher handing it to its backend's pool, on a socket slot of its own
 * (upgradeLane).
 *
 * Nothing thrown while a request is prepared or sent may escape: a throw of
 * `http.request()` (an invalid header or path) is caught here; the body is
 * streamed by the flow's own pump instead of http-proxy's
 * `req.pipe(proxyReq)`, whose writes throw inside stream listeners; and every
 * listener below is guarded. All of them end in `onPrepareError`.
 */
import { Agent, type ClientRequest, type IncomingMessage, type ServerResponse } from 'node:http';
import type { Socket } from 'node:net';
import { parse as parseUrl, type UrlWithStringQuery } from 'node:url';
import { createProxyMiddleware, type RequestHandler } from 'http-proxy-middleware';
import type { Backend } from '../registry/backend';
import { createAgentDispatcher, urlHostKey, type AgentDispatcher } from './agent-dispatcher';
import { asError } from './upstream-errors';

export interface ProxyHooks {
  /** An attempt starts: `target` identifies it in later events (a fresh object per call, parsedTarget). */
  onStart(req: IncomingMessage, target: unknown): void;
  onProxyReq(proxyReq: ClientRequest, req: IncomingMessage, target: unknown): void;
  onProxyRes(proxyRes: IncomingMessage, req: IncomingMessage, res: ServerResponse): void;
  /** `res` is the client socket for a WebSocket upgrade; `target` is undefined then. */
  onError(err: Error, req: IncomingMessage, res: ServerResponse | Socket, target: unknown): void;
  /** Where to send this request: the current attempt's backend target (href). */
  targetOf(req: IncomingMessage): string | undefined;
  /**
   * Something threw while the request was prepared or sent (not a backend
   * failure): the request must still end in a coded response.
   */
  onPrepareError(err: Error, req: IncomingMessage, res: ServerResponse | Socket): void;
}

/**
 * What http-proxy streams the request body from: its `stream` pass calls
 * `(options.buffer || req).pipe(proxyReq)` synchronously inside `web()`,
 * right after `http.request()`. The flow's object takes that call and starts
 * its own pump (body-pump.ts), so `req` itself is never touched.
 */
export interface BodySource {
  pipe(proxyReq: ClientRequest): unknown;
}

/** The part of http-proxy's server the engine calls (HPM hands it to plugins). */
interface ProxyServer {
  web(req: IncomingMessage, res: ServerResponse, options: WebOptions): void;
}

/** Per-request options: http-proxy copies them over the server's (none: HPM makes it with `{}`). */
interface WebOptions {
  target: UrlWithStringQuery;
  agent: Agent;
  changeOrigin: boolean;
  xfwd: false;
  buffer: BodySource;
  /** The balancer writes the answer's head and pipes its body itself (request-flow.ts, onProxyRes). */
  selfHandleResponse: true;
}

interface Instance {
  handler: RequestHandler;
  server: ProxyServer;
  dispatcher: AgentDispatcher;
}

/** Parsed targets remembered at most (one per backend URL in practice). */
const MAX_PARSED_TARGETS = 4096;

export class ProxyEngine {
  private readonly instances = new Map<'http:' | 'https:', Instance>();
  /**
   * http-proxy parses a string target with url.parse on every request
   * (http-proxy/index.js); given an object it uses it as is. Each backend URL
   * is parsed once here and each request gets a shallow copy: a fresh object
   * per attempt still identifies that attempt in later events (onStart).
   */
  private readonly parsedTargets = new Map<string, UrlWithStringQuery>();
  /** Each registered backend's upgrade lane: its entry in the dispatcher, removed by identity. */
  private readonly lanes = new WeakMap<Backend, Agent>();

  constructor(
    private readonly hooks: ProxyHooks,
    private readonly changeOrigin: boolean,
  ) {}

  /** Makes a backend's pool reachable through the dispatcher of its protocol (upgrades). */
  register(backend: Backend): void {
    const lane = upgradeLane(backend.agent);
    this.lanes.set(backend, lane);
    this.instanceOf(backend).dispatcher.set(urlHostKey(backend.target), lane);
  }

  /**
   * A backend that left: its pool is no longer reachable through the dispatcher, and its
   * parsed URL is not kept (a discovered fleet's churn filled the cache with the URLs of
   * backends long gone, and every new one was parsed again on each request).
   */
  unregister(backend: Backend): void {
    this.parsedTargets.delete(backend.target.href);
    const lane = this.lanes.get(backend);
    if (lane === undefined) return;
    this.lanes.delete(backend);
    this.instanceOf(backend).dispatcher.delete(urlHostKey(backend.target), lane);
  }

  /**
   * Sends one attempt: synchronously, http-proxy emits 'start', makes the
   * backend request on `backend.agent` and calls `body.pipe(proxyReq)`.
   */
  web(backend: Backend, req: IncomingMessage, res: ServerResponse, body: BodySource): void {
    const { server } = this.instanceOf(backend);
    try {
      server.web(req, res, {
        target: this.parsed(backend.target.href),
        agent: backend.agent,
        changeOrigin: this.changeOrigin,
        xfwd: false,
        buffer: body,
        selfHandleResponse: true,
      });
    } catch (err) {
      // http.request() threw: an invalid header value or path
      // (ERR_INVALID_CHAR, ERR_UNESCAPED_CHARACTERS...).
      this.hooks.onPrepareError(asError(err), req, res);
    }
  }

  upgrade(backend: Backend, req: IncomingMessage, socket: Socket, head: Buffer): void {
    const { handler } = this.instanceOf(backend);
    handler.upgrade(req, socket, head);
  }

  /** The http-proxy instance of a backend's protocol. */
  private instanceOf(backend: Backend): Instance {
    return this.instance(backend.target.protocol === 'https:' ? 'https:' : 'http:');
  }

  private instance(protocol: 'http:' | 'https:'): Instance {
    let inst = this.instances.get(protocol);
    if (inst) return inst;
    const dispatcher = createAgentDispatcher(protocol);
    const hooks = this.hooks;
    let server: ProxyServer | undefined;
    const handler = createProxyMiddleware<IncomingMessage, ServerResponse>({
      // Upgrades only: web requests pass their target themselves (web()).
      router: (req) => this.parsedTarget(hooks.targetOf(req)),
      agent: dispatcher.agent,
      changeOrigin: this.changeOrigin,
      xfwd: false,
      ws: false,
      ejectPlugins: true,
      plugins: [
        (proxyServer) => {
          server = proxyServer as unknown as ProxyServer;
          // A throw in a listener would surface inside http-proxy's own
          // callbacks (socket, response events) and crash the process.
          const guard = (req: IncomingMessage, res: unknown, fn: () => void): void => {
            try {
              fn();
            } catch (err) {
              hooks.onPrepareError(asError(err), req, res as ServerResponse | Socket);
            }
          };
          proxyServer.on('start', (req, res, target) =>
            guard(req, res, () => hooks.onStart(req, target)),
          );
          proxyServer.on('proxyReq', (proxyReq, req, res, options) =>
            guard(req, res, () => hooks.onProxyReq(proxyReq, req, options.target)),
          );
          proxyServer.on('proxyReqWs', (proxyReq, req, socket, options) =>
            guard(req, socket, () => hooks.onProxyReq(proxyReq, req, options.target)),
          );
          proxyServer.on('proxyRes', (proxyRes, req, res) =>
            guard(req, res, () => hooks.onProxyRes(proxyRes, req, res)),
          );
          proxyServer.on('error', (err, req, res, target) =>
            guard(req, res, () => hooks.onError(err, req, res as ServerResponse | Socket, target)),
          );
          // http-proxy emits this instead of 'error' when the client went away
          // first; the balancer learns it from the response's 'close'.
          proxyServer.on('econnreset', () => {});
        },
      ],
    });
    // HPM registers its plugins while it is constructed.
    if (server === undefined) throw new Error('http-proxy-middleware did not hand over its server');
    inst = { handler, server, dispatcher };
    this.instances.set(protocol, inst);
    return inst;
  }

  private parsedTarget(href: string | undefined): UrlWithStringQuery | undefined {
    return href === undefined ? undefined : this.parsed(href);
  }

  private parsed(href: string): UrlWithStringQuery {
    let parsed = this.parsedTargets.get(href);
    if (parsed === undefined) {
      parsed = parseUrl(href);
      if (this.parsedTargets.size < MAX_PARSED_TARGETS) this.parsedTargets.set(href, parsed);
    }
    return { ...parsed };
  }

  close(): void {
    for (const inst of this.instances.values()) inst.dispatcher.destroy();
    this.instances.clear();
  }
}

type AddRequest = (req: ClientRequest, options: object) => void;

/**
 * What an upgrade is handed to: its backend's keep-alive pool, with a socket
 * slot of its own for as long as its request lasts. An upgrade holds its
 * connection until the backend answers (requestTimeoutMs at most), and the
 * pool's maxSockets is what saturation keeps requests within
 * (maxInFlightPerBackend): upgrades waiting for their 101 took those sockets,
 * unseen, and requests queued inside Node's agent, where the balancer can
 * neither see nor time them out (a GET waited 7.6 s behind 4 such upgrades
 * with maxSockets 4). Still the pool's connections, not an agent of their
 * own: the pool's TLS options verify them, and the loop guard finds an
 * upgrade that came back among them (balancer.ts ownConnection). Its request
 * closes once its socket has left the pool: after the 101 (Node takes an
 * upgraded socket out), or with the connection after any other answer or an
 * error (never pooled, upgrade-flow.ts onProxyReq).
 */
function upgradeLane(pool: Agent): Agent {
  // Owns no sockets, as the dispatcher (agent-dispatcher.ts): only its addRequest is called.
  const lane = new Agent();
  (lane as unknown as { addRequest: AddRequest }).addRequest = (req, options) => {
    pool.maxSockets += 1;
    req.once('close', () => (pool.maxSockets -= 1));
    (pool as unknown as { addRequest: AddRequest }).addRequest(req, options);
  };
  return lane;
}
