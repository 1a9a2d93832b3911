/**
 * Active health checks from the gateway. For a backend without a fresh agent
 * report, a full check: the service's health as this gateway sees it.
 *
 * With a fresh report the agent's own probe is closer to the service and
 * speaks for its health (HAProxy runs agent-check and health checks side by
 * side; we avoid doubling the probe traffic), but the agent cannot see the
 * path from this gateway: a partition between the two hosts, a firewall or a
 * proxy in between leaves the agent reporting `up` while every request from
 * here fails. Traffic proves that path (a successful answer within the last
 * interval: `Backend.lastAnsweredAtMs`), and then nothing is sent. A backend
 * this gateway has not had an answer from within an interval (it routes
 * elsewhere: a slower backend at low load, or after a fault) gets a path
 * check instead: the same GET, where any answer passes, whatever its status,
 * and only no answer (refused, reset, timeout) fails. So a path that broke
 * while no request used it is found before requests do, and one that healed
 * is found without sending a client's request into it.
 *
 * A check is `GET <target><path>` on a fresh connection (not the keep-alive
 * pool: reusing a pooled socket would not notice a backend that stopped
 * accepting). Any status below 500 passes: the check asks "is it serving",
 * not "is this route 200". unhealthyThreshold failures in a row mark the
 * backend down, healthyThreshold passes mark it up (Envoy's thresholds).
 * A backend's first check comes at a random point of the first interval
 * (HAProxy's spread-checks), then each timer is the interval ±10%: started
 * together, every backend's first check came at 0.9-1.1 intervals, 120 checks
 * of three gateways in one 200 ms window, and they drifted apart only over
 * minutes. An answer since the last tick (at most an interval plus the jitter
 * ago) counts as traffic.
 */
import { request as httpRequest, type ClientRequest } from 'node:http';
import { request as httpsRequest } from 'node:https';
import type { Backend } from '../registry/backend';
import { errnoOf } from '../proxy/upstream-errors';
import type { Registry } from '../registry/registry';

/** Each timer is the interval ±10%, so that gateways do not probe in lockstep. */
export const HEALTH_CHECK_JITTER = 0.1;

export interface HealthCheckConfig {
  path: string;
  /** The checks' Host header; absent: the backend URL's. */
  host?: string;
  intervalMs: number;
  timeoutMs: number;
  unhealthyThreshold: number;
  healthyThreshold: number;
}

export class ActiveChecker {
  private readonly timers = new Map<Backend, NodeJS.Timeout>();
  private readonly unwatched = new WeakSet<Backend>();
  private readonly inFlight = new Set<ClientRequest>();
  private closed = false;

  constructor(
    private readonly config: HealthCheckConfig,
    private readonly registry: Registry,
    private readonly now: () => number,
    private readonly random: () => number,
  ) {}

  /** Starts checking a backend (call once per backend added). */
  watch(backend: Backend): void {
    if (this.closed || this.timers.has(backend)) return;
    this.schedule(backend, this.config.intervalMs * this.random());
  }

  /** A backend that left the registry: no more checks (a check under way ends unrecorded). */
  unwatch(backend: Backend): void {
    clearTimeout(this.timers.get(backend));
    this.timers.delete(backend);
    this.unwatched.add(backend);
  }

  private schedule(
    backend: Backend,
    delayMs = this.config.intervalMs *
      (1 - HEALTH_CHECK_JITTER + 2 * HEALTH_CHECK_JITTER * this.random()),
  ): void {
    if (this.unwatched.has(backend)) return;
    const timer = setTimeout(() => this.tick(backend), delayMs);
    timer.unref();
    this.timers.set(backend, timer);
  }

  private tick(backend: Backend): void {
    if (this.closed) return;
    const now = this.now();
    const fresh = backend.load.hasFreshReport(now);
    const answered = backend.lastAnsweredAtMs;
    if (
      fresh &&
      answered !== undefined &&
      now - answered <= this.config.intervalMs * (1 + HEALTH_CHECK_JITTER)
    ) {
      // The agent speaks for the backend and traffic for the path: a check verdict must not
      // outlive either.
      this.clear(backend);
      this.schedule(backend);
      return;
    }
    this.check(
      backend,
      (ok, why, answered) => {
        if (fresh && ok && backend.checkDown && !backend.checkDownByPath) {
          // A full check's verdict (a 5xx) from before the report: the agent speaks now.
          this.clear(backend);
        } else {
          this.record(backend, ok, fresh, why, answered);
        }
        if (!this.closed) this.schedule(backend);
      },
      fresh,
    );
  }

  private clear(backend: Backend): void {
    backend.checkFailures = 0;
    if (backend.checkDown) {
      backend.checkDown = false;
      backend.checkDownByPath = false;
      this.registry.recompute();
    }
  }

  /**
   * One check; `done` is called exactly once, with why it failed when it did (an error
   * code, `HTTP 503`, `no answer within <timeoutMs> ms`) and whether the backend answered
   * (a status came, or the connection was taken and the deadline passed: a server that is
   * there, slow). `pathOnly`: any answer passes (the path check of a backend with a
   * fresh report), else a status below 500.
   */
  check(
    backend: Backend,
    done: (ok: boolean, why?: string, answered?: boolean) => void,
    pathOnly = false,
  ): void {
    let settled = false;
    const finish = (ok: boolean, why?: string, answered = false): void => {
      if (settled) return;
      settled = true;
      clearTimeout(deadline);
      this.inFlight.delete(req);
      done(ok, why, answered);
    };
    const url = healthCheckUrl(this.config.path, backend.target);
    const send = url.protocol === 'https:' ? httpsRequest : httpRequest;
    let req: ClientRequest;
    try {
      req = send(url, {
        method: 'GET',
        agent: false,
        headers: checkHeaders(this.config, 'loadwise-gateway-health-check'),
        // Not the pool, but the same trust and name as its connections: a check that
        // verified otherwise would pass a backend every request fails on, or the reverse.
        ...backend.tls,
        // The pool's resolution too: a resolver outage that the traffic rides out on the
        // last good answer must not take every backend down by its checks.
        ...(backend.lookup ? { lookup: backend.lookup } : {}),
      });
    } catch (err) {
      // A request Node refuses to make: a failed check, never a throw out of the timer
      // (one ended the process at the first check).
      settled = true;
      return done(false, errnoOf(err));
    }
    this.inFlight.add(req);
    // Whether the backend's host took the connection: a check that then times out was
    // answered by a server that is there, slow (Backend.checkAnswered). An overloaded fleet
    // whose health endpoint answered after the timeout, its agents cut off from the broker,
    // was presumed gone whole: every request 503 LW_GW_NO_BACKEND where panic served them.
    // A crashed pod's address refuses, or never connects (its host gone).
    let connected = false;
    req.on('socket', (socket) => {
      if (!socket.connecting) connected = true;
      else socket.once('connect', () => (connected = true));
    });
    // A deadline, not an idle timeout: a status line sent a byte at a time, each within
    // timeoutMs of the last, never timed out, and the check that never ended never
    // scheduled the next (the backend was not checked again).
    const timedOut = `no answer within ${this.config.timeoutMs} ms`;
    const deadline = setTimeout(() => {
      finish(
        false,
        connected ? timedOut : `no connection within ${this.config.timeoutMs} ms`,
        connected,
      );
      req.destroy(Object.assign(new Error(timedOut), { code: timedOut }));
    }, this.config.timeoutMs);
    // Why, in the backend's down reason: a name that does not resolve (ENOTFOUND), a
    // refused port and a 5xx all read "active health check failed" before.
    req.on('error', (err) => finish(false, errnoOf(err)));
    req.on('response', (res) => {
      const status = res.statusCode ?? 500;
      finish(pathOnly || status < 500, `HTTP ${status}`, true);
      // The status is the verdict; the body is not read. Drained, an endless or huge one
      // (an event stream at the default path `/`) held a socket open after every check.
      res.on('error', () => {});
      res.destroy();
    });
    req.end();
  }

  /**
   * A check's result; `byPath`: a path check's (a fresh report speaks for the service);
   * `why`: a failure's cause, shown in the backend's down reason; `answered`: a failure
   * with a status (a 5xx), not for want of an answer (Backend.presumedGone).
   */
  record(backend: Backend, ok: boolean, byPath = false, why?: string, answered = false): void {
    if (ok) {
      backend.checkFailures = 0;
      backend.checkUnansweredRun = 0;
      backend.checkAnswered = false;
      backend.checkPasses++;
      if (!byPath) backend.fullPassesSinceVerdict++;
      let up = false;
      if (backend.checkDown && backend.checkPasses >= this.config.healthyThreshold) {
        backend.checkDown = false;
        backend.checkDownByPath = false;
        up = true;
      }
      // The agent's last verdict said down and no longer speaks (verdictLapsed: its agent
      // lost, or no report for three of its intervals): this gateway's own full checks
      // speak for the service now. Kept, it held a backend that came back healthy out of
      // rotation for as long as no report came (34 s of a broker outage, for good after
      // its agent's Last Will).
      if (
        backend.verdictDown &&
        backend.fullPassesSinceVerdict >= this.config.healthyThreshold &&
        backend.verdictLapsed(this.now())
      ) {
        backend.verdictDown = false;
        up = true;
      }
      if (up) this.registry.recompute(); // re-entering the eligible set starts slow start
    } else {
      backend.fullPassesSinceVerdict = 0;
      backend.checkPasses = 0;
      backend.checkFailures++;
      // The cause while it is down: the one that took it out, then the latest.
      backend.checkFailure = why;
      // An answered failure speaks at once (a live server); "no answer" only after as many
      // in a row as take a backend down: a server that answered 503, then died, is gone
      // then, and one whose checks alternate 503 and refused no longer turned panic on
      // and off at every check (a re-review).
      const wasAnswered = backend.checkAnswered;
      backend.checkUnansweredRun = answered ? 0 : backend.checkUnansweredRun + 1;
      backend.checkAnswered =
        answered || (wasAnswered && backend.checkUnansweredRun < this.config.unhealthyThreshold);
      if (!backend.checkDown && backend.checkFailures >= this.config.unhealthyThreshold) {
        backend.checkDown = true;
        backend.checkDownByPath = byPath;
        this.registry.recompute();
      } else if (
        backend.checkDown &&
        wasAnswered !== backend.checkAnswered &&
        backend.origin === 'discovery'
      ) {
        // Down already: whether it may be presumed gone turned (registry.ts recompute).
        this.registry.recompute();
      }
    }
  }

  close(): void {
    this.closed = true;
    for (const t of this.timers.values()) clearTimeout(t);
    this.timers.clear();
    for (const req of this.inFlight) req.destroy();
    this.inFlight.clear();
  }
}

/**
 * The health check's URL on a backend: `path` under the backend's base path,
 * joined as text. Resolved as a URL reference, a first segment with a colon
 * (`/health:check`) read as a scheme (`health:`), and the request then threw
 * ERR_INVALID_PROTOCOL from the checker's timer, ending the process at the
 * first check; `//x` named a host, and dot-segments left the base path
 * (options refuse those now, as a request's path is refused).
 */
export function healthCheckUrl(path: string, target: URL): URL {
  const url = new URL(target.href);
  url.pathname = `${target.pathname.replace(/\/$/, '')}${path}`;
  return url;
}

/** A check's or a preconnect's headers: its user agent, and `healthCheck.host` when set. */
export function checkHeaders(
  config: { host?: string | undefined },
  userAgent: string,
): Record<string, string> {
  return config.host === undefined
    ? { 'user-agent': userAgent }
    : { 'user-agent': userAgent, host: config.host };
}
