/**
 * The gateway's own warm-up, before `lb.ready()` resolves (docs/gateway.md,
 * "Warm-up"). A cold process answers its first requests slowly: its request
 * path runs uncompiled code and every backend pool starts empty, so the first
 * burst opens a backend connection per request (docs/bench.md, "Cold start").
 *
 * 1. The request path: `requests` synthetic requests go through a shadow
 *    Balancer, built from the same options and classes (admission, choose()
 *    and the strategy, proxy/request-flow.ts, http-proxy-middleware, the agent
 *    dispatcher, Node's HTTP client and server) whose only backend is a
 *    loopback sink in this process (127.0.0.1, port 0, 200 at once), in
 *    front of it an Express app when Express is there (expressFront), and
 *    every other request on a new connection (the accept path). The
 *    shadow has its own metrics registry, events and a silent logger, no
 *    broker, health checks or hooks: nothing of it reaches a backend, the
 *    metrics, the snapshot or the events. V8 compiles and optimises per
 *    function, not per object, so the real balancer's first requests run
 *    the code the shadow's made hot. Both servers close afterwards.
 * 2. The pools: `connectionsPerBackend` concurrent GETs of `healthCheck.path`
 *    through each backend's own pool, whose sockets stay in it (Envoy's
 *    cluster `preconnect_policy` does the same without a request; Node's
 *    http.Agent pools only a socket that carried a keep-alive request, and
 *    has no supported way to add one). Without an active health check there
 *    is no path known to be cheap, so no preconnect. Backends added later
 *    (discovery) get theirs when they are added.
 *
 * Requests that arrive meanwhile are served by the real balancer as usual.
 * On a slow host the synthetic requests stop at REQUEST_BUDGET_MS, as far as
 * they got (logged with the rest), and the pools are warmed after them.
 * Nothing here throws or rejects: a warm-up that fails or takes longer than
 * MAX_WARM_UP_MS stops, logs one line, and `ready()` goes on.
 */
import http, {
  type ClientRequest,
  type IncomingMessage,
  type RequestListener,
  type Server,
  type ServerResponse,
} from 'node:http';
import https from 'node:https';
import type { AddressInfo } from 'node:net';
import { Registry as MetricsRegistry } from 'prom-client';
import { Balancer } from './balancer';
import { gatewayServerOptions } from './proxy/server-classes';
import { checkHeaders, healthCheckUrl } from './health/active-checker';
import { writeLog } from './observability/event-log';
import type { ResolvedOptions, WarmUpOptions } from './options';
import type { Backend } from './registry/backend';

/** Synthetic requests in flight at once (keep-alive connections to the shadow). */
const CONCURRENCY = 16;
/** The warm-up stops after this, whatever is left; ready() does not wait longer. */
export const MAX_WARM_UP_MS = 5_000;
/**
 * The request path's share of that budget: on a slow host the synthetic
 * requests end here, done as far as they got, and the pools still get their
 * preconnects within the rest.
 */
export const REQUEST_BUDGET_MS = 4_000;
const SILENT = { info: () => {}, warn: () => {}, error: () => {} };
/**
 * Backends preconnected at once. All at once, 1,000 backends opened 4,000 sockets in one
 * turn and stalled the event loop 369 ms (3,000: 12,000 sockets, 0.9-1.9 s), long enough
 * for the overload monitor to shed the first requests after ready() (1,668 got 503s).
 */
export const PRECONNECT_CONCURRENCY = 32;
/**
 * Sockets preconnected in all, over the balancer's life (discovered backends too): each is
 * a file descriptor held for good, and 12,000 of them took every descriptor a 1,024 limit
 * allows, so the health checks failed with EMFILE and marked healthy backends down. Past
 * 256 backends each gets fewer than `connectionsPerBackend` (at least one while the
 * budget lasts); slow start covers the rest.
 */
export const MAX_PRECONNECT_SOCKETS = 1_024;
const BODY = Buffer.from('{"warmUp":true}');

/** The shadow's options: the user's, with one loopback backend and nothing that reaches out. */
function shadowOptions(o: ResolvedOptions, sinkUrl: string): ResolvedOptions {
  return {
    ...o,
    backends: [{ id: 'warm-up', url: sinkUrl, weight: 1 }],
    broker: undefined,
    discovery: undefined,
    healthCheck: undefined,
    overload: undefined,
    acceptQueue: undefined,
    warmUp: undefined,
    // User hooks may count, authenticate or log: synthetic requests are not theirs.
    on: {},
    metricsRegistry: new MetricsRegistry(),
    statusPath: undefined,
    metricsPath: undefined,
    dashboard: undefined,
    logger: SILENT,
    // A seeded random source stays the real balancer's alone.
    random: Math.random,
  };
}

/**
 * The shadow's front as an Express app, when the process has Express (an
 * optional peer dependency; a gateway built on it has): the first real
 * requests then also find Express's router and request/response code
 * compiled, which the user's app runs before this middleware. Undefined
 * without Express: the plain handler is the front.
 */
function expressFront(
  handle: (req: IncomingMessage, res: ServerResponse) => void,
): RequestListener | undefined {
  let express:
    (() => { use(path: string, fn: typeof handle): void; disable(s: string): void }) | undefined;
  try {
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    express = require('express') as typeof express;
  } catch {
    return undefined;
  }
  if (typeof express !== 'function') return undefined;
  const app = express();
  app.disable('x-powered-by');
  app.use('/warm-up', handle);
  return app as unknown as RequestListener;
}

export class WarmUp {
  /** Resolves when the warm-up is over (done, failed, timed out or closed); never rejects. */
  readonly done: Promise<void>;
  private finish!: () => void;
  /** The warm-up phase is over: nothing of it is left but preconnects of added backends. */
  private over = false;
  private closed = false;
  private readonly servers = new Set<Server>();
  private readonly inFlight = new Set<ClientRequest>();
  private shadow: Balancer | undefined;
  private readonly clients: http.Agent[] = [];
  private readonly timer: NodeJS.Timeout;
  private sent = 0;
  /** The request budget ended before `requests` were sent (REQUEST_BUDGET_MS). */
  private cutShort = false;
  private connections = 0;
  private readonly startedAt = performance.now();
  /** Sockets the preconnects may still open (MAX_PRECONNECT_SOCKETS in all). */
  private socketBudget = MAX_PRECONNECT_SOCKETS;
  /** Backends waiting for a preconnect slot, and the preconnects running. */
  private readonly preconnectQueue: Backend[] = [];
  private preconnecting = 0;
  private preconnectsDone: (() => void) | undefined;

  constructor(
    private readonly balancer: Balancer,
    private readonly plan: Required<WarmUpOptions>,
  ) {
    this.done = new Promise<void>((resolve) => (this.finish = resolve));
    this.timer = setTimeout(() => this.stop(`stopped after ${MAX_WARM_UP_MS} ms`), MAX_WARM_UP_MS);
    this.timer.unref();
    if (plan.connectionsPerBackend > 0 && balancer.options.healthCheck) {
      balancer.on('backend-added', ({ id }) => {
        const backend = balancer.registry.get(id);
        if (backend) this.queuePreconnect(backend);
      });
    }
    this.run().then(
      () => this.stop(),
      (err: unknown) => this.stop(`failed: ${String(err)}`),
    );
  }

  private async run(): Promise<void> {
    if (this.plan.requests > 0) await this.compile();
    if (this.over) return;
    this.releaseShadow();
    const all = new Promise<void>((resolve) => (this.preconnectsDone = resolve));
    for (const b of this.balancer.registry.backends.values()) this.preconnectQueue.push(b);
    this.pumpPreconnects();
    await all;
  }

  /** Preconnects `backend` when a slot is free (PRECONNECT_CONCURRENCY at once). */
  private queuePreconnect(backend: Backend): void {
    this.preconnectQueue.push(backend);
    this.pumpPreconnects();
  }

  private pumpPreconnects(): void {
    while (this.preconnecting < PRECONNECT_CONCURRENCY && this.preconnectQueue.length > 0) {
      const backend = this.preconnectQueue.shift()!;
      if (this.closed || this.socketBudget <= 0) continue; // dropped: nothing to open
      this.preconnecting++;
      void this.preconnect(backend).then(() => {
        this.preconnecting--;
        this.pumpPreconnects();
      });
    }
    if (this.preconnecting === 0) this.preconnectsDone?.();
  }

  /** The request path, through the shadow balancer and back. */
  private async compile(): Promise<void> {
    const sink = await this.listen(
      http.createServer((req, res) => {
        req.resume();
        req.on('end', () => {
          res.writeHead(200, { 'content-type': 'text/plain', 'content-length': '2' });
          res.end('ok');
        });
      }),
    );
    if (this.over) return;
    const shadow = new Balancer(shadowOptions(this.balancer.options, `http://127.0.0.1:${sink}`));
    this.shadow = shadow;
    const handle = (req: IncomingMessage, res: ServerResponse): void =>
      shadow.flow.handle(req, res);
    // The server classes docs/gateway.md deploys ("The gateway's server"): their
    // constructors run on every real request of such a gateway, so they are compiled too.
    const front = await this.listen(
      http.createServer(gatewayServerOptions(), expressFront(handle) ?? handle),
    );
    if (this.over) return;
    const agent = new http.Agent({ keepAlive: true, maxSockets: CONCURRENCY });
    const fresh = new http.Agent({ keepAlive: false, maxSockets: CONCURRENCY });
    this.clients.push(agent, fresh);
    let next = 0;
    const deadline = this.startedAt + REQUEST_BUDGET_MS;
    const worker = async (): Promise<void> => {
      while (!this.over && next < this.plan.requests) {
        if (performance.now() >= deadline) {
          this.cutShort = true;
          return;
        }
        const i = next++;
        // Every other request on a new connection: a cold gateway's first second is mostly new
        // client connections (a client's pool grows with the latency), and accepting one runs
        // its own code (the listen socket, a socket and parser per connection, the teardown).
        await this.send(front, i % 2 === 1 ? fresh : agent, i);
      }
    };
    await Promise.all(Array.from({ length: CONCURRENCY }, worker));
  }

  /** One synthetic request; every fourth a POST with a body (the body pump's path). */
  private send(port: number, agent: http.Agent, i: number): Promise<void> {
    return new Promise((resolve) => {
      const post = i % 4 === 3;
      const req = http.request({
        host: '127.0.0.1',
        port,
        agent,
        method: post ? 'POST' : 'GET',
        path: `/warm-up/${i % 64}?i=${i}`,
        headers: post ? { 'content-type': 'application/json', 'content-length': BODY.length } : {},
      });
      this.track(req, () => {
        this.sent++;
        resolve();
      });
      req.end(post ? BODY : undefined);
    });
  }

  /**
   * `connectionsPerBackend` concurrent GETs of the health check's path through
   * the backend's pool: each opens a socket, and each socket goes back to the
   * pool's free list when its answer has been read.
   */
  private async preconnect(backend: Backend): Promise<void> {
    const hc = this.balancer.options.healthCheck;
    const pool = this.balancer.options.agent;
    // A share of the budget each, so a large fleet gets one connection per backend rather
    // than four for the first 256 and none for the rest.
    const share = Math.max(
      1,
      Math.floor(MAX_PRECONNECT_SOCKETS / Math.max(1, this.balancer.registry.backends.size)),
    );
    const n = Math.min(
      this.plan.connectionsPerBackend,
      pool.maxSockets,
      pool.maxFreeSockets,
      share,
      this.socketBudget,
    );
    if (!hc || n <= 0 || this.closed || this.balancer.registry.get(backend.id) !== backend) return;
    this.socketBudget -= n;
    const url = healthCheckUrl(hc.path, backend.target);
    const send = url.protocol === 'https:' ? https.request : http.request;
    const one = (): Promise<void> =>
      new Promise((resolve) => {
        const req = send(url, {
          method: 'GET',
          agent: backend.agent,
          timeout: hc.timeoutMs,
          headers: checkHeaders(hc, 'loadwise-gateway-preconnect'),
        });
        req.on('timeout', () => req.destroy());
        this.track(req, (ok) => {
          if (ok) this.connections++;
          resolve();
        });
        req.end();
      });
    await Promise.all(Array.from({ length: n }, one));
  }

  /** `done(ok)` once: the answer was read to its end (ok), or the request failed. */
  private track(req: ClientRequest, done: (ok: boolean) => void): void {
    this.inFlight.add(req);
    let settled = false;
    const end = (ok: boolean): void => {
      if (settled) return;
      settled = true;
      this.inFlight.delete(req);
      done(ok);
    };
    req.on('error', () => end(false));
    req.on('close', () => end(false));
    req.on('response', (res) => {
      res.on('end', () => end(true));
      res.on('error', () => end(false));
      res.resume();
    });
  }

  /** A loopback server on port 0 that keeps neither the process nor its clients alive. */
  private listen(server: Server): Promise<number> {
    this.servers.add(server);
    server.on('connection', (socket) => socket.unref());
    return new Promise((resolve, reject) => {
      server.once('error', reject);
      // `exclusive`: in a runWorkers (node:cluster) worker the server binds in
      // this process instead of through the primary, so the primary never sees
      // it as the worker's listening port, and no port-0 handle is shared with
      // the gateway's own server (closing it would close theirs).
      server.listen({ port: 0, host: '127.0.0.1', exclusive: true }, () => {
        server.unref();
        // Closed while it was binding: close() did not reach a server that was not listening yet.
        if (this.over) server.close();
        resolve((server.address() as AddressInfo).port);
      });
    });
  }

  /** The shadow, its servers and its client go; the backends' pools stay. */
  private releaseShadow(): void {
    for (const client of this.clients) client.destroy();
    this.clients.length = 0;
    for (const server of this.servers) {
      server.closeAllConnections();
      server.close();
    }
    this.servers.clear();
    const shadow = this.shadow;
    this.shadow = undefined;
    // Not awaited: its connections are cut above, and the wait for its flows to see
    // that is a timer (flow.idle), which a test's fake clock would never fire.
    void shadow?.close({ graceMs: 0 });
  }

  private stop(why?: string): void {
    if (this.over) return;
    this.over = true;
    clearTimeout(this.timer);
    this.releaseShadow();
    // What the overload monitor measured so far was this warm-up's own work (compiling,
    // connecting), not load: a stall it caused shed the first requests after ready().
    if (!this.closed) this.balancer.overload?.forget();
    const ms = Math.round(performance.now() - this.startedAt);
    const logger = this.balancer.options.logger;
    const budget = this.cutShort
      ? ` (of ${this.plan.requests}: the ${REQUEST_BUDGET_MS} ms budget ended)`
      : '';
    const summary = `${this.sent} requests through the request path${budget}, ${this.connections} connections to backends, ${ms} ms`;
    if (why === undefined)
      writeLog(
        logger,
        'info',
        { event: 'warm-up', requests: this.sent, connections: this.connections, ms },
        `warm-up done: ${summary}`,
      );
    else if (!this.closed)
      writeLog(
        logger,
        'warn',
        { event: 'warm-up', requests: this.sent, connections: this.connections, ms, error: why },
        `warm-up ${why}: ${summary}`,
      );
    this.finish();
  }

  /** lb.close(): stops the warm-up and any preconnect, and closes its servers and client. */
  close(): Promise<void> {
    this.closed = true;
    this.preconnectQueue.length = 0;
    for (const req of this.inFlight) req.destroy();
    this.inFlight.clear();
    this.stop('closed');
    return this.done;
  }
}
