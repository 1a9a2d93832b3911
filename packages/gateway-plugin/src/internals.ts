/**
 * `@loadwise/gateway-plugin/internals`: the `Balancer` behind a middleware, for
 * this repository's tests and benchmarks. It is not part of the public API
 * (index.ts, checked by test/api/): its members change without notice and
 * without a semver bump.
 */
import type { Balancer } from './balancer';
import type { Dashboard } from './dashboard';
import type { LoadBalancerMiddleware } from './load-balance';

export type { Balancer, Dashboard };

export function internals(lb: Pick<LoadBalancerMiddleware, 'balancer'>): Balancer {
  return lb.balancer as Balancer;
}

/** The dashboard (viewers, sampling, recent events) when the `dashboard` option is on. */
export function dashboardOf(lb: LoadBalancerMiddleware): Dashboard | undefined {
  return (lb as unknown as { dashboard: Dashboard | undefined }).dashboard;
}

/** The accept-queue signal's table read (test/gateway/accept-queue.test.ts, bench/hostile/accept-queue-read.ts). */
export { procDepthReader, readListenDepth } from './admission/accept-queue';
export { MAX_RETURNS } from './proxy/loop-guard';
