/**
 * Active health checks from the gateway, only for backends without a fresh
 * agent report: the agent's own probe is closer to the service and already
 * covers the others (HAProxy runs agent-check and health checks side by side;
 * we avoid doubling the probe traffic).
 *
 * A check is `GET <target><path>` on a fresh connection (not the keep-alive
 * pool: reusing a pooled socket would not notice a backend that stopped
 * accepting). Any status below 500 passes: the check asks "is it serving",
 * not "is this route 200". unhealthyThreshold failures in a row mark the
 * backend down, healthyThreshold passes mark it up (Envoy's thresholds).
 * Each backend's timer is jittered ±10% so gateways do not probe in lockstep.
 */
import { request as httpRequest, type ClientRequest } from 'node:http';
import { request as httpsRequest } from 'node:https';
import type { Backend } from '../registry/backend';
import type { Registry } from '../registry/registry';

export interface HealthCheckConfig {
  path: string;
  intervalMs: number;
  timeoutMs: number;
  unhealthyThreshold: number;
  healthyThreshold: number;
}

export class ActiveChecker {
  private readonly timers = new Map<Backend, NodeJS.Timeout>();
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
    this.schedule(backend);
  }

  private schedule(backend: Backend): void {
    const delayMs = this.config.intervalMs * (0.9 + 0.2 * this.random());
    const timer = setTimeout(() => this.tick(backend), delayMs);
    timer.unref();
    this.timers.set(backend, timer);
  }

  private tick(backend: Backend): void {
    if (this.closed) return;
    if (backend.load.hasFreshReport(this.now())) {
      // The agent speaks for the backend now; a stale check verdict must not outlive it.
      backend.checkFailures = 0;
      if (backend.checkDown) {
        backend.checkDown = false;
        this.registry.recompute();
      }
      this.schedule(backend);
      return;
    }
    this.check(backend, (ok) => {
      this.record(backend, ok);
      if (!this.closed) this.schedule(backend);
    });
  }

  /** One check; `done` is called exactly once. */
  check(backend: Backend, done: (ok: boolean) => void): void {
    let settled = false;
    const finish = (ok: boolean): void => {
      if (settled) return;
      settled = true;
      this.inFlight.delete(req);
      done(ok);
    };
    const url = healthCheckUrl(this.config.path, backend.target);
    const send = url.protocol === 'https:' ? httpsRequest : httpRequest;
    const req = send(url, {
      method: 'GET',
      agent: false,
      headers: { 'user-agent': 'loadwise-gateway-health-check' },
    });
    this.inFlight.add(req);
    req.setTimeout(this.config.timeoutMs, () => req.destroy(new Error('health check timeout')));
    req.on('error', () => finish(false));
    req.on('response', (res) => {
      res.resume();
      res.on('error', () => finish(false));
      finish((res.statusCode ?? 500) < 500);
    });
    req.end();
  }

  record(backend: Backend, ok: boolean): void {
    if (ok) {
      backend.checkFailures = 0;
      backend.checkPasses++;
      if (backend.checkDown && backend.checkPasses >= this.config.healthyThreshold) {
        backend.checkDown = false;
        this.registry.recompute(); // re-entering the eligible set starts slow start
      }
    } else {
      backend.checkPasses = 0;
      backend.checkFailures++;
      if (!backend.checkDown && backend.checkFailures >= this.config.unhealthyThreshold) {
        backend.checkDown = true;
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

function withSlash(url: URL): URL {
  return url.pathname.endsWith('/') ? url : new URL(`${url.href}/`);
}

/** The health check's URL on a backend: `path` under the backend's base path. */
export function healthCheckUrl(path: string, target: URL): URL {
  return new URL(path.replace(/^\//, ''), withSlash(target));
}
