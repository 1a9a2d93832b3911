import type { QueueField } from '@loadwise/protocol';
import * as v from 'valibot';
import type { OptionSpec } from '../config';
import { notArray, oneOf, show, wrongType } from '../option-errors';
import { kernelQueueSource } from './kernel-source';
import { prometheusQueueSource } from './prometheus-source';
import type { AnyQueueSource, QueueSourceContext } from './source';
import { trackerQueueSource, type SnapshotProvider } from './tracker-source';
import type { QueueSourceReader } from './types';

/**
 * The queue sources, one row each. A new source is a file beside these (one
 * defineQueueSource() call, source.ts), its row here, its members in the two
 * types below, and its rows in docs/agent.md. options.ts, config.ts and
 * agent.ts read this list and name no source.
 */
export const QUEUE_SOURCES = [
  trackerQueueSource,
  kernelQueueSource,
  prometheusQueueSource,
] as const;

/** The `queue` option: one member per source (a source's schema is checked against it in options.ts). */
export type QueueOptions =
  /** In-process: pass the middleware returned by trackRequests(). */
  | { source: 'tracker'; tracker: SnapshotProvider; url?: undefined; timeoutMs?: number }
  /** Separate process: the URL of the tracker's exposePath. */
  | { source: 'tracker'; url: string; tracker?: undefined; timeoutMs?: number }
  /** Zero-code: accept backlog and established connections of a listening port, from /proc/net/tcp*. */
  | { source: 'kernel'; port: number }
  /** A Prometheus text endpoint; `gauge` is summed across label sets and reported as `field` (default queued). */
  | {
      source: 'prometheus';
      url: string;
      gauge: string;
      field?: QueueField;
      timeoutMs?: number;
      /** The most bytes of the page read (default 16 MiB); past it the read fails. */
      maxBytes?: number;
    };

/** The `queue` option with its defaults filled in (each source's resolve()). */
export type ResolvedQueueOptions =
  | { source: 'tracker'; tracker?: SnapshotProvider; url?: URL; timeoutMs: number }
  | { source: 'kernel'; port: number }
  | {
      source: 'prometheus';
      url: URL;
      gauge: string;
      field: QueueField;
      timeoutMs: number;
      maxBytes: number;
    };

type Sources = readonly AnyQueueSource[];
type SchemaOf<S extends Sources> = S[number]['schema'];

/**
 * The `queue` schema of `sources`: a variant on `source`, so that an error
 * names the field of the chosen source (`queue.port`), or the sources there are.
 */
export function queueSchema<S extends Sources>(
  sources: S,
): v.GenericSchema<v.InferInput<SchemaOf<S>>, v.InferOutput<SchemaOf<S>>> {
  const names = sources.map((s) => s.name);
  // Typed by the return type: v.variant() cannot check a list only known as S.
  const variants = sources.map((s) => s.schema) as never;
  return notArray(
    v.variant('source', variants, (iss) =>
      iss.path ? `must be ${oneOf(names)}, got ${show(iss.input)}` : wrongType('object')(iss),
    ),
  ) as never;
}

function sourceNamed(sources: Sources, name: string): AnyQueueSource {
  const source = sources.find((s) => s.name === name);
  // The schema admits only the listed names; this is a caller passing another list.
  if (!source) throw new Error(`no queue source ${name}`);
  return source;
}

/** Fills in the defaults of checked `queue` options. */
export function resolveQueue(sources: Sources, options: { source: string }): ResolvedQueueOptions {
  return sourceNamed(sources, options.source).resolve(options as never);
}

/** The reader of resolved `queue` options. */
export function createQueueReader(
  sources: Sources,
  options: ResolvedQueueOptions,
  ctx: QueueSourceContext,
): QueueSourceReader {
  return sourceNamed(sources, options.source).create(options as never, ctx);
}

/**
 * The CLI rows of `sources`, then --source-timeout-ms, which every source
 * with a `timeoutMs` shares: it needs the row that picks one of them.
 */
export function queueCliOptions(sources: Sources): OptionSpec[] {
  const timed = sources.filter((s) => s.schema.entries['timeoutMs'] !== undefined);
  return [
    ...sources.flatMap((s) => s.cli),
    {
      flag: 'source-timeout-ms',
      option: 'queue.timeoutMs',
      needs: timed.flatMap((s) =>
        s.cli.filter((row) => row.implies?.['queue.source'] === s.name).map((row) => row.flag),
      ),
      kind: 'int',
      arg: 'ms',
      help: 'Timeout of a tracker or Prometheus read (default 500)',
    },
  ];
}
