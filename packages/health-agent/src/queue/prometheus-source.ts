import { QUEUE_FIELDS, type QueueField } from '@loadwise/protocol';
import * as v from 'valibot';
import { httpGet } from '../http-get';
import { httpUrl, picklist, show, strictObject, string } from '../option-errors';
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
 * Number() alone read an empty value as 0 and `0x10` as 16. NaN and ±Inf are skipped.
 */
const VALUE_RE = /^[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?$/;

export function parsePrometheusGauge(text: string, name: string): number | undefined {
  let sum = 0;
  let found = false;
  /** Series already summed: a repeated one (a broken exporter) counts once, the first. */
  const seen = new Set<string>();
  for (const raw of text.split('\n')) {
    const line = raw.trim();
    if (line === '' || line.startsWith('#') || !line.startsWith(name)) continue;
    const after = line.charAt(name.length);
    let rest: string;
    let series: string;
    if (after === '{') {
      const close = line.lastIndexOf('}');
      if (close < 0) continue;
      rest = line.slice(close + 1);
      series = line.slice(name.length, close + 1);
    } else if (after === ' ' || after === '\t') {
      rest = line.slice(name.length);
      series = '';
    } else {
      continue; // a longer metric name sharing the prefix
    }
    const token = rest.trim().split(/\s+/)[0] ?? '';
    if (!VALUE_RE.test(token)) continue;
    const value = Number(token);
    if (!Number.isFinite(value) || seen.has(series)) continue;
    seen.add(series);
    sum += value;
    found = true;
  }
  return found ? sum : undefined;
}

export function prometheusSource(
  url: URL,
  gauge: string,
  field: QueueField,
  timeoutMs: number,
): QueueSourceReader {
  return {
    async read(): Promise<QueueReading> {
      const res = await httpGet(url, timeoutMs);
      if (res.status !== 200) throw new Error(`prometheus endpoint answered ${res.status}`);
      const value = parsePrometheusGauge(res.body, gauge);
      if (value === undefined) throw new Error(`gauge ${gauge} not found at ${url.href}`);
      return {
        // A count the protocol can carry (a safe integer); a sum of huge values is not one.
        queue: {
          [field]: Math.min(Number.MAX_SAFE_INTEGER, Math.max(0, Math.round(value))),
          source: { [field]: 'prometheus' },
        },
      };
    },
  };
}

/** `{ source: 'prometheus', url, gauge, field?, timeoutMs? }`, --prometheus-url and its rows. */
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
  }),
  resolve: (q) => ({
    source: 'prometheus',
    url: new URL(q.url),
    gauge: q.gauge,
    field: q.field ?? 'queued',
    timeoutMs: q.timeoutMs ?? DEFAULT_SOURCE_TIMEOUT_MS,
  }),
  create: (q) => prometheusSource(q.url, q.gauge, q.field, q.timeoutMs),
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
  ],
});
