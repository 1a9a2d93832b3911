/**
 * The Prometheus text of a registry, rendered and written without blocking
 * the event loop for long. prom-client's `registry.metrics()` formats every
 * sample through one generic path (a label object per line, each label
 * escaped, every line in one synchronous run): at 1,000 backends that was 1.7
 * MB and 130-350 ms in one block per scrape. Our per-backend families (the
 * latency histogram and the snapshot gauges) implement `renderFamily`
 * instead: their lines are written from label strings escaped once per
 * backend, in parts of `SCRAPE_CHUNK_BACKENDS` backends with a pause for the
 * event loop between two. Other metrics of the registry (the counters, an
 * application's own) go through prom-client, one family per part.
 *
 * The parts are handed out as they are rendered, so the handler writes them
 * to the socket one by one (a single `res.end()` of the 17 MB text of 10,000
 * backends blocked the loop 23-56 ms). Joined, they are the text
 * `registry.metrics()` returns, sample for sample.
 */
import { Registry } from 'prom-client';

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
  /**
   * The family's text as `registry.getMetricsAsString()` returns it (HELP,
   * TYPE, samples), in parts of whole lines, every line ending with a newline;
   * the family pauses (`scrape.pause()`) between two parts.
   */
  [renderFamily](scrape: Scrape): AsyncIterable<string>;
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
 * The default labels of a Prometheus-format registry, or undefined for an
 * OpenMetrics one (prom-client renames its counters and ends it with `# EOF`:
 * left to `registry.metrics()`). prom-client has no getter for its default
 * labels, so this reads its field and, when it is not there (another
 * version), says undefined too.
 */
function defaultLabelsOf(registry: Registry): Readonly<Record<string, string>> | undefined {
  if (!String(registry.contentType).startsWith('text/plain')) return undefined;
  const defaults = (registry as unknown as { _defaultLabels?: unknown })._defaultLabels;
  return typeof defaults === 'object' && defaults !== null
    ? (defaults as Record<string, string>)
    : undefined;
}

/** What a Registry reads of a metric: prom-client's `MetricObject` and its `get()`. */
interface RegisteredMetric {
  name: string;
  help: string;
  type: string;
  aggregator: string;
  get(): Promise<{ name: string }>;
}

/**
 * The name `metric` is registered under in `registry`, found by identity;
 * undefined once it has left the registry. Not always `metric.name`: an
 * OpenMetrics registry that holds the same counter (an application's
 * `Registry.merge([...])` set to OpenMetrics) renames it in place while it
 * renders: prom-client 15's `metrics()` sets `counter.name` to its name
 * without `_total`, for good. Looked up by that name, our counters were gone
 * from the next scrape.
 */
export function registeredName(
  registry: Registry,
  metric: { name: string; type: string },
): string | undefined {
  if ((registry.getSingleMetric(metric.name) as unknown) === metric) return metric.name;
  if (metric.type === 'counter') {
    const registered = `${metric.name}_total`;
    if ((registry.getSingleMetric(registered) as unknown) === metric) return registered;
  }
  return undefined;
}

/**
 * One family's text as prom-client formats it in `registry` (no final
 * newline), under the name it is registered under; undefined when it has left.
 */
async function familyText(
  registry: Registry,
  metric: RegisteredMetric,
  defaults: Readonly<Record<string, string>>,
): Promise<string | undefined> {
  const name = registeredName(registry, metric);
  if (name === undefined) return undefined;
  if (name === metric.name) return registry.getSingleMetricAsString(name);
  // Renamed by an OpenMetrics registry: formatted under its registered name by a
  // registry of this one's format and default labels, the counter itself left as
  // it is (the other registry renames it again at each of its scrapes anyway).
  const view = {
    name,
    help: metric.help,
    type: metric.type,
    aggregator: metric.aggregator,
    get: async () => ({ ...(await metric.get()), name }),
  };
  const scratch = new Registry();
  scratch.setDefaultLabels({ ...defaults });
  scratch.registerMetric(view as unknown as Parameters<Registry['registerMetric']>[0]);
  return scratch.getSingleMetricAsString(name);
}

/** Most characters of one part cut from a text prom-client formatted whole. */
const MAX_PART_CHARS = 1 << 18;

/** `text` in parts of whole lines of at most about MAX_PART_CHARS. */
function* linesOf(text: string): Generator<string> {
  let from = 0;
  while (text.length - from > MAX_PART_CHARS) {
    const cut = text.lastIndexOf('\n', from + MAX_PART_CHARS);
    const to = cut >= from ? cut + 1 : text.indexOf('\n', from + MAX_PART_CHARS) + 1 || text.length;
    yield text.slice(from, to);
    from = to;
  }
  if (from < text.length) yield text.slice(from);
}

async function* render(registry: Registry): AsyncGenerator<string> {
  const defaults = defaultLabelsOf(registry);
  if (defaults === undefined) {
    yield* linesOf(await registry.metrics());
    return;
  }
  const metrics = registry.getMetricsAsArray() as unknown as RegisteredMetric[];
  if (Object.keys(defaults).length > 0) {
    // prom-client adds the default labels: every family through it, all in one
    // turn of the event loop as in registry.metrics() (the gauges read one
    // snapshot per turn then).
    const texts: string[] = [];
    for (const metric of metrics) {
      const text = await familyText(registry, metric, defaults);
      if (text !== undefined) texts.push(text);
    }
    yield* linesOf(`${texts.join('\n\n')}\n`);
    return;
  }
  const scrape: Scrape = { memo: new Map(), pause };
  // registry.metrics(): families joined by a blank line, one final newline.
  let separator = '';
  for (const metric of metrics) {
    if (isDirectlyRendered(metric)) {
      for await (const part of metric[renderFamily](scrape)) {
        yield separator + part;
        separator = '';
      }
      separator = '\n';
      continue;
    }
    // prom-client formats the others (the counters, an application's own) in
    // one block each: a pause between two keeps those blocks apart. One
    // removed from the registry during a pause is left out, as it would be after.
    await scrape.pause();
    const text = await familyText(registry, metric, defaults);
    if (text === undefined) continue;
    yield `${separator}${text}\n`;
    separator = '\n';
  }
  if (separator === '') yield '\n';
}

/**
 * Characters of renders that a handler's scrapes in progress (reading a
 * render, or writing it to a client that has not taken it all) may hold: a
 * scrape that would need a new render past it gets 503. One that joins the
 * render in progress costs no render more, so scrapes that arrive together
 * hold one. The text is ASCII but for odd label values, so a character is
 * about a byte (V8 keeps such strings one byte a character). Before, every
 * scrape whose client did not read pinned a whole render for as long as its
 * connection stayed open: 20 of them at 15,000 backends (5.66 MB of text),
 * each arriving after the last render ended, +97 MB of heap and +156 MB of
 * RSS; 40, +216 and +334 MB. The bound of the status bodies
 * (MAX_HELD_STATUS_BYTES), for the same reason: it holds two whole texts of
 * 10,000 backends under traffic (17 MB each), so the scrapes of a pair of
 * Prometheus servers that are both slow at once are served, and the two
 * endpoints together hold 64 MiB at most, and the one render and the one
 * body being made.
 */
export const MAX_HELD_METRICS_BYTES = 32 * 1024 * 1024;

/** A render in progress, its parts kept for the scrapes that join it late. */
interface SharedRender {
  readonly parts: string[];
  /** Characters of its parts. */
  bytes: number;
  /** Scrapes still reading it; when none is left, the render stops. */
  readers: number;
  done: boolean;
  failed: boolean;
  error: unknown;
  /** Called when a part is added or the render ends. */
  readonly waiting: Set<() => void>;
}

const inProgress = new WeakMap<Registry, SharedRender>();

function start(registry: Registry): SharedRender {
  const shared: SharedRender = {
    parts: [],
    bytes: 0,
    readers: 0,
    done: false,
    failed: false,
    error: undefined,
    waiting: new Set(),
  };
  const wake = (): void => {
    for (const resolve of shared.waiting) resolve();
    shared.waiting.clear();
  };
  const run = async (): Promise<void> => {
    const parts = render(registry);
    try {
      for (;;) {
        const next = await parts.next();
        if (next.done) break;
        shared.parts.push(next.value);
        shared.bytes += next.value.length;
        wake();
        if (shared.readers === 0) {
          // Every scrape left (clients gone): no one to write for. One that comes
          // now starts a render of its own, not this cut one.
          inProgress.delete(registry);
          await parts.return(undefined);
          break;
        }
      }
    } catch (err) {
      shared.failed = true;
      shared.error = err;
    } finally {
      shared.done = true;
      if (inProgress.get(registry) === shared) inProgress.delete(registry);
      wake();
    }
  };
  inProgress.set(registry, shared);
  void run();
  return shared;
}

/**
 * One scrape's read of a render: its parts from the first, handed out as
 * they are rendered. It is a reader of the render from its making until
 * `release()` (or the end of the parts): a render no scrape reads any more
 * stops, and one a scrape reads counts against the bound.
 */
export class RenderRead {
  private at = 0;
  private released = false;

  constructor(
    private readonly shared: SharedRender,
    private readonly onRelease: () => void,
  ) {
    shared.readers++;
  }

  /** The next part; done after the last (or once released); a failed render's error after its parts. */
  async next(): Promise<IteratorResult<string, undefined>> {
    const shared = this.shared;
    for (;;) {
      if (this.released) return { done: true, value: undefined };
      if (this.at < shared.parts.length) return { done: false, value: shared.parts[this.at++]! };
      if (shared.done) {
        this.release();
        if (shared.failed) throw shared.error;
        return { done: true, value: undefined };
      }
      await new Promise<void>((resolve) => shared.waiting.add(resolve));
    }
  }

  /** Leaves the render (once; later calls do nothing). */
  release(): void {
    if (this.released) return;
    this.released = true;
    this.shared.readers--;
    this.onRelease();
  }
}

/**
 * The registry's text, as `registry.metrics()` returns it, in parts handed
 * out as they are rendered, with pauses for the event loop between them, to
 * the scrapes of one handler. A scrape that arrives while a render is in
 * progress reads that render's parts (from the first); so the parts of a
 * render are kept until it ends and its last reader has them. A scrape that
 * needs a new render gets one only while the renders its handler's scrapes
 * in progress hold stay under `maxHeldBytes` (MAX_HELD_METRICS_BYTES).
 * Renders are shared per registry, whichever handler started them; each
 * handler counts those its own scrapes read.
 */
export class MetricsRenders {
  /** Renders its scrapes in progress read, and how many of them read each. */
  private readonly held = new Map<SharedRender, number>();

  constructor(
    private readonly registry: Registry,
    private readonly maxHeldBytes = MAX_HELD_METRICS_BYTES,
  ) {}

  /** Characters of the renders its scrapes in progress hold. */
  get heldBytes(): number {
    let bytes = 0;
    for (const shared of this.held.keys()) bytes += shared.bytes;
    return bytes;
  }

  /**
   * The read of a scrape starting now: of the render in progress, else of a
   * new one; undefined when a new one is needed and the renders held already
   * reach the bound. Counted as held until the read is released.
   */
  acquire(): RenderRead | undefined {
    let shared = inProgress.get(this.registry);
    if (shared === undefined) {
      if (this.heldBytes >= this.maxHeldBytes) return undefined;
      shared = start(this.registry);
    }
    const render = shared;
    this.held.set(render, (this.held.get(render) ?? 0) + 1);
    return new RenderRead(render, () => {
      const left = (this.held.get(render) ?? 1) - 1;
      if (left > 0) this.held.set(render, left);
      else this.held.delete(render);
    });
  }
}
