/**
 * Requests sent per backend over a sliding window, for the status endpoint's
 * traffic share ("requests to it / all requests"). `record` is on the request
 * path: one Map lookup and one array increment; slots are cleared lazily when
 * the clock moves into a new slot, never by a timer.
 */

export const DEFAULT_TRAFFIC_WINDOW_MS = 10_000;
export const DEFAULT_TRAFFIC_WINDOW_SLOTS = 10;

export interface TrafficWindowOptions {
  /** Window length, ms (default 10000). */
  windowMs?: number;
  /** Ring slots the window is cut into (default 10): the window moves in steps of windowMs/slots. */
  slots?: number;
}

export interface TrafficCounts {
  /** Requests over all backends in the window. */
  total: number;
  /** Requests per backend id in the window (backends with none are absent). */
  perBackend: Map<string, number>;
}

export class TrafficWindow {
  readonly windowMs: number;
  private readonly slots: number;
  private readonly slotMs: number;
  private readonly rings = new Map<string, Uint32Array>();
  /** Absolute slot number (nowMs / slotMs) the rings were last advanced to. */
  private headSlot = Number.NEGATIVE_INFINITY;

  constructor(opts: TrafficWindowOptions = {}) {
    const windowMs = opts.windowMs ?? DEFAULT_TRAFFIC_WINDOW_MS;
    const slots = opts.slots ?? DEFAULT_TRAFFIC_WINDOW_SLOTS;
    if (!Number.isInteger(slots) || slots < 1)
      throw new RangeError('slots must be an integer >= 1');
    if (!Number.isFinite(windowMs) || windowMs <= 0) throw new RangeError('windowMs must be > 0');
    this.windowMs = windowMs;
    this.slots = slots;
    this.slotMs = windowMs / slots;
  }

  /** One request sent to `backendId` at `nowMs` (a monotonic or wall clock, used consistently). */
  record(backendId: string, nowMs: number): void {
    const slot = Math.floor(nowMs / this.slotMs);
    if (slot > this.headSlot) this.advance(slot);
    let ring = this.rings.get(backendId);
    if (ring === undefined) {
      ring = new Uint32Array(this.slots);
      this.rings.set(backendId, ring);
    }
    ring[slot % this.slots]! += 1;
  }

  /** A backend that left: its counts leave the window. */
  forget(backendId: string): void {
    this.rings.delete(backendId);
  }

  counts(nowMs: number): TrafficCounts {
    const slot = Math.floor(nowMs / this.slotMs);
    if (slot > this.headSlot) this.advance(slot);
    const perBackend = new Map<string, number>();
    let total = 0;
    for (const [id, ring] of this.rings) {
      let sum = 0;
      for (let i = 0; i < ring.length; i++) sum += ring[i]!;
      if (sum > 0) perBackend.set(id, sum);
      total += sum;
    }
    return { total, perBackend };
  }

  /** Clears the slots the clock skipped since the last call, for every backend. */
  private advance(slot: number): void {
    const from = Math.max(this.headSlot + 1, slot - this.slots + 1);
    for (const ring of this.rings.values()) {
      for (let s = from; s <= slot; s++) ring[s % this.slots] = 0;
    }
    this.headSlot = slot;
  }
}
