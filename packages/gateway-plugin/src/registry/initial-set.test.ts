/**
 * The configured backends become eligible in one recompute (registry.ts add,
 * balancer.ts): added one by one, each with a recompute over all of them, the
 * initial set cost O(n²) at construction.
 */
import { loadBalance } from '../load-balance';
import { internals } from '../internals';
import { createStrategy, registerStrategy } from '../strategies/registry';
import type { Endpoint } from '../strategies/types';

const quiet = { info: () => {}, warn: () => {}, error: () => {} };

describe('the initial backends', () => {
  it('reach the strategy in one set, every one of them eligible', async () => {
    const sets: number[] = [];
    registerStrategy('counting-initial-set', (opts) => {
      const inner = createStrategy('round-robin', opts);
      return {
        ...inner,
        name: 'counting-initial-set',
        pick: (ctx) => inner.pick(ctx),
        setEndpoints(endpoints: readonly Endpoint[]) {
          sets.push(endpoints.length);
          inner.setEndpoints(endpoints);
        },
      };
    });
    const backends = Array.from({ length: 50 }, (_, i) => ({
      id: `b${i}`,
      url: `http://127.0.0.1:${20000 + i}`,
    }));
    const lb = loadBalance({
      backends,
      strategy: 'counting-initial-set',
      healthCheck: false,
      overload: false,
      logger: quiet,
    });
    expect(sets).toEqual([50]);
    const { registry } = internals(lb);
    expect(registry.eligible.map((b) => b.id)).toEqual(backends.map((b) => b.id));
    expect(registry.panic).toBe(false);
    await lb.close({ graceMs: 0 });
  });
});
