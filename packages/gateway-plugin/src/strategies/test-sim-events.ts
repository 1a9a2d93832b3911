/**
 * The event queue of the seeded queueing simulations (queueing-sim.test.ts,
 * cpu-sim.test.ts): simulated time, no clock.
 */
/** Min-heap of events by time. */
export class Events {
  private t: number[] = [];
  private f: Array<() => void> = [];
  push(at: number, fn: () => void): void {
    this.t.push(at);
    this.f.push(fn);
    let i = this.t.length - 1;
    while (i > 0) {
      const p = (i - 1) >> 1;
      if (this.t[p]! <= this.t[i]!) break;
      this.swap(i, p);
      i = p;
    }
  }
  pop(): [number, () => void] | undefined {
    if (this.t.length === 0) return undefined;
    const top: [number, () => void] = [this.t[0]!, this.f[0]!];
    const lastT = this.t.pop()!;
    const lastF = this.f.pop()!;
    if (this.t.length > 0) {
      this.t[0] = lastT;
      this.f[0] = lastF;
      let i = 0;
      for (;;) {
        const l = 2 * i + 1;
        const r = l + 1;
        let m = i;
        if (l < this.t.length && this.t[l]! < this.t[m]!) m = l;
        if (r < this.t.length && this.t[r]! < this.t[m]!) m = r;
        if (m === i) break;
        this.swap(i, m);
        i = m;
      }
    }
    return top;
  }
  private swap(a: number, b: number): void {
    [this.t[a], this.t[b]] = [this.t[b]!, this.t[a]!];
    [this.f[a], this.f[b]] = [this.f[b]!, this.f[a]!];
  }
}
