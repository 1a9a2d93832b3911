import * as v from 'valibot';
import type { OptionSpec } from '../config';
import { int } from '../option-errors';
import type { ResolvedQueueOptions } from './index';
import type { QueueSourceReader } from './types';

/**
 * What a queue source is, whole: its `queue` options (schema and defaults),
 * its reader and its CLI rows, in one defineQueueSource() call in its own file.
 * The registry (index.ts) lists the sources; options.ts builds the `queue`
 * variant from that list, config.ts takes the rows and agent.ts creates the
 * reader, so none of them names a source.
 */

/** Timeout of a source that reads over HTTP (tracker, Prometheus), ms. */
export const DEFAULT_SOURCE_TIMEOUT_MS = 500;
/** `timeoutMs` of such a source; its CLI row, --source-timeout-ms, is shared (index.ts). */
export const sourceTimeoutMs = v.optional(int(1, 60_000));

/** What create() may use besides the source's own options. */
export interface QueueSourceContext {
  /** The procfs mount (`procRoot`). */
  procRoot: string;
}

/**
 * A source's `queue` object: a strict object (option-errors.ts strictObject)
 * whose `source` is v.literal(name), optionally in a v.pipe() with checks
 * across its keys. v.variant() in index.ts reads its entries.
 */
export type QueueObjectSchema<N extends string> = v.GenericSchema & {
  readonly type: 'strict_object';
  readonly entries: v.ObjectEntries & { readonly source: v.LiteralSchema<N, undefined> };
};

/** This source's member of ResolvedQueueOptions. */
export type ResolvedOf<N extends string> = Extract<ResolvedQueueOptions, { source: N }>;

export interface QueueSourceDefinition<N extends string, S extends QueueObjectSchema<N>> {
  schema: S;
  /** Fills in the defaults: the checked options to what the agent keeps. */
  resolve(options: v.InferOutput<S>): ResolvedOf<N>;
  /** The reader the agent samples every interval. */
  create(options: ResolvedOf<N>, ctx: QueueSourceContext): QueueSourceReader;
  /**
   * Its CLI rows (config.ts OptionSpec), in --help order. The row that picks
   * the source has `implies: { 'queue.source': name }`; refining rows `need` it.
   */
  cli: readonly OptionSpec[];
}

/** Any source, as the registry lists them (index.ts); only its own file knows its option types. */
export interface AnyQueueSource {
  readonly name: string;
  readonly schema: v.GenericSchema & { readonly entries: v.ObjectEntries };
  resolve(options: never): ResolvedQueueOptions;
  create(options: never, ctx: QueueSourceContext): QueueSourceReader;
  readonly cli: readonly OptionSpec[];
}

/** A source, under its name: `queue.source`, which its reader also puts on the wire as the source of its fields. */
export function defineQueueSource<const N extends string, S extends QueueObjectSchema<N>>(
  name: N,
  definition: QueueSourceDefinition<N, S>,
): QueueSourceDefinition<N, S> & { readonly name: N } {
  return { name, ...definition };
}
