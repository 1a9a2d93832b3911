/**
 * The eligible endpoints as a strategy holds them between two setEndpoints
 * calls: an immutable array plus an id → index map, so that `exclude` (a retry
 * must go elsewhere) is honoured without scanning the list on every pick.
 */
import type { Endpoint, PickContext } from './types';

export class EndpointList {
  readonly items: readonly Endpoint[];
  private readonly index: Map<Endpoint, number>;

  constructor(endpoints: readonly Endpoint[]) {
    this.items = endpoints.slice();
    this.index = new Map();
    for (let i = 0; i < this.items.length; i++) this.index.set(this.items[i]!, i);
  }

  get length(): number {
    return this.items.length;
  }

  indexOf(ep: Endpoint): number {
    return this.index.get(ep) ?? -1;
  }

  /** Endpoints of this list that `ctx.exclude` removes (others in the set are ignored). */
  excludedCount(ctx: PickContext): number {
    const ex = ctx.exclude;
    if (ex === undefined || ex.size === 0) return 0;
    let k = 0;
    for (const ep of ex) if (this.index.has(ep)) k++;
    return k;
  }

  /** The endpoints not excluded, as a new array: for the rare pick where most are excluded. */
  allowed(ctx: PickContext): Endpoint[] {
    const ex = ctx.exclude;
    return ex === undefined ? this.items.slice() : this.items.filter((ep) => !ex.has(ep));
  }
}
