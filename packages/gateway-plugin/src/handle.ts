/**
 * What a user holds of a running balancer (`lb.balancer`): events, the
 * snapshot, the broker connection and the metrics registry. The `Balancer`
 * class behind it (balancer.ts) is internal, so its wiring can change without
 * a semver break; the public surface is checked by test/api/ (api-extractor).
 */
import type { Registry as MetricsRegistry } from 'prom-client';
import type { BalancerEvents } from './events';
import type { BalancerSnapshot } from './observability/snapshot';

export interface BalancerHandle {
  /** Listeners run synchronously; one that throws is logged, never breaks a request. */
  on<K extends keyof BalancerEvents>(
    event: K,
    listener: (...args: BalancerEvents[K]) => void,
  ): this;
  off<K extends keyof BalancerEvents>(
    event: K,
    listener: (...args: BalancerEvents[K]) => void,
  ): this;
  /** Every backend's state, load, share and recent figures (what `/_lb/status` serves). */
  snapshot(): BalancerSnapshot;
  /**
   * URL of the broker (the embedded one's, once started), its credentials shown as `***`;
   * undefined without one.
   */
  readonly brokerUrl: string | undefined;
  /** Whether the broker connection is up and subscribed; null without a broker. */
  readonly brokerConnected: boolean | null;
  /** The prom-client registry the gateway's metrics live in (`metricsRegistry` or its own). */
  readonly metricsRegistry: MetricsRegistry;
}
