/**
 * The chart history: a ring of `capacity` points kept in typed-array
 * columns, not one object per point. A point as an object costs a record
 * keyed by backend id with an array of six numbers per backend: about 465 KB
 * per point at 3,000 backends, 111 MB for a minute at 250 ms, kept after every
 * viewer left. Here a point costs 8 bytes per number, and the per-backend
 * columns (series) are at most `maxSeries`, so the history's memory is
 * bounded by `capacity` and `maxSeries` alone, whatever the fleet size.
 *
 * Points keep their absolute sequence number (`firstSeq` .. `endSeq - 1`), so
 * a reader that works through the ring in steps (the stream's first message,
 * stream.ts) can tell which of its points were overwritten meanwhile.
 */
import type { Point, PointBackend } from './frame';

/** Numbers per backend per point: see PointBackend. */
const WIDTH = 6;

/** One backend's columns: WIDTH numbers per slot, NaN for null. */
interface Series {
  values: Float64Array;
  /** The seq each slot was written at: a slot holds a value only if it matches the slot's seq. */
  written: Float64Array;
  /** The newest seq written: the least recently written series is evicted first. */
  lastSeq: number;
}

const num = (x: number | null): number => (x === null ? NaN : x);
const orNull = (x: number): number | null => (Number.isNaN(x) ? null : x);

export class History {
  private readonly t: Float64Array;
  private readonly eventLoopDelayMs: Float64Array;
  private readonly queue: Float64Array;
  private readonly inFlight: Float64Array;
  private readonly shed: Float64Array;
  private readonly retries: Float64Array;
  private readonly gap: Uint8Array;
  private readonly series = new Map<string, Series>();
  private end = 0;

  constructor(
    readonly capacity: number,
    private readonly maxSeries: number,
  ) {
    this.t = new Float64Array(capacity);
    this.eventLoopDelayMs = new Float64Array(capacity);
    this.queue = new Float64Array(capacity);
    this.inFlight = new Float64Array(capacity);
    this.shed = new Float64Array(capacity);
    this.retries = new Float64Array(capacity);
    this.gap = new Uint8Array(capacity);
  }

  /** Seq of the oldest point held. */
  get firstSeq(): number {
    return Math.max(0, this.end - this.capacity);
  }

  /** One past the newest point's seq: it grows by one per point. */
  get endSeq(): number {
    return this.end;
  }

  get length(): number {
    return this.end - this.firstSeq;
  }

  /** Backends with columns now (at most maxSeries). */
  get seriesCount(): number {
    return this.series.size;
  }

  /** Time of the newest point; undefined when empty. */
  get lastT(): number | undefined {
    return this.end === 0 ? undefined : this.t[(this.end - 1) % this.capacity];
  }

  push(p: Point): void {
    const seq = this.end++;
    const i = seq % this.capacity;
    this.t[i] = p.t;
    this.gap[i] = p.gap ? 1 : 0;
    this.eventLoopDelayMs[i] = num(p.eventLoopDelayMs);
    this.queue[i] = p.queue;
    this.inFlight[i] = p.inFlight;
    this.shed[i] = p.shed;
    this.retries[i] = p.retries;
    for (const [id, v] of Object.entries(p.backends)) {
      const s = this.seriesFor(id, seq);
      if (s === undefined) continue;
      for (let k = 0; k < WIDTH; k++) s.values[i * WIDTH + k] = num(v[k] ?? null);
      s.written[i] = seq;
      s.lastSeq = seq;
    }
    // A backend no longer in any point held (removed, or out of the detailed ones) frees its columns.
    const first = this.firstSeq;
    for (const [id, s] of this.series) if (s.lastSeq < first) this.series.delete(id);
  }

  /** The points with seq in [from, to), oldest first. */
  points(from: number, to: number): Point[] {
    const out: Point[] = [];
    for (let seq = Math.max(from, this.firstSeq); seq < Math.min(to, this.end); seq++) {
      out.push(this.point(seq));
    }
    return out;
  }

  /** The newest point; undefined when empty. */
  last(): Point | undefined {
    return this.end === 0 ? undefined : this.point(this.end - 1);
  }

  private point(seq: number): Point {
    const i = seq % this.capacity;
    const backends: Record<string, PointBackend> = {};
    for (const [id, s] of this.series) {
      if (s.written[i] !== seq) continue;
      const o = i * WIDTH;
      const v = s.values;
      backends[id] = [
        v[o]!,
        orNull(v[o + 1]!),
        orNull(v[o + 2]!),
        orNull(v[o + 3]!),
        orNull(v[o + 4]!),
        v[o + 5]!,
      ];
    }
    const p: Point = {
      t: this.t[i]!,
      eventLoopDelayMs: orNull(this.eventLoopDelayMs[i]!),
      queue: this.queue[i]!,
      inFlight: this.inFlight[i]!,
      shed: this.shed[i]!,
      retries: this.retries[i]!,
      backends,
    };
    if (this.gap[i] === 1) p.gap = true;
    return p;
  }

  /**
   * The columns of `id`; a new backend takes free ones, or those of the
   * backend written least recently (not in this point), or none when every
   * series is in this point (more backends than maxSeries: the rest is not kept).
   */
  private seriesFor(id: string, seq: number): Series | undefined {
    const have = this.series.get(id);
    if (have !== undefined) return have;
    let s: Series | undefined;
    if (this.series.size < this.maxSeries) {
      s = {
        values: new Float64Array(this.capacity * WIDTH),
        // -1: no slot written yet (seqs start at 0).
        written: new Float64Array(this.capacity).fill(-1),
        lastSeq: seq,
      };
    } else {
      let victim: string | undefined;
      let oldest = seq;
      for (const [other, o] of this.series) {
        if (o.lastSeq < oldest) {
          oldest = o.lastSeq;
          victim = other;
        }
      }
      if (victim === undefined) return undefined;
      // Its arrays are reused; none of its slots is the new backend's.
      s = this.series.get(victim)!;
      s.written.fill(-1);
      this.series.delete(victim);
    }
    this.series.set(id, s);
    return s;
  }
}
