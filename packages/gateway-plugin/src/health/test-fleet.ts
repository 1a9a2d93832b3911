/**
 * Builds a registry of real backends (real load estimates, a real strategy)
 * for the health and registry unit tests. Not exported from the package.
 */
import { BalancerEmitter, type BalancerEvents } from '../events';
import { createEndpointLoad } from '../load';
import { Backend } from '../registry/backend';
import { Registry } from '../registry/registry';
import { createStrategy } from '../strategies';

export interface Fleet {
  registry: Registry;
  events: BalancerEmitter;
  backends: Backend[];
  seen: Array<[keyof BalancerEvents, unknown]>;
  close(): void;
}

export function fleet(ids: string[], panicThresholdPercent = 50): Fleet {
  const events = new BalancerEmitter((err) => {
    throw err;
  });
  const seen: Fleet['seen'] = [];
  for (const name of [
    'backend-up',
    'backend-down',
    'backend-ejected',
    'backend-restored',
    'backend-draining',
    'panic',
  ] as const) {
    events.on(name, (e: unknown) => seen.push([name, e]));
  }
  const now = (): number => Date.now();
  const registry = new Registry(createStrategy('round-robin'), events, panicThresholdPercent, now);
  const backends = ids.map((id, i) => {
    const b = new Backend(
      id,
      new URL(`http://127.0.0.1:${10000 + i}`),
      1,
      createEndpointLoad({ now }),
      'config',
      {
        maxSockets: 1,
        maxFreeSockets: 1,
        keepAliveMsecs: 1000,
        idleTimeoutMs: 1000,
        maxRequestsPerConnection: 1000,
      },
      { rejectUnauthorized: true },
    );
    registry.add(b, false);
    return b;
  });
  return { registry, events, backends, seen, close: () => registry.close() };
}

export const eligibleIds = (r: Registry): string[] => r.eligible.map((b) => b.id);
