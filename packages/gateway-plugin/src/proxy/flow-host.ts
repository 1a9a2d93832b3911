/**
 * What the request and upgrade flows (request-flow.ts, upgrade-flow.ts) need of
 * the balancer that owns them: the dispatch (choose, attempt hooks), admission
 * (queue, drain rate, overload, retry budget), health (outlier), metrics and a
 * log. The `Balancer` (balancer.ts) implements it; the flows see nothing else
 * of it (not the strategy, registry, decoder or broker), and proxy/ imports
 * nothing from balancer.ts.
 */
import type { DrainRate } from '../admission/drain-rate';
import type { AcceptQueueMonitor } from '../admission/accept-queue';
import type { OverloadMonitor } from '../admission/overload-monitor';
import type { RetryBudget } from '../admission/retry-budget';
import type { WaitQueue } from '../admission/wait-queue';
import type { OutlierDetector } from '../health/outlier-detector';
import type { GatewayMetrics } from '../observability';
import type { ResolvedOptions } from '../options';
import type { Backend } from '../registry/backend';
import type { Endpoint } from '../strategies/types';
import type { Socket } from 'node:net';
import type { LoopGuard } from './loop-guard';
import type { ProxyEngine } from './proxy-engine';

export interface FlowHost {
  readonly options: ResolvedOptions;
  readonly now: () => number;
  /** close() has released everything: requests get LW_GW_CLOSED. */
  readonly closed: boolean;
  /** close() was called: new requests get LW_GW_DRAINING while in-flight ones finish. */
  readonly draining: boolean;
  readonly engine: ProxyEngine;
  readonly metrics: GatewayMetrics;
  readonly outlier: OutlierDetector;
  readonly overload: OverloadMonitor | undefined;
  /** Sheds while connections wait in the kernel's accept queue (Linux); undefined when off. */
  readonly acceptQueue: AcceptQueueMonitor | undefined;
  readonly queue: WaitQueue;
  readonly drainRate: DrainRate;
  readonly budget: RetryBudget | undefined;
  /** The pick's reason of the last choose() that found a backend (decision header). */
  readonly chosenReason: string | undefined;
  /** A backend for a new attempt, or why there is none (balancer.ts). */
  choose(
    nowMs: number,
    tried: ReadonlySet<Endpoint> | undefined,
    hashKey: string | undefined,
  ): Backend | 'none' | 'all-tried' | 'saturated';
  /**
   * A backend for a WebSocket upgrade (no saturation test, no in-flight accounting),
   * none of `exclude` (a retry's tried backends).
   */
  pickUpgrade(
    nowMs: number,
    hashKey: string | undefined,
    exclude?: ReadonlySet<Endpoint>,
  ): Backend | undefined;
  attemptStarted(backend: Backend, nowMs: number): void;
  attemptAnswered(backend: Backend): void;
  attemptEnded(
    backend: Backend,
    nowMs: number,
    latencyMs: number,
    ok: boolean,
    overloaded: boolean,
    cancelled: boolean,
    /** Refused, not overloaded (a client's 429): see EndpointLoad.onRequestEnd. */
    refused?: boolean,
  ): void;
  /** How long the gateway's own event loop, standing still, delayed an event (load/loop-delay.ts). */
  loopDelayedMs(fromMs: number, eventMs: number): number;
  /** Too few healthy backends (panic), or every eligible one is in `tried`. */
  nothingLeftToTry(tried: ReadonlySet<Endpoint> | undefined): boolean;
  noBackendRetryAfterSec(nowMs: number): number;
  /** The wait queue's length changed (saturation events, metrics). */
  queueChanged(): void;
  /**
   * A request came back through backend `id` (proxy/loop-guard.ts), on `socket`: taken out
   * of rotation for good, and true, if that socket is one of this gateway's own connections
   * to it.
   */
  loopedBack(id: string, socket: Socket): boolean;
  /** A server the balancer serves on became known: discovered backends that are it go. */
  listenerNoted(): void;
  /** This gateway's X-Loadwise-Via entries. */
  readonly loops: LoopGuard;
  /** A warning, at most once per key per 10 s. */
  logLine(key: string, message: string, fields?: Record<string, unknown>): void;
}
