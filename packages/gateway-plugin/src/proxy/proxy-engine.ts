/**
 * The adapter over http-proxy-middleware 3. One HPM instance per backend
 * protocol (http/https: an agent serves one protocol), with:
 * - `router` returning the target the balancer picked for this attempt
 *   (stored on the request before HPM runs, so HPM stays stateless);
 * - `agent`: a dispatcher handing each request to its backend's keep-alive pool;
 * - `xfwd: false`: X-Forwarded-* are overwritten by forwarded.ts instead;
 * - `ejectPlugins: true` with our own listeners: HPM's default error plugin
 *   would answer 502/504 itself, but the balancer must first decide whether
 *   to retry on another backend, and answer with a coded error otherwise.
 *
 * Nothing thrown while a request is prepared or sent may escape: HPM turns a
 * throw of `http.request()` (an invalid header or path) into next(err); the
 * body is streamed by the flow's own pump instead of http-proxy's
 * `req.pipe(proxyReq)`, whose writes throw inside stream listeners; and every
 * listener below is guarded. All of them end in `onPrepareError`.
 */
import type { ClientRequest, IncomingMessage, ServerResponse } from 'node:http';
import type { Socket } from 'node:net';
import { Readable } from 'node:stream';
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

/** Streams the request body into the backend request; see body-pump.ts. */
export type BodyPump = (proxyReq: ClientRequest) => void;

interface Instance {
  handler: RequestHandler;
  dispatcher: AgentDispatcher;
}

/** Parsed targets remembered at most (one per backend URL in practice). */
const MAX_PARSED_TARGETS = 4096;

/** Each request's pump until http-proxy pipes the request into its backend request (takeOverPipe). */
const pumps = new WeakMap<IncomingMessage, BodyPump>();

/** `req.pipe` while an attempt is being sent: the first call goes to the attempt's pump. */
function takeOverPipe(this: IncomingMessage, dest: ClientRequest): ClientRequest {
  const pump = pumps.get(this);
  if (pump === undefined) return Readable.prototype.pipe.call(this, dest) as ClientRequest;
  pumps.delete(this);
  pump(dest);
  return dest;
}

/** The pump of a request that is over (ProxyEngine.release): what request-flow.ts's pump does then. */
function destroyRequest(dest: ClientRequest): void {
  dest.destroy();
}

export class ProxyEngine {
  private readonly instances = new Map<'http:' | 'https:', Instance>();
  /**
   * http-proxy parses a string target with url.parse on every request
   * (http-proxy/index.js); given an object it uses it as is. Each backend URL
   * is parsed once here and each request gets a shallow copy: a fresh object
   * per attempt still identifies that attempt in later events (onStart).
   */
  private readonly parsedTargets = new Map<string, UrlWithStringQuery>();

  constructor(
    private readonly hooks: ProxyHooks,
    private readonly changeOrigin: boolean,
  ) {}

  /** Makes a backend's pool reachable through the dispatcher of its protocol. */
  register(backend: Backend): void {
    this.instance(backend.target.protocol === 'https:' ? 'https:' : 'http:').dispatcher.set(
      urlHostKey(backend.target),
      backend.agent,
    );
  }

  web(backend: Backend, req: IncomingMessage, res: ServerResponse, pump: BodyPump): void {
    const { handler } = this.instance(backend.target.protocol === 'https:' ? 'https:' : 'http:');
    const fail = (err?: unknown): void => {
      // HPM calls next(err) when preparing the request failed: the router
      // returned nothing, or http.request() threw (an invalid header value
      // or path, ERR_INVALID_CHAR, ERR_UNESCAPED_CHARACTERS...).
      this.hooks.onPrepareError(
        err === undefined ? new Error('proxy preparation failed') : asError(err),
        req,
        res,
      );
    };
    // http-proxy streams the body with `(options.buffer || req).pipe(proxyReq)`
    // (web-incoming.js, `stream` pass), synchronously after http.request();
    // this attempt's pump takes that one call over, any later call gets the
    // prototype's pipe. An own property assigned per attempt, never deleted:
    // a delete would turn `req` into a slow dictionary-mode object in V8. Its
    // value is one shared function, the attempt's pump waits in `pumps`: a
    // closure stored on `req` outlived the request. Express gives `req` a
    // prototype of its own (Object.setPrototypeOf), after which V8 gives it a
    // map of its own too, and a function added to such an object stays
    // reachable from that map until a major GC: the pump closure, and the whole
    // flow behind it, survived every scavenge and was promoted (docs/bench.md,
    // "Where the time goes").
    pumps.set(req, pump);
    (req as { pipe: unknown }).pipe = takeOverPipe;
    // HPM catches its own errors into next(err); the catch is a second net so
    // a rejection can never go unhandled on the request path.
    handler(req, res, fail).catch(fail);
  }

  /**
   * The request is over: an attempt whose pipe http-proxy has not called yet
   * (the client left before the request was sent) lets go of its pump. The
   * pump would only have destroyed the backend request; so will the pipe.
   */
  release(req: IncomingMessage): void {
    if (pumps.has(req)) pumps.set(req, destroyRequest);
  }

  upgrade(backend: Backend, req: IncomingMessage, socket: Socket, head: Buffer): void {
    const { handler } = this.instance(backend.target.protocol === 'https:' ? 'https:' : 'http:');
    handler.upgrade(req, socket, head);
  }

  private instance(protocol: 'http:' | 'https:'): Instance {
    let inst = this.instances.get(protocol);
    if (inst) return inst;
    const dispatcher = createAgentDispatcher(protocol);
    const hooks = this.hooks;
    const handler = createProxyMiddleware<IncomingMessage, ServerResponse>({
      router: (req) => this.parsedTarget(hooks.targetOf(req)),
      agent: dispatcher.agent,
      changeOrigin: this.changeOrigin,
      xfwd: false,
      ws: false,
      ejectPlugins: true,
      plugins: [
        (proxyServer) => {
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
    inst = { handler, dispatcher };
    this.instances.set(protocol, inst);
    return inst;
  }

  private parsedTarget(href: string | undefined): UrlWithStringQuery | undefined {
    if (href === undefined) return undefined;
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
