/**
 * One backend as the balancer sees it: its address (from configuration or a
 * signed, allowed registration), its load estimate, and the flags that decide
 * whether it may receive new requests. Flags are plain fields written by the
 * registry, the outlier detector and the health checker; the registry turns
 * them into an eligible set (registry.ts).
 */
import type { Agent as HttpAgent } from 'node:http';
import { isIP } from 'node:net';
import type { BackendState as AgentState, MetricsReport } from '@loadwise/protocol';
import type { LoadEstimate } from '../load';
import {
  backendTlsOptions,
  urlHost,
  type BackendTls,
  type BackendTlsConnectOptions,
} from './backend-tls';
import type { Endpoint } from '../strategies/types';
import { createPoolAgent, type StrayBytesHandler } from './pool-agent';
import { backendLookup, type ConnectLookup } from './dns-cache';

/** Intervals of its own without a report after which an agent's `down` verdict lapses (verdictLapsed). */
const VERDICT_INTERVALS = 3;
/**
 * And at most this long: an interval is the agent's word (the protocol bounds none, the
 * agent takes up to an hour), and a verdict held for three of them kept a backend out for
 * 3 hours, or for good with a forged interval. Five minutes covers agents reporting every
 * 100 s; the freshness limit is capped the same way (staleAfterFor, maxStaleAfterMs).
 */
const MAX_VERDICT_HOLD_MS = 300_000;

/** What a backend is, for routing: derived from the flags below. */
export type BackendCondition = 'up' | 'down' | 'ejected' | 'draining';

export interface AgentOptions {
  maxSockets: number;
  maxFreeSockets: number;
  keepAliveMsecs: number;
  idleTimeoutMs: number;
  maxRequestsPerConnection: number;
}

export class Backend {
  readonly endpoint: Endpoint;
  /** Keep-alive pool of this backend only: closing or replacing it never touches the others. */
  readonly agent: HttpAgent;
  /** The proxy target: origin plus the configured base path. */
  readonly target: URL;
  /**
   * TLS options of every connection to an https backend (undefined for
   * http): its pool has them, and the active health checks, which open
   * connections of their own, pass them too (registry/backend-tls.ts).
   */
  readonly tls: BackendTlsConnectOptions | undefined;
  /**
   * How its name is resolved, for a backend addressed by name (undefined for an address):
   * the last good answer kept (registry/dns-cache.ts), for its pool and its health checks.
   */
  readonly lookup: ConnectLookup | undefined;

  /** Last lifecycle state reported by the agent; 'online' until told otherwise. */
  agentState: AgentState = 'online';
  /** The agent's Last Will arrived: metrics go stale, the backend stays routable. */
  agentLost = false;
  /**
   * Discovery: the agent has sent nothing signed for SILENT_INTERVALS of its report
   * intervals (SILENT_MIN_MS at least) on the lease clock, which runs only while the
   * gateway is connected to the broker (balancer.ts markSilentAgents). Its Last Will
   * may never come: a broker that crashed, or restarted without persistence, knows
   * nothing of the connection of an agent that died meanwhile.
   */
  agentSilent = false;
  /** The agent's health verdict is `down` (verdictLapsed: when it no longer speaks). */
  verdictDown = false;
  /**
   * Full checks passed in a row since `verdictDown` was last reported: a lapsed verdict
   * ends at `healthyThreshold` of them (health/active-checker.ts). Not `checkPasses`, which
   * counts the path checks made while the report was fresh too (any answer passes one,
   * a 503 as well), and one lucky full check then brought a flapping service back.
   */
  fullPassesSinceVerdict = 0;
  /** Active health check: consecutive results and the resulting verdict. */
  checkDown = false;
  /** `checkDown` came from path checks (no answer at all), not from a full check's status. */
  checkDownByPath = false;
  checkFailures = 0;
  /** Why the last failed check failed (health/active-checker.ts), for the down reason. */
  checkFailure: string | undefined;
  /**
   * Its failing checks are answered (a 5xx, or a timeout on a connection it took): a server
   * is there, alive. Set by an answered failure at once, cleared by unhealthyThreshold
   * unanswered ones in a row or a pass (health/active-checker.ts record). Such a backend
   * is never presumed gone (presumedGone), its agent lost or silent: a health endpoint that
   * answers 503 fleet-wide (a shared dependency down) is what panic mode is for.
   */
  checkAnswered = false;
  /** Failed checks without an answer in a row (health/active-checker.ts record). */
  checkUnansweredRun = 0;
  checkPasses = 0;
  /** Passive outlier detection (Envoy): consecutive failures and ejection state. */
  consecutiveFailures = 0;
  timesEjected = 0;
  /** Ejections since the backend was added (timesEjected resets after a quiet period). */
  ejectionsTotal = 0;
  ejectedUntilMs: number | undefined;
  ejectionTimer: NodeJS.Timeout | undefined;
  /** Left the eligible set (or is new): re-entering it starts slow start. */
  rampOnEntry = false;
  /**
   * Its ejection ended early on this gateway's active check alone, no sign of a
   * new process (health/outlier-detector.ts): re-entering the eligible set keeps
   * what was learned about it (the error penalty of the failures that ejected it,
   * its service times), where admit() would start a newcomer from a clean slate.
   */
  keepFiguresOnEntry = false;
  /** The condition last announced by an event, to emit only transitions. */
  condition: BackendCondition = 'up';
  /** Whether the last freshness sweep saw a fresh report (to emit metrics-stale once). */
  wasFresh = false;
  /** A freshness sweep has seen a fresh report of it, ever. */
  everFresh = false;
  /** The lease clock when it was added (balancer.ts leaseNow): how long it could have been heard. */
  addedAtLeaseMs = 0;
  /** Said once that no report of it ever came (balancer.ts warnNeverHeard). */
  neverHeardWarned = false;
  /** An unsigned report of it came (allowUnsigned): a penalty only, never `lastReport`. */
  heardUnsigned = false;
  /** The last accepted report, for the status endpoint. */
  lastReport: MetricsReport | undefined;
  /** Key id of the last signed message applied for this backend (snapshot `signedBy`). */
  signedBy: string | undefined;
  /**
   * When this gateway last had a successful answer from the backend (ms,
   * `now`): traffic that proves the path from here, so the active checker's
   * path check can skip it (health/active-checker.ts).
   */
  lastAnsweredAtMs: number | undefined;
  /**
   * When this gateway last applied a signed message of the backend's agent
   * (its registration included), on the lease clock (ms, balancer.ts
   * leaseNow): a discovered backend's lease (balancer.ts forgetSilent).
   */
  heardAtLeaseMs = 0;
  /**
   * Discovery: the agent run (`epochMs`) whose signed registration admitted the backend at
   * this address, or last renewed it there. A registration of another run at another
   * address replaces the entry (balancer.ts onRegistration); the admitting run never moves
   * it, and the replay guard refuses an earlier run while the admitting one is remembered.
   */
  runEpochMs: number | undefined;
  /**
   * Discovery: another agent run whose registration was refused (an address outside the
   * rules, another backend's server). Its messages describe some other instance: they
   * are neither applied to this entry nor renew its lease.
   */
  refusedEpochMs: number | undefined;
  /** Upgrades to this backend taken and not yet closed (proxy/upgrade-flow.ts). */
  openUpgrades = 0;
  /** Its answers in the stream lane (proxy/stream-lane.ts): not in load.inFlight. */
  openStreams = 0;
  /** Requests sent and failed since creation (status endpoint). */
  requests = 0;
  failures = 0;

  constructor(
    readonly id: string,
    url: URL,
    readonly weight: number,
    readonly load: LoadEstimate,
    readonly origin: 'config' | 'discovery',
    agentOptions: AgentOptions,
    tls: BackendTls,
    onStrayBytes: StrayBytesHandler = () => {},
  ) {
    this.target = url;
    this.endpoint = { id, weight, load };
    // LIFO reuses the most recently used socket, so idle ones age out instead of
    // every socket being kept barely alive (Node's documented reason for 'lifo').
    // `timeout` retires idle pooled sockets, and only with it set does Node
    // honour a backend's `Keep-Alive: timeout=N` hint (closing a second before
    // the server would, instead of racing its close with a new request:
    // Agent.prototype.keepSocketAlive). It never fires on a socket in use.
    const { idleTimeoutMs, maxRequestsPerConnection, ...pool } = agentOptions;
    this.lookup = isIP(urlHost(url)) === 0 ? backendLookup : undefined;
    const opts = {
      keepAlive: true,
      scheduling: 'lifo' as const,
      timeout: idleTimeoutMs,
      ...(this.lookup ? { lookup: this.lookup } : {}),
      ...pool,
    };
    this.tls = url.protocol === 'https:' ? backendTlsOptions(url, tls) : undefined;
    // The TLS options are the agent's own: Node's Agent lays them over each request's,
    // so neither a client's Host header nor http-proxy's per-request
    // rejectUnauthorized can change what a connection verifies. Its idle
    // connections are guarded: one the backend writes to is closed, and each carries
    // maxRequestsPerConnection answers at most (pool-agent.ts).
    this.agent = createPoolAgent(opts, this.tls, maxRequestsPerConnection, onStrayBytes);
  }

  /**
   * The gateway itself: a request sent to it came back on one of this backend's own pooled
   * connections (proxy/loop-guard.ts). Out of rotation for good, whatever the agent says.
   */
  loopsBack = false;

  /**
   * Discovery: a run of this backend's agent other than the one whose registration admitted
   * the entry, heard while the admitting run was silent (balancer.ts onMessage): the agent
   * has moved on, and the entry's address is an old run's. A registration replayed to a
   * gateway that had just started (a copy of a dead run's, published again as retained)
   * routed every request for that id to the old address (a reused pod IP: another
   * server) until the live run's next registration, ~18 s, while the live run's reports
   * were dropped as unregistered. Out of rotation until a registration of another run
   * takes the entry over or moves it.
   */
  supersededBy: number | undefined;

  /** Administrative exclusion by the agent, or the gateway itself: never overridden by panic mode. */
  get drainingOrOffline(): boolean {
    return (
      this.agentState === 'draining' ||
      (this.agentState === 'offline' && !this.agentLost) ||
      this.loopsBack ||
      this.supersededBy !== undefined
    );
  }

  /**
   * A discovered backend presumed gone: its agent is lost (Last Will) or silent
   * (agentSilent), and it fails the gateway's active checks too, unanswered. It does not count as routable
   * for panic, and panic does not route to it (registry.ts recompute): a crashed pod
   * (agent and service together) is not a backend that is merely unhealthy. A
   * configured backend is the operator's word and keeps the panic rules.
   */
  get presumedGone(): boolean {
    // Failing its active checks, not merely ejected: a Last Will says the agent died, not
    // the service, and an ejection after a few 5xx of a backend whose checks pass took the
    // only backend out of panic too (100 % 503 for the ejection's 30 s).
    // Failing for want of an answer (refused, reset, timed out), not with a 5xx: a server
    // that answers is there. Agents cut off from a restarted broker (silent, no Last Will)
    // while every health endpoint answered 503 took the whole fleet out of panic: every
    // request 503 where panic had served them all.
    return (
      this.origin === 'discovery' &&
      (this.agentLost || this.agentSilent) &&
      this.checkDown &&
      !this.checkAnswered
    );
  }

  /** Taken out of the registry (moved, forgotten) while requests still ran on it. */
  retired = false;

  /** Ends an ejection without an event (a retired copy: balancer.ts retire). */
  clearEjection(): void {
    if (this.ejectionTimer) clearTimeout(this.ejectionTimer);
    this.ejectionTimer = undefined;
    this.ejectedUntilMs = undefined;
  }

  /**
   * The agent's last verdict no longer speaks for the service: its report is stale, and
   * its agent is lost (a Last Will) or no report has come for VERDICT_INTERVALS of its own
   * intervals (MAX_VERDICT_HOLD_MS at most). Not the freshness limit alone, which is
   * capped (`maxStaleAfterMs`, 30 s): an agent reporting once a minute had its `down` lapse
   * between every two reports, the backend in rotation half the time.
   */
  verdictLapsed(nowMs: number): boolean {
    if (this.load.hasFreshReport(nowMs)) return false;
    if (this.agentLost) return true;
    const age = this.load.reportAgeMs(nowMs);
    const hold = Math.min(
      VERDICT_INTERVALS * (this.lastReport?.intervalMs ?? 0),
      MAX_VERDICT_HOLD_MS,
    );
    return age === undefined || age > hold;
  }

  /** A health exclusion: panic mode may still route to it. */
  get unhealthy(): boolean {
    return this.ejectedUntilMs !== undefined || this.checkDown || this.verdictDown;
  }

  conditionNow(): BackendCondition {
    if (this.drainingOrOffline) {
      return this.agentState === 'draining' && !this.loopsBack && this.supersededBy === undefined
        ? 'draining'
        : 'down';
    }
    if (this.ejectedUntilMs !== undefined) return 'ejected';
    if (this.checkDown || this.verdictDown) return 'down';
    return 'up';
  }

  downReason(): string {
    if (this.loopsBack) return 'it is this gateway itself: a request sent to it came back';
    if (this.supersededBy !== undefined)
      return "another run of its agent reports, unregistered yet: the address is an old run's";
    // After a Last Will the agent reported nothing: it died (and `offline` is the will's).
    if (this.agentState === 'offline' && !this.agentLost) return 'agent reported offline';
    if (this.checkDown) {
      const why = this.checkFailure === undefined ? '' : ` (${this.checkFailure})`;
      // Out of panic's set too: say why, or "check failed" read as an ordinary outage.
      if (this.presumedGone)
        return `presumed gone: its agent is ${this.agentLost ? 'lost (Last Will)' : 'silent'} and its checks get no answer${why}`;
      return this.checkDownByPath
        ? `no answer to the path check from this gateway${why}`
        : `active health check failed${why}`;
    }
    if (this.verdictDown) {
      return this.agentLost
        ? 'agent lost; its last health verdict was down'
        : 'agent health verdict down';
    }
    return 'unknown';
  }

  close(): void {
    if (this.ejectionTimer) clearTimeout(this.ejectionTimer);
    this.ejectionTimer = undefined;
    this.agent.destroy();
    this.load.dispose();
  }
}
