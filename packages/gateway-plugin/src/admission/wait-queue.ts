/**
 * The bounded wait for a free backend when every eligible one is saturated.
 * Bounded twice, by length and by time (DESIGN: "nothing unbounded"): a full
 * queue or an expired wait answers 503 + Retry-After instead of letting
 * overload turn into an outage of ever-growing latency.
 *
 * FIFO: the oldest waiter gets the first free slot. The balancer calls
 * `drain(tryDispatch)` whenever a request ends or the eligible set changes.
 */
export interface Waiter {
  /** Called when the waiter may try again; returns false if it still cannot go. */
  retry: () => boolean;
  expire: () => void;
  timer: NodeJS.Timeout | undefined;
  done: boolean;
}

export class WaitQueue {
  private readonly items: Waiter[] = [];
  private head = 0;
  /** Waiters not yet done (the array also holds finished ones until compaction). */
  private live = 0;

  constructor(
    private readonly size: number,
    private readonly timeoutMs: number,
  ) {}

  get length(): number {
    return this.live;
  }

  /** Queues a waiter; returns undefined when the queue is full. */
  enqueue(retry: () => boolean, expire: () => void): Waiter | undefined {
    if (this.length >= this.size) return undefined;
    const waiter: Waiter = { retry, expire, timer: undefined, done: false };
    waiter.timer = setTimeout(() => {
      if (waiter.done) return;
      waiter.done = true;
      this.live--;
      expire();
    }, this.timeoutMs);
    waiter.timer.unref();
    this.items.push(waiter);
    this.live++;
    return waiter;
  }

  /** Removes a waiter (its client went away). */
  cancel(waiter: Waiter): void {
    if (waiter.done) return;
    waiter.done = true;
    this.live--;
    clearTimeout(waiter.timer);
  }

  /** drain() is running: a call from inside it (a retry whose attempt ended at once) waits. */
  private draining = false;
  /** drain() was called from inside drain(): the outer one goes round again. */
  private again = false;

  /**
   * Lets waiters go, oldest first, until one still cannot. Not re-entrant: a
   * waiter's retry may end an attempt synchronously (a header Node refuses
   * to send), and the end of an attempt drains the queue. Called from inside
   * the loop, drain() ran the same head waiter again, which failed again, and
   * so on until the stack overflowed; now the outer loop goes round once more.
   */
  drain(): void {
    if (this.draining) {
      this.again = true;
      return;
    }
    this.draining = true;
    try {
      do {
        this.again = false;
        this.drainOnce();
      } while (this.again);
    } finally {
      this.draining = false;
    }
  }

  private drainOnce(): void {
    while (this.head < this.items.length) {
      const w = this.items[this.head]!;
      if (!w.done) {
        if (!w.retry()) break;
        // retry() may have finished the waiter itself (its client went away).
        if (!w.done) {
          w.done = true;
          this.live--;
        }
        clearTimeout(w.timer);
      }
      this.head++;
    }
    this.compact();
  }

  private compact(): void {
    // Drop finished waiters from the front, and compact the array now and then
    // so a long-lived queue does not keep a growing dead prefix.
    while (this.head < this.items.length && this.items[this.head]!.done) this.head++;
    if (this.head > 1024 && this.head * 2 > this.items.length) {
      this.items.splice(0, this.head);
      this.head = 0;
    } else if (this.head === this.items.length) {
      this.items.length = 0;
      this.head = 0;
    }
  }

  /** Expires every waiter (close()). */
  close(): void {
    for (let i = this.head; i < this.items.length; i++) {
      const w = this.items[i]!;
      if (w.done) continue;
      w.done = true;
      clearTimeout(w.timer);
      w.expire();
    }
    this.items.length = 0;
    this.head = 0;
    this.live = 0;
  }
}
