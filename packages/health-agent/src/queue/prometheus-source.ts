import { QUEUE_FIELDS, type QueueField } from '@loadwise/protocol';
import { StringDecoder } from 'node:string_decoder';
import * as v from 'valibot';
import { httpGet, only200 } from '../http-get';
import { withoutPassword } from '../without-password';
import { httpUrl, int, picklist, show, strictObject, string } from '../option-errors';
import { DEFAULT_SOURCE_TIMEOUT_MS, defineQueueSource, sourceTimeoutMs } from './source';
import type { QueueReading, QueueSourceReader } from './types';

/**
 * Reads one gauge from a Prometheus text exposition (format 0.0.4): lines
 * `name{labels} value [timestamp]`. Samples of the gauge across label sets
 * are summed (e.g. per-worker queue lengths), so a filter is expressed by
 * exposing a dedicated gauge rather than by label matching here.
 */
/**
 * A sample value as the text format writes one (a Go float: digits, a point, an exponent).
 * Number() alone read an empty value as 0 and `0x10` as 16.
 */
const VALUE_RE = /^[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?$/;

/**
 * The longest line read. A gauge's sample line is short; a longer one (a label
 * value of megabytes) is not buffered: another metric's is skipped, and the
 * gauge's is a line not read, which fails the read. Decided on the line's
 * length alone, however the page came in pieces.
 */
const MAX_LINE_CHARS = 64 * 1024;

/** The most characters of a bad value the read's error quotes. */
const SHOWN_VALUE_CHARS = 32;

/**
 * An application's whole /metrics page can run to megabytes (histograms per
 * route and status). Such a page used to be refused whole at 1 MiB, and the
 * agent then never read its queue. It is now read as it arrives, line by line,
 * keeping one line at a time, up to this much by default (`queue.maxBytes`,
 * --prometheus-max-bytes); the read's timeout bounds it too. 64 MiB before: an
 * endless page of other metrics, read to the bound every second, cost the agent
 * 10.5% of a core, and 3.8% at 16 MiB (2026-12-07, 2 cores). A real page of
 * 16 MiB already costs ~35 ms a read (docs/agent.md, "Measured cost").
 */
export const MAX_EXPOSITION_BYTES = 16 * 1024 * 1024;
/** The range of `queue.maxBytes`: from 64 KiB (one line's bound) to 1 GiB. */
export const MIN_EXPOSITION_BYTES = 64 * 1024;
export const MAX_EXPOSITION_BYTES_LIMIT = 1024 * 1024 * 1024;

/**
 * The most lines of the gauge read. A queue gauge has one per worker or so;
 * an application that exposed millions of series (a label per request id)
 * kept every series string for deduplication: 60 MiB of them cost 464 ms of
 * CPU and a 79 MB heap a read. A repeated series counts each time: counted
 * once, an endless page of one line (`q{a="b"} 1` over and over) was read
 * until the timeout, 64 MiB of it 3.0 s of CPU and 54% of a core at one read
 * a second. Past this, the read fails.
 */
export const MAX_GAUGE_LINES = 10_000;

/**
 * Sums one gauge over the lines of an exposition fed to it in pieces of any size.
 *
 * Every line of the gauge must be read, as Prometheus fails a whole scrape on one
 * malformed line: a line of the gauge whose value is not a number as the text format
 * writes one, NaN or ±Inf (`1e999` too: stricter than Prometheus, which stores them, as
 * none is a count), a line with no value or whose label set never
 * closes, or one longer than MAX_LINE_CHARS is `unreadable`; a value below 0 once
 * rounded (as the sum is: -0.4, a gauge averaged over workers, is 0) is `belowZero`.
 * Either fails the read. They were skipped (a negative one summed), and the others
 * summed: a backend whose one worker exposed `q{worker="1"} undefined` beside
 * `q{worker="2"} 0` went out as idle (`queued: 0`). Other metrics' lines are skipped.
 */
export class GaugeReader {
  private sum = 0;
  private found = false;
  /**
   * Past MAX_GAUGE_LINES: nothing more is read. The whole page is read
   * otherwise, although the text format keeps a metric's lines in one group:
   * exporters that interleave them (pages of workers joined) are read
   * right, as Prometheus reads them.
   */
  done = false;
  /** Series already summed: a repeated one (a broken exporter) is summed once, the first. */
  private readonly seen = new Set<string>();
  /** Lines of the gauge read, a repeated series' too, and unreadable ones. */
  lines = 0;
  /** Lines of the gauge not read (see the class); any fails the read. */
  unreadable = 0;
  /** What the first unreadable line had: its value, quoted, or why it was not read. */
  firstUnreadable = '';
  /** Lines of the gauge whose value is below 0 once rounded, and the first such value. */
  belowZero = 0;
  firstBelowZero = 0;
  /** The unfinished last line of what was fed so far, at most MAX_LINE_CHARS long. */
  private tail = '';
  /** Inside a line longer than MAX_LINE_CHARS (already counted): dropped up to its end. */
  private skipping = false;

  constructor(private readonly name: string) {}

  feed(text: string): this {
    let from = 0;
    while (!this.done) {
      const nl = text.indexOf('\n', from);
      if (nl < 0) break;
      if (this.skipping) this.skipping = false;
      else if (this.tail.length + (nl - from) > MAX_LINE_CHARS) this.tooLong(text, from);
      else this.line(this.tail === '' ? text.slice(from, nl) : this.tail + text.slice(from, nl));
      this.tail = '';
      from = nl + 1;
    }
    if (this.done || this.skipping || from === text.length) return this;
    if (this.tail.length + (text.length - from) > MAX_LINE_CHARS) {
      this.tooLong(text, from);
      this.tail = '';
      this.skipping = true;
    } else {
      this.tail += text.slice(from);
    }
    return this;
  }

  /** The sum once the exposition ended; undefined when no line of the gauge was read. */
  result(): number | undefined {
    if (this.tail !== '') this.line(this.tail);
    this.tail = '';
    this.skipping = false;
    return this.found ? this.sum : undefined;
  }

  /**
   * A line longer than MAX_LINE_CHARS, starting with `tail` and going on at `text[from]`:
   * told apart by its first MAX_LINE_CHARS + 1 characters, whatever the pieces it came in
   * (a 70 KB line of the gauge was summed when it came in one piece, and skipped when
   * split across two).
   */
  private tooLong(text: string, from: number): void {
    const head = (this.tail + text.slice(from, from + MAX_LINE_CHARS + 1 - this.tail.length))
      .slice(0, MAX_LINE_CHARS + 1)
      .trimStart();
    // Blanks (valid before a sample) so many that its name is cut or not in the head: a
    // line that may be the gauge's is not skipped without a word.
    if (this.name.startsWith(head)) return this.bad(`a line over ${MAX_LINE_CHARS} characters`);
    if (!head.startsWith(this.name)) return;
    const after = head.charAt(this.name.length);
    if (after !== '{' && after !== ' ' && after !== '\t') return; // a longer metric name
    this.bad(`a line over ${MAX_LINE_CHARS} characters`);
  }

  /** Counts a line of the gauge toward MAX_GAUGE_LINES; false past the bound (then done). */
  private count(): boolean {
    if (this.lines === MAX_GAUGE_LINES) {
      this.done = true;
      return false;
    }
    this.lines++;
    return true;
  }

  /** A line of the gauge not read, and why. */
  private bad(why: string): void {
    if (!this.count()) return;
    if (this.unreadable++ === 0) this.firstUnreadable = why;
  }

  private line(raw: string): void {
    const name = this.name;
    const line = raw.trim();
    if (!line.startsWith(name)) return; // comments, blank lines and other metrics
    // Blanks may stand between the name and its label set (`q {w="1"} 5`, as Prometheus's
    // lexer reads it): that line failed the read as one with the value `{w="1"}`.
    let open = name.length;
    while (line.charAt(open) === ' ' || line.charAt(open) === '\t') open++;
    const after = open > name.length && line.charAt(open) === '{' ? '{' : line.charAt(name.length);
    let rest: string;
    let series: string;
    if (after === '{') {
      // The label set's own `}`, not the line's last: an OpenMetrics exemplar
      // (`q{w="1"} 5 # {trace_id="abc"} 1`) has braces of its own, and its value was
      // read as the sample's (5 and 7 over two workers summed to 2, not 12).
      const close = labelSetEnd(line, open);
      if (close < 0) return this.bad('a label set not closed');
      rest = line.slice(close + 1);
      // As written: a series repeated with its labels in another order is summed twice
      // (an exporter's bug), where sorting every line's pairs made a read of a gauge of
      // 10,000 series cost 20 ms of CPU instead of 8.
      series = line.slice(open, close + 1);
    } else if (after === ' ' || after === '\t') {
      rest = line.slice(name.length);
      series = '';
    } else if (after === '') {
      return this.bad('no value'); // the name alone
    } else {
      return; // a longer metric name sharing the prefix
    }
    // The value is the first token; a timestamp and an exemplar (` # {...} v`) may follow.
    const token = rest.trim().split(/\s+/)[0] ?? '';
    if (token === '') return this.bad('no value');
    const value = VALUE_RE.test(token) ? Number(token) : NaN;
    if (!Number.isFinite(value)) {
      const shown =
        token.length > SHOWN_VALUE_CHARS ? `${token.slice(0, SHOWN_VALUE_CHARS)}...` : token;
      return this.bad(JSON.stringify(shown));
    }
    if (!this.count()) return;
    if (Math.round(value) < 0) {
      if (this.belowZero++ === 0) this.firstBelowZero = value;
      return;
    }
    if (this.seen.has(series)) return;
    this.seen.add(series);
    this.sum += value;
    this.found = true;
  }
}

/**
 * The index of the `}` that closes the label set opened at `open`, or -1: a `}` or `"`
 * inside a quoted label value (escaped with a backslash, `\"` and `\\` among them) does
 * not count.
 */
function labelSetEnd(line: string, open: number): number {
  let quoted = false;
  for (let i = open + 1; i < line.length; i++) {
    const c = line.charCodeAt(i);
    if (quoted) {
      if (c === 0x5c /* backslash: the next character is escaped */) i++;
      else if (c === 0x22 /* " */) quoted = false;
    } else if (c === 0x22) {
      quoted = true;
    } else if (c === 0x7d /* } */) {
      return i;
    }
  }
  return -1;
}

/**
 * The gauge's sum in `text` as a read takes it: undefined when the gauge is not there,
 * or when one of its lines is unreadable or below 0 (which fails a read).
 */
export function parsePrometheusGauge(text: string, name: string): number | undefined {
  const reader = new GaugeReader(name).feed(text);
  const sum = reader.result();
  return reader.unreadable > 0 || reader.belowZero > 0 ? undefined : sum;
}

export function prometheusSource(
  url: URL,
  gauge: string,
  field: QueueField,
  timeoutMs: number,
  maxBytes = MAX_EXPOSITION_BYTES,
): QueueSourceReader {
  // The page's URL in the errors, which the agent logs once a minute: not its basic-auth
  // password (it showed as `http://scraper:s3cr3t-pw@...` in the journal).
  const shown = withoutPassword(url.href);
  return {
    async read(): Promise<QueueReading> {
      const reader = new GaugeReader(gauge);
      const decoder = new StringDecoder('utf8');
      await httpGet(url, timeoutMs, maxBytes, {
        // At the head: an error page is not read (an endless 503 was read to the bound,
        // and the warning named the bound, not the status).
        onHead: only200('prometheus endpoint'),
        onData: (chunk) => (reader.feed(decoder.write(chunk)).done ? 'done' : undefined),
      });
      const value = reader.done ? undefined : reader.feed(decoder.end()).result();
      // Checked after the last line too: a page without its final newline held the series
      // past the bound there, and was summed.
      if (reader.done) {
        throw new Error(`gauge ${gauge} has over ${MAX_GAUGE_LINES} lines at ${shown}`);
      }
      // One line of the gauge not read fails the read, as a malformed one fails a Prometheus
      // scrape (NaN too, stricter: not a count): the others summed, a worker exposing
      // `undefined` (or NaN, or -3) beside one at 0 went out as an idle backend. A gauge
      // that is there but says only NaN was reported "not found" once, which sent the
      // operator looking for a typo in the name.
      const range = `${field} must be a count from 0 to ${Number.MAX_SAFE_INTEGER}`;
      if (reader.unreadable > 0) {
        const { unreadable, lines, firstUnreadable } = reader;
        throw new Error(
          `gauge ${gauge}: ${unreadable} of ${lines} lines unreadable (${firstUnreadable}) at ${shown}: ${range}`,
        );
      }
      if (reader.belowZero > 0) {
        // A worker's -7 beside another's 10 went out as 3 queued.
        const on = reader.lines > 1 ? ` on ${reader.belowZero} of ${reader.lines} lines` : '';
        throw new Error(`gauge ${gauge} is ${reader.firstBelowZero}${on} at ${shown}: ${range}`);
      }
      if (value === undefined) throw new Error(`gauge ${gauge} not found at ${shown}`);
      // A count the protocol can carry: a safe integer from 0. A fraction rounds (a gauge
      // averaged over workers); anything else is refused like a tracker's bad figure (the
      // queue block is left out, with a warning naming the field). Clamped, -7 went out as
      // `queued: 0`, an idle backend, and 1e308 (or a sum of huge values) as 2^53-1.
      const count = Math.round(value);
      if (count < 0 || count > Number.MAX_SAFE_INTEGER) {
        throw new Error(`gauge ${gauge} is ${value} at ${shown}: ${range}`);
      }
      // `+ 0`: -0.4 rounds to -0, which is 0.
      return { queue: { [field]: count + 0, source: { [field]: 'prometheus' } } };
    },
  };
}

/** `{ source: 'prometheus', url, gauge, field?, timeoutMs?, maxBytes? }`, --prometheus-url and its rows. */
export const prometheusQueueSource = defineQueueSource('prometheus', {
  schema: strictObject({
    source: v.literal('prometheus'),
    url: httpUrl,
    gauge: v.pipe(
      string(),
      v.regex(
        /^[a-zA-Z_:][a-zA-Z0-9_:]*$/,
        (iss) => `must be a Prometheus metric name, got ${show(iss.input)}`,
      ),
    ),
    field: v.optional(picklist(QUEUE_FIELDS)),
    timeoutMs: sourceTimeoutMs,
    maxBytes: v.optional(int(MIN_EXPOSITION_BYTES, MAX_EXPOSITION_BYTES_LIMIT)),
  }),
  resolve: (q) => ({
    source: 'prometheus',
    url: new URL(q.url),
    gauge: q.gauge,
    field: q.field ?? 'queued',
    timeoutMs: q.timeoutMs ?? DEFAULT_SOURCE_TIMEOUT_MS,
    maxBytes: q.maxBytes ?? MAX_EXPOSITION_BYTES,
  }),
  create: (q) => prometheusSource(q.url, q.gauge, q.field, q.timeoutMs, q.maxBytes),
  cli: [
    {
      flag: 'prometheus-url',
      option: 'queue.url',
      implies: { 'queue.source': 'prometheus' },
      kind: 'string',
      arg: 'url',
      help: 'Queue source: Prometheus text endpoint',
    },
    {
      flag: 'prometheus-gauge',
      option: 'queue.gauge',
      needs: ['prometheus-url'],
      kind: 'string',
      arg: 'name',
      help: 'Gauge to read from --prometheus-url (summed over label sets)',
    },
    {
      flag: 'prometheus-field',
      option: 'queue.field',
      needs: ['prometheus-url'],
      kind: 'string',
      arg: 'field',
      help: 'Queue field the gauge reports: queued (default), inFlight, acceptBacklog, openConnections',
    },
    {
      flag: 'prometheus-max-bytes',
      option: 'queue.maxBytes',
      needs: ['prometheus-url'],
      kind: 'int',
      arg: 'bytes',
      help: 'Most bytes of the --prometheus-url page read (default 16777216, 16 MiB)',
    },
  ],
});
