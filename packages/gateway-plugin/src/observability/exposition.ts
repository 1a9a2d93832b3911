/**
 * The Prometheus text of a registry, rendered without blocking the event loop
 * for long. prom-client's `registry.metrics()` formats every sample through
 * one generic path (a label object per line, each label escaped, every line
 * in one synchronous run): at 1,000 backends that was 1.7 MB and 130-350 ms
 * in one block per scrape. Our per-backend families (the latency histogram
 * and the snapshot gauges) implement `renderFamily` instead: their lines are
 * written from label strings escaped once per backend, and they pause for the
 * event loop every `SCRAPE_CHUNK_BACKENDS` backends. Other metrics of the
 * registry (the counters, an application's own) go through prom-client.
 *
 * The text is the one `registry.metrics()` returns, sample for sample.
 */
import type { Registry } from 'prom-client';

/** How many backends a family writes between two pauses for the event loop. */
export const SCRAPE_CHUNK_BACKENDS = 250;

/** One scrape: the snapshots its families share, and a way to let the event loop run. */
export interface Scrape {
  /** Per-scrape memo (e.g. the balancers' snapshots, taken once for every gauge family). */
  readonly memo: Map<unknown, unknown>;
  /** Resolves on the next turn of the event loop (setImmediate). */
  pause(): Promise<void>;
}

/** Key of the method a metric renders its own exposition with. */
export const renderFamily: unique symbol = Symbol('loadwise.renderFamily');

export interface DirectlyRendered {
  /** The family's text as `registry.getMetricsAsString()` returns it: HELP, TYPE, samples, no final newline. */
  [renderFamily](scrape: Scrape): Promise<string>;
}

function isDirectlyRendered(metric: unknown): metric is DirectlyRendered {
  return (
    typeof metric === 'object' &&
    metric !== null &&
    typeof (metric as Partial<DirectlyRendered>)[renderFamily] === 'function'
  );
}

/** A label value as prom-client escapes it: backslash, newline, double quote. */
export function escapeLabelValue(value: string): string {
  return value.replace(/\\/g, '\\\\').replace(/\n/g, '\\n').replace(/"/g, '\\"');
}

/** HELP text as prom-client escapes it: backslash and newline. */
export function escapeHelp(text: string): string {
  return text.replace(/\\/g, '\\\\').replace(/\n/g, '\\n');
}

/** A sample value as prom-client writes it (its NaN is spelled `Nan`; Prometheus parses both). */
export function formatValue(value: number): string {
  if (Number.isNaN(value)) return 'Nan';
  if (!Number.isFinite(value)) return value < 0 ? '-Inf' : '+Inf';
  return `${value}`;
}

/** `name="value",...` for the given labels, in their order, escaped. */
export function labelText(labels: Readonly<Record<string, string>>): string {
  let text = '';
  for (const [name, value] of Object.entries(labels)) {
    text += `${text === '' ? '' : ','}${name}="${escapeLabelValue(value)}"`;
  }
  return text;
}

/** The `# HELP` and `# TYPE` lines of a family. */
export function familyHeader(name: string, help: string, type: string): string {
  return `# HELP ${escapeHelp(name)} ${escapeHelp(help)}\n# TYPE ${escapeHelp(name)} ${type}`;
}

const pause = (): Promise<void> => new Promise((resolve) => setImmediate(resolve));

/**
 * Whether the registry adds nothing to a family's own text: the Prometheus
 * format (OpenMetrics renames counters and ends with `# EOF`) and no default
 * labels. prom-client has no getter for its default labels, so this reads
 * its field and, when it is not there (another version), says no.
 */
function plainRegistry(registry: Registry): boolean {
  if (!String(registry.contentType).startsWith('text/plain')) return false;
  const defaults = (registry as unknown as { _defaultLabels?: unknown })._defaultLabels;
  return typeof defaults === 'object' && defaults !== null && Object.keys(defaults).length === 0;
}

async function render(registry: Registry): Promise<string> {
  if (!plainRegistry(registry)) return registry.metrics();
  const scrape: Scrape = { memo: new Map(), pause };
  const parts: string[] = [];
  for (const metric of registry.getMetricsAsArray()) {
    if (isDirectlyRendered(metric)) {
      parts.push(await metric[renderFamily](scrape));
      continue;
    }
    // prom-client formats the others (the counters, an application's own) in
    // one block each: a pause between two keeps those blocks apart.
    await scrape.pause();
    // One removed from the registry during a pause is left out, as it would be after.
    if ((registry.getSingleMetric(metric.name) as unknown) !== metric) continue;
    parts.push(await registry.getSingleMetricAsString(metric.name));
  }
  // registry.metrics(): families joined by a blank line, one final newline.
  return `${parts.join('\n\n')}\n`;
}

const inProgress = new WeakMap<Registry, Promise<string>>();

/**
 * The registry's text, as `registry.metrics()` returns it, rendered in
 * chunks with pauses for the event loop. Scrapes that arrive while one is
 * being rendered share its text.
 */
export function renderMetrics(registry: Registry): Promise<string> {
  let text = inProgress.get(registry);
  if (text === undefined) {
    text = render(registry).finally(() => inProgress.delete(registry));
    inProgress.set(registry, text);
  }
  return text;
}
