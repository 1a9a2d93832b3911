/**
 * This gateway's requests in flight on one backend (the local part of `o` in
 * load/endpoint-load.ts), and the listeners that follow it (least-in-flight
 * keeps a heap instead of scanning every endpoint per pick).
 */
export class InFlight {
  private n = 0;
  private listeners: Array<() => void> = [];

  get count(): number {
    return this.n;
  }

  start(): void {
    this.n++;
    this.notify();
  }

  /** One fewer, never below zero; the caller notifies once its other updates are done. */
  end(): void {
    if (this.n > 0) this.n--;
  }

  watch(listener: () => void): () => void {
    this.listeners = [...this.listeners, listener];
    return () => {
      this.listeners = this.listeners.filter((l) => l !== listener);
    };
  }

  clear(): void {
    this.listeners = [];
  }

  notify(): void {
    const ls = this.listeners;
    for (let i = 0; i < ls.length; i++) ls[i]!();
  }
}
