/**
 * The contract between the balancer (registry, health, proxy) and the routing
 * strategies. The balancer owns backends and their lifecycle; it hands a
 * strategy the eligible endpoints whenever that set changes, and asks it for a
 * synchronous pick per request. A strategy never reads CPU fields itself: it
 * compares `load` figures (lower is better), computed by src/load (the
 * EndpointLoad interface lives in load/types.ts and is re-exported here).
 */
import type { EndpointLoad } from '../load/types';

export type { EndpointLoad };

export interface Endpoint {
  readonly id: string;
  /** Static weight from configuration (default 1). */
  readonly weight: number;
  readonly load: EndpointLoad;
}

export interface PickContext {
  nowMs: number;
  /** Key for consistent hashing / affinity (from a header, cookie or client address). */
  hashKey?: string;
  /** Endpoints not to pick (a retry must go to a different backend). */
  exclude?: ReadonlySet<Endpoint>;
  /** When true, fill `Pick.reason` (for the opt-in decision header). */
  explain?: boolean;
  /**
   * How late the gateway's event loop runs, ms (load/loop-delay.ts): latencies
   * it measures are that coarse. A strategy comparing latency-based figures may
   * treat differences below it as ties (load-aware does). 0 or absent: none.
   */
  measurementNoiseMs?: number;
}

export interface Pick {
  endpoint: Endpoint;
  reason?: string;
}

export interface Strategy {
  readonly name: string;
  /** The eligible set changed: rebuild whatever `pick` reads. Never called per request. */
  setEndpoints(endpoints: readonly Endpoint[]): void;
  /** Synchronous, no I/O. Undefined only when every endpoint is excluded or none is set. */
  pick(ctx: PickContext): Pick | undefined;
  /** Optional (compatible addition): drop subscriptions to endpoint loads; the strategy is not used again. */
  dispose?(): void;
}
