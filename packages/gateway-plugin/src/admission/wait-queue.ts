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
      const onExpire = waiter.expire;
      this.finish(waiter);
      onExpire();
    }, this.timeoutMs);
    waiter.timer.unref();
    this.items.push(waiter);
    this.live++;
    return waiter;
  }

  /** Removes a waiter (its client went away). */
  cancel(waiter: Waiter): void {
    if (!waiter.done) this.finish(waiter);
  }

  /**
   * A waiter leaves (served, expired or cancelled): it lets go of its closures and timer,
   * which hold its whole request (the flow, its sockets, a body buffered for retries);
   * and the last one to leave empties the array. Finished waiters were only marked, and
   * only a drain dropped them, which runs while some waiter is live: after a saturated
   * spell whose waiters all timed out or left, every one of them stayed, requests and
   * bodies with it, until the next one (642 after 1,138 queued requests, 10 MB).
   */
  private finish(w: Waiter): void {
    w.done = true;
    this.live--;
    clearTimeout(w.timer);
    w.timer = undefined;
    w.retry = NOT_AGAIN;
    w.expire = NOTHING;
    if (this.live === 0 && !this.draining) {
      this.items.length = 0;
      this.head = 0;
    }
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
        if (!w.done) this.finish(w);
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
    const items = this.items.splice(this.head);
    this.head = 0;
    for (const w of items) {
      if (w.done) continue;
      const onExpire = w.expire;
      this.finish(w);
      onExpire();
    }
    this.items.length = 0;
    this.live = 0;
  }

  /** Waiters the array still holds, live or finished and not yet dropped (tests read it). */
  get retained(): number {
    return this.items.length - this.head;
  }
}

const NOT_AGAIN = (): boolean => false;
const NOTHING = (): void => {};
