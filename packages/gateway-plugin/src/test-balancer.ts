/**
 * A Balancer without a broker, for the unit tests that drive its message
 * handler directly (Balancer.receive, as the MQTT source does): no health
 * checks, no overload sampling, an injected clock. Not exported from the
 * package.
 */
import type { MetricsBody } from '@loadwise/protocol';
import { Balancer } from './balancer';
import type { LoadBalanceOptions, Logger } from './options';
import { resolveOptions } from './options-validate';

export const silentLogger: Logger = { info: () => {}, warn: () => {}, error: () => {} };

/** An agent's report of a backend that is fine. */
export const calmReport: MetricsBody = {
  intervalMs: 1000,
  state: 'online',
  host: { cpuUtilization: 0.1, memoryUtilization: 0.1, memoryAvailableBytes: 1e9 },
  health: { verdict: 'up' },
};

export function testBalancer(
  backends: { id: string; url: string }[],
  now: () => number,
  extra: Partial<LoadBalanceOptions> = {},
): Balancer {
  return new Balancer(
    resolveOptions({
      backends,
      healthCheck: false,
      overload: false,
      logger: silentLogger,
      now,
      ...extra,
    }),
  );
}
