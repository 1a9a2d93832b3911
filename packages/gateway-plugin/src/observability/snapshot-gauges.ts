/**
 * The gauges read from balancer snapshots at scrape time (in-flight, report
 * age, state, traffic share, panic, ...). They were prom-client Gauges reset
 * and set again on every scrape: 10 label objects hashed per backend, then
 * formatted line by line. Here a gauge family holds no values at all; a
 * scrape takes every balancer's snapshot once and each family writes its
 * lines from it, with the label text of each backend escaped once and kept
 * (`BackendLabelCache`). `get()` gives prom-client's shape for
 * `getMetricsAsJSON()`; `getForPromString()` lets `registry.metrics()` format
 * the same lines from cached label objects; `renderFamily` writes them
 * directly (exposition.ts).
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
import { BACKEND_STATE_NAMES, type BackendSnapshot, type BalancerSnapshot } from './snapshot';

type Labels = Record<string, string>;

/** The labels of one backend of one balancer, built once and kept while it stays in the snapshots. */
export interface BackendLabels {
  /** `{service?, backend}` (never handed out to be changed). */
  readonly labels: Labels;
  /** `service="s",backend="b"`, escaped. */
  readonly text: string;
  /** Per BACKEND_STATE_NAMES entry: `{service?, backend, state}` and its text. */
  readonly stateLabels: readonly Labels[];
  readonly stateText: readonly string[];
  /** The scrape that last saw this backend (for pruning). */
  seen: number;
}

/** Label strings of one balancer: its `service` label, and its backends' labels by id. */
export class BackendLabelCache {
  readonly labels: Labels;
  readonly text: string;
  private readonly byId = new Map<string, BackendLabels>();
  private scrapes = 0;

  constructor(readonly service: string | undefined) {
    this.labels = service === undefined ? {} : { service };
    this.text = labelText(this.labels);
  }

  /**
   * The labels of every backend of a snapshot, in its order; ids no longer in
   * it are dropped, so a fleet that churns does not grow the cache.
   */
  of(backends: readonly BackendSnapshot[]): BackendLabels[] {
    const scrape = ++this.scrapes;
    const out: BackendLabels[] = new Array<BackendLabels>(backends.length);
    for (let i = 0; i < backends.length; i++) {
      const id = backends[i]!.id;
      let entry = this.byId.get(id);
      if (entry === undefined) {
        entry = this.create(id);
        this.byId.set(id, entry);
      }
      entry.seen = scrape;
      out[i] = entry;
    }
    if (this.byId.size > backends.length) {
      for (const [id, entry] of this.byId) if (entry.seen !== scrape) this.byId.delete(id);
    }
    return out;
  }

  private create(id: string): BackendLabels {
    const labels: Labels = { ...this.labels, backend: id };
    const stateLabels = BACKEND_STATE_NAMES.map((state) => ({ ...labels, state }));
    return {
      labels,
      text: labelText(labels),
      stateLabels,
      stateText: stateLabels.map(labelText),
      seen: 0,
    };
  }
}

/** One balancer's snapshot in a scrape, with its label strings. */
export interface MemberScrape {
  snapshot: BalancerSnapshot;
  cache: BackendLabelCache;
  /** Labels of snapshot.backends, index for index. */
  backends: BackendLabels[];
}

/** Where the gauge families of a registry read the scrape's snapshots. */
export interface SnapshotSourceOfScrape {
  /** Every balancer's snapshot for this scrape, taken once for all families (memo in `scrape`, or per tick without). */
  snapshots(scrape?: Scrape): readonly MemberScrape[];
}

export type GaugeSpec =
  /** One series per backend; `undefined` leaves the backend out (e.g. no report yet). */
  | { kind: 'backend'; read: (b: BackendSnapshot) => number | undefined }
  /** One series per backend and BACKEND_STATE_NAMES entry: 1 for its state, 0 for the others. */
  | { kind: 'state' }
  /** One series per balancer. */
  | { kind: 'gateway'; read: (s: BalancerSnapshot) => number };

interface Sample {
  labels: Labels;
  value: number;
}

const NO_LABELS = Object.freeze({});

/** A gauge family whose values come from the scrape's snapshots; registered like a prom-client metric. */
export class SnapshotGauge implements DirectlyRendered {
  readonly type = 'gauge';
  readonly aggregator = 'sum';
  readonly labelNames: readonly string[];

  constructor(
    readonly name: string,
    readonly help: string,
    private readonly spec: GaugeSpec,
    private readonly source: SnapshotSourceOfScrape,
    registry: Registry,
  ) {
    this.labelNames =
      spec.kind === 'backend'
        ? ['service', 'backend']
        : spec.kind === 'state'
          ? ['service', 'backend', 'state']
          : ['service'];
    // A Registry stores and reads any object with name/help/type/get() (see latency-histogram.ts).
    registry.registerMetric(this as unknown as Parameters<Registry['registerMetric']>[0]);
  }

  /**
   * Calls `sample(labels, text, value)` for the series of one balancer's
   * backends `from` to `to` (its one series for a gateway gauge), in order.
   */
  private forEachIn(
    m: MemberScrape,
    from: number,
    to: number,
    sample: (labels: Labels, text: string, value: number) => void,
  ): void {
    const spec = this.spec;
    if (spec.kind === 'gateway') {
      sample(m.cache.labels, m.cache.text, spec.read(m.snapshot));
      return;
    }
    const backends = m.snapshot.backends;
    for (let i = from; i < to; i++) {
      const b = backends[i]!;
      const l = m.backends[i]!;
      if (spec.kind === 'backend') {
        const v = spec.read(b);
        if (v !== undefined) sample(l.labels, l.text, v);
      } else {
        for (let j = 0; j < BACKEND_STATE_NAMES.length; j++)
          sample(l.stateLabels[j]!, l.stateText[j]!, b.state === BACKEND_STATE_NAMES[j] ? 1 : 0);
      }
    }
  }

  private forEach(sample: (labels: Labels, text: string, value: number) => void): void {
    for (const m of this.source.snapshots()) this.forEachIn(m, 0, m.backends.length, sample);
  }

  /** prom-client's shape (a fresh label object per series), for getMetricsAsJSON(). */
  async get(): Promise<{
    name: string;
    help: string;
    type: 'gauge';
    aggregator: 'sum';
    values: Sample[];
  }> {
    const values: Sample[] = [];
    this.forEach((labels, _text, value) => values.push({ labels: { ...labels }, value }));
    return { name: this.name, help: this.help, type: this.type, aggregator: 'sum', values };
  }

  /** For registry.metrics(): the cached label objects as `sharedLabels`, which it flattens once each. */
  async getForPromString(): Promise<{
    name: string;
    help: string;
    type: 'gauge';
    aggregator: 'sum';
    values: { labels: object; sharedLabels: Labels; value: number }[];
  }> {
    const values: { labels: object; sharedLabels: Labels; value: number }[] = [];
    this.forEach((sharedLabels, _text, value) =>
      values.push({ labels: NO_LABELS, sharedLabels, value }),
    );
    return { name: this.name, help: this.help, type: this.type, aggregator: 'sum', values };
  }

  /** Nothing to zero: the values are read from the snapshots at every scrape (Registry.resetMetrics()). */
  reset(): void {}

  /** The family's text written directly, a part per SCRAPE_CHUNK_BACKENDS backends with a pause after each. */
  async *[renderFamily](scrape: Scrape): AsyncGenerator<string> {
    let lines = [familyHeader(this.name, this.help, this.type)];
    const name = this.name;
    const gateway = this.spec.kind === 'gateway';
    const sample = (_labels: Labels, text: string, value: number): void => {
      lines.push(`${name}${text === '' ? '' : `{${text}}`} ${formatValue(value)}`);
    };
    let written = 0;
    for (const m of this.source.snapshots(scrape)) {
      if (gateway) {
        this.forEachIn(m, 0, 0, sample);
        continue;
      }
      // Chunks of backends, with a pause for the event loop between two.
      for (let from = 0; from < m.backends.length; from += SCRAPE_CHUNK_BACKENDS) {
        const to = Math.min(from + SCRAPE_CHUNK_BACKENDS, m.backends.length);
        this.forEachIn(m, from, to, sample);
        written += to - from;
        if (written >= SCRAPE_CHUNK_BACKENDS) {
          written = 0;
          // A block with no sample (its backends have not reported) yields nothing: a
          // lone newline made the text differ from registry.metrics()'.
          if (lines.length > 0) yield `${lines.join('\n')}\n`;
          lines = [];
          await scrape.pause();
        }
      }
    }
    if (lines.length > 0) yield `${lines.join('\n')}\n`;
  }
}
