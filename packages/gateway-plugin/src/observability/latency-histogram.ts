/**
 * A per-backend latency histogram built for the request path: `observe` is a
 * bucket search over a dozen bounds and three additions into a Float64Array,
 * with no allocation. prom-client's own Histogram hashes and validates its
 * label object and allocates a closure on every observation (about 0.5 µs);
 * this keeps the same exposition (`_bucket{le}`, `_sum`, `_count`) by
 * implementing the metric interface a prom-client Registry reads (`get()`).
 */
import type { Registry } from 'prom-client';
import {
  SCRAPE_CHUNK_BACKENDS,
  familyHeader,
  formatValue,
  labelText,
  renderFamily,
  type DirectlyRendered,
  type Scrape,
} from './exposition';

interface Series {
  /** Non-cumulative counts per bucket; the last slot is +Inf. */
  counts: Float64Array;
  sum: number;
  count: number;
}

/**
 * A prom-client-compatible histogram with the label `backend`, and `service`
 * for a balancer that has one (several balancers share one histogram then).
 */
export class BackendLatencyHistogram implements DirectlyRendered {
  readonly type = 'histogram';
  readonly labelNames = ['service', 'backend'] as const;
  readonly aggregator = 'sum';
  private readonly series = new Map<string, Series & SeriesLabels>();
  /** `{le: bound}` per bucket, shared by every series (prom-client's sample labels). */
  private readonly leLabels: readonly { le: number | string }[];
  /** `name_bucket{le="bound",` per bucket, the start of each bucket line. */
  private readonly bucketPrefixes: readonly string[];

  constructor(
    readonly name: string,
    readonly help: string,
    private readonly bounds: readonly number[],
    registry: Registry,
  ) {
    for (let i = 1; i < bounds.length; i++) {
      if (!(bounds[i]! > bounds[i - 1]!)) throw new RangeError('bucket bounds must increase');
    }
    this.leLabels = [...bounds.map((le) => ({ le })), { le: '+Inf' }];
    this.bucketPrefixes = this.leLabels.map(({ le }) => `${name}_bucket{le="${le}",`);
    // A Registry stores and reads any object with name/help/type/get(); the
    // cast is only because its typings list prom-client's own classes.
    registry.registerMetric(this as unknown as Parameters<Registry['registerMetric']>[0]);
  }

  /** The series of one backend, created on first use; keep it to observe without a lookup. */
  seriesOf(backendId: string, service?: string): Series {
    const key = seriesKey(backendId, service);
    let s = this.series.get(key);
    if (s === undefined) {
      const labels: Record<string, string> =
        service === undefined ? { backend: backendId } : { service, backend: backendId };
      s = {
        counts: new Float64Array(this.bounds.length + 1),
        sum: 0,
        count: 0,
        labels,
        labelText: labelText(labels),
      };
      this.series.set(key, s);
    }
    return s;
  }

  /** A backend that left: its series goes from the exposition. */
  remove(backendId: string, service?: string): void {
    this.series.delete(seriesKey(backendId, service));
  }

  observe(series: Series, value: number): void {
    const bounds = this.bounds;
    let i = 0;
    while (i < bounds.length && value > bounds[i]!) i++;
    series.counts[i]! += 1;
    series.sum += value;
    series.count += 1;
  }

  /** Zeroes every series in place: callers keep their series objects (Registry.resetMetrics()). */
  reset(): void {
    for (const s of this.series.values()) {
      s.counts.fill(0);
      s.sum = 0;
      s.count = 0;
    }
  }

  async get(): Promise<{
    name: string;
    help: string;
    type: 'histogram';
    aggregator: 'sum';
    values: { labels: Record<string, string | number>; value: number; metricName: string }[];
  }> {
    const values: { labels: Record<string, string | number>; value: number; metricName: string }[] =
      [];
    for (const s of this.series.values()) {
      const labels = s.labels;
      let cumulative = 0;
      for (let i = 0; i <= this.bounds.length; i++) {
        cumulative += s.counts[i]!;
        const le = i < this.bounds.length ? this.bounds[i]! : '+Inf';
        values.push({
          labels: { le, ...labels },
          value: cumulative,
          metricName: `${this.name}_bucket`,
        });
      }
      values.push({ labels: { ...labels }, value: s.sum, metricName: `${this.name}_sum` });
      values.push({ labels: { ...labels }, value: s.count, metricName: `${this.name}_count` });
    }
    return { name: this.name, help: this.help, type: 'histogram', aggregator: 'sum', values };
  }

  /**
   * What `registry.metrics()` formats (it prefers this to `get()`): the
   * series' own labels as prom-client's `sharedLabels`, one object per series
   * that the registry flattens once and caches, and the shared `{le}` objects,
   * instead of a new label object per line. Same text as from `get()`.
   */
  async getForPromString(): Promise<{
    name: string;
    help: string;
    type: 'histogram';
    aggregator: 'sum';
    values: {
      labels: object;
      sharedLabels: Record<string, string>;
      value: number;
      metricName: string;
    }[];
  }> {
    const values: {
      labels: object;
      sharedLabels: Record<string, string>;
      value: number;
      metricName: string;
    }[] = [];
    const bucket = `${this.name}_bucket`;
    const sum = `${this.name}_sum`;
    const count = `${this.name}_count`;
    for (const s of this.series.values()) {
      const sharedLabels = s.labels;
      let cumulative = 0;
      for (let i = 0; i <= this.bounds.length; i++) {
        cumulative += s.counts[i]!;
        values.push({
          labels: this.leLabels[i]!,
          sharedLabels,
          value: cumulative,
          metricName: bucket,
        });
      }
      values.push({ labels: NO_LABELS, sharedLabels, value: s.sum, metricName: sum });
      values.push({ labels: NO_LABELS, sharedLabels, value: s.count, metricName: count });
    }
    return { name: this.name, help: this.help, type: 'histogram', aggregator: 'sum', values };
  }

  /**
   * The family's text written directly, a part per SCRAPE_CHUNK_BACKENDS
   * series with a pause after each.
   */
  async *[renderFamily](scrape: Scrape): AsyncGenerator<string> {
    let lines = [familyHeader(this.name, this.help, this.type)];
    const prefixes = this.bucketPrefixes;
    const sum = `${this.name}_sum{`;
    const count = `${this.name}_count{`;
    let n = 0;
    // The series as the scrape began, each written only while it is still the one its
    // backend has: iterated live, a backend forgotten during a pause and heard again (an
    // answer of a request still on it) was visited again at the end, and written twice.
    const keys = [...this.series.keys()];
    for (const key of keys) {
      const s = this.series.get(key);
      if (s === undefined) continue;
      const labels = s.labelText;
      let cumulative = 0;
      for (let i = 0; i < prefixes.length; i++) {
        cumulative += s.counts[i]!;
        lines.push(`${prefixes[i]}${labels}} ${formatValue(cumulative)}`);
      }
      lines.push(`${sum}${labels}} ${formatValue(s.sum)}`);
      lines.push(`${count}${labels}} ${formatValue(s.count)}`);
      if (++n % SCRAPE_CHUNK_BACKENDS === 0) {
        yield `${lines.join('\n')}\n`;
        lines = [];
        await scrape.pause();
      }
    }
    if (lines.length > 0) yield `${lines.join('\n')}\n`;
  }
}

const NO_LABELS = Object.freeze({});

interface SeriesLabels {
  /** `{backend}` or `{service, backend}`, as get() and the registry read them. */
  labels: Record<string, string>;
  /** The same labels escaped and joined: `service="users",backend="u1"`. */
  labelText: string;
}

function seriesKey(backendId: string, service: string | undefined): string {
  return service === undefined ? backendId : `${service}\u0000${backendId}`;
}
