/**
 * The dashboard's "recent events": the last `capacity` balancer events, kept
 * whether or not anyone watches (they are rare, so this costs nothing), so a
 * page opened after an incident still shows it. Sentences and levels come
 * from the event log (observability/event-log.ts), so the page and the logs
 * say the same thing.
 *
 * What a peer can repeat at will (dropped messages) and what the dashboard
 * counts itself (sheds) is coalesced: one entry per key per `coalesceMs`,
 * whose count grows, so a flood of forged reports costs one Map lookup per
 * message. Coalesced entries have a ring of their own, as large as the
 * events': a flood that goes on for minutes makes a new entry per code every
 * window, and in a shared ring those pushed the real events out (5 forged
 * messages a second over 5 codes emptied a 200-entry ring of its ejections
 * in 7 minutes).
 */
import type { BalancerEmitter, BalancerEvents } from '../events';
import { BALANCER_EVENT_NAMES, describeEvent, type LogLevel } from '../observability/event-log';

export interface DashboardEvent {
  /** Stable identity of the entry (a coalesced entry keeps it while its count grows). */
  id: number;
  /** Bumped whenever the entry changes: viewers ask for what changed since a seq. */
  seq: number;
  /** Wall-clock time of the first occurrence, ms since the epoch. */
  at: number;
  /** Time of the latest occurrence (differs from `at` for coalesced entries). */
  lastAt: number;
  level: LogLevel;
  /** Balancer event name, or 'shed' for requests the gateway answered 503 itself. */
  event: keyof BalancerEvents | 'shed';
  backend: string | null;
  /** For dropped messages and sheds: the error code or shed reason. */
  code: string | null;
  msg: string;
  /** Occurrences folded into this entry (1 for ordinary events). */
  count: number;
}

/** A fixed-size ring, oldest first; `push` returns what it evicted. */
class Ring {
  private readonly entries: DashboardEvent[] = [];
  /** entries[head] is the oldest once the ring is full. */
  private head = 0;

  constructor(private readonly capacity: number) {}

  push(entry: DashboardEvent): DashboardEvent | undefined {
    if (this.entries.length < this.capacity) {
      this.entries.push(entry);
      return undefined;
    }
    const evicted = this.entries[this.head]!;
    this.entries[this.head] = entry;
    this.head = (this.head + 1) % this.capacity;
    return evicted;
  }

  all(): DashboardEvent[] {
    return [...this.entries.slice(this.head), ...this.entries.slice(0, this.head)];
  }
}

export class EventRing {
  /** Balancer events, one entry each. */
  private readonly events: Ring;
  /** Coalesced entries (dropped messages, sheds): a flood of them never evicts an event. */
  private readonly folded: Ring;
  private nextId = 1;
  private seqCounter = 0;
  /** Coalesced entries still open for more occurrences, by key. */
  private readonly open = new Map<string, DashboardEvent>();
  private readonly detach: () => void;

  constructor(
    events: BalancerEmitter,
    private readonly now: () => number,
    capacity = 200,
    private readonly coalesceMs = 10_000,
  ) {
    this.events = new Ring(capacity);
    this.folded = new Ring(capacity);
    const listeners = BALANCER_EVENT_NAMES.map((name) => {
      const listener = (data: unknown): void => this.onEvent(name, data);
      events.on(name, listener as never);
      return [name, listener] as const;
    });
    this.detach = () => {
      for (const [name, listener] of listeners) events.off(name, listener as never);
    };
  }

  /** The newest seq handed out; `since(seq)` returns what changed after it. */
  get seq(): number {
    return this.seqCounter;
  }

  /** Every entry, oldest first (by first occurrence; ids break ties). */
  all(): DashboardEvent[] {
    return [...this.events.all(), ...this.folded.all()].sort((a, b) => a.at - b.at || a.id - b.id);
  }

  /**
   * Backends named by a balancer event (ejected, restored, down, up,
   * draining …) at or after `sinceMs`: the dashboard lists them first in a
   * large fleet. Dropped messages are left out: a forger can name any backend.
   */
  backendsNamedSince(sinceMs: number): Set<string> {
    const ids = new Set<string>();
    for (const e of this.events.all()) {
      if (e.backend !== null && e.lastAt >= sinceMs) ids.add(e.backend);
    }
    return ids;
  }

  /** Entries added or updated after `seq`, oldest first. */
  since(seq: number): DashboardEvent[] {
    return this.all().filter((e) => e.seq > seq);
  }

  /**
   * Records `count` occurrences under `key`: folded into the open entry of
   * that key if it is younger than coalesceMs, else a new entry.
   */
  coalesce(
    key: string,
    count: number,
    make: (total: number) => Pick<DashboardEvent, 'level' | 'event' | 'backend' | 'code' | 'msg'>,
  ): void {
    const nowMs = this.now();
    const entry = this.open.get(key);
    if (entry !== undefined && nowMs - entry.at < this.coalesceMs) {
      entry.count += count;
      entry.lastAt = nowMs;
      entry.seq = ++this.seqCounter;
      Object.assign(entry, make(entry.count));
      return;
    }
    // Keys are error codes and shed reasons (bounded sets), but a bound costs nothing.
    if (entry === undefined && this.open.size >= 256) this.open.clear();
    this.open.set(key, this.push({ ...make(count), count }, true));
  }

  close(): void {
    this.detach();
  }

  private onEvent(name: keyof BalancerEvents, data: unknown): void {
    if (name === 'invalid-message') {
      const { code, backendId } = data as BalancerEvents['invalid-message'][0];
      this.coalesce(`drop:${code}`, 1, (n) => ({
        level: 'warn',
        event: 'invalid-message',
        backend: backendId ?? null,
        code,
        msg: `dropped ${n} message${n === 1 ? '' : 's'} (${code}), last from ${backendId ?? 'unknown'}`,
      }));
      return;
    }
    const r = describeEvent(name, data as never);
    const backend = typeof r.fields.backend === 'string' ? r.fields.backend : null;
    this.push({ level: r.level, event: name, backend, code: null, msg: r.msg, count: 1 }, false);
  }

  private push(
    e: Omit<DashboardEvent, 'id' | 'seq' | 'at' | 'lastAt'>,
    folded: boolean,
  ): DashboardEvent {
    const nowMs = this.now();
    const entry: DashboardEvent = {
      id: this.nextId++,
      seq: ++this.seqCounter,
      at: nowMs,
      lastAt: nowMs,
      ...e,
    };
    const evicted = (folded ? this.folded : this.events).push(entry);
    if (evicted !== undefined && folded) {
      for (const [k, v] of this.open) if (v === evicted) this.open.delete(k);
    }
    return entry;
  }
}
