/**
 * The one schema of createAgent()'s options (zod 4). Every object is strict:
 * an unknown key at any depth is an error that names the option's full path
 * and the nearest known key, like the gateway's options. Messages name the
 * library path (`queue.port`); the CLI turns that path into the flag its user
 * typed through the table in config.ts.
 *
 * The public types (AgentOptions, QueueOptions, BrokerOptions, Thresholds)
 * stay hand-written, with their doc comments, so that no zod type reaches the
 * package's .d.ts; the compile-time checks at the end of this file keep them
 * and the schema equal.
 */
import type { SigningKey } from '@loadwise/protocol';
import {
  QUEUE_FIELDS,
  assertValidBackendId,
  assertValidKey,
  assertValidPrefix,
  isValidBackendId,
} from '@loadwise/protocol';
import cron from 'node-cron';
import { z } from 'zod';
import { AgentError, invalidOption, unknownOptionText } from './errors';
import type { BrokerOptions } from './mqtt-publisher';
import type { AgentOptions, QueueOptions } from './options';
import type { SnapshotProvider } from './queue/tracker-source';
import { HOST_SOURCES } from './samplers/host';
import type { Thresholds } from './verdict';

const show = (v: unknown): string =>
  typeof v === 'function' ? 'a function' : (JSON.stringify(v) ?? String(v));

function int(min: number, max = Number.MAX_SAFE_INTEGER) {
  const error = (iss: { input?: unknown }): string =>
    `must be an integer from ${min} to ${max}, got ${show(iss.input)}`;
  return z.int({ error }).min(min, { error }).max(max, { error });
}

const fraction = z.number().refine((v) => v > 0 && v <= 1, {
  error: (iss) => `must be a number in (0, 1], got ${show(iss.input)}`,
});

/** A check of @loadwise/protocol, its message without the protocol's code. */
function asserted<S extends z.ZodType>(schema: S, assert: (v: z.output<S>) => void): S {
  return schema.superRefine((v, ctx) => {
    try {
      assert(v);
    } catch (err) {
      ctx.addIssue({
        code: 'custom',
        message: (err as Error).message.replace(/^LW_PROTO_\w+: /, ''),
      });
    }
  });
}

function url(protocols: readonly string[], wrong: string) {
  return z.string().superRefine((v, ctx) => {
    let parsed: URL;
    try {
      parsed = new URL(v);
    } catch {
      ctx.addIssue({ code: 'custom', message: `is not a URL: ${show(v)}` });
      return;
    }
    if (!protocols.includes(parsed.protocol)) ctx.addIssue({ code: 'custom', message: wrong });
  });
}
const httpUrl = url(['http:', 'https:'], 'must be an http(s) URL');
const pem = z.union([z.string(), z.instanceof(Buffer)], { error: 'must be PEM text or a Buffer' });
const sourceTimeoutMs = int(1, 60_000).optional();

const brokerSchema = z
  .strictObject({
    url: url(
      ['mqtt:', 'mqtts:', 'ws:', 'wss:', 'tcp:', 'ssl:'],
      'must be an mqtt://, mqtts://, ws:// or wss:// URL',
    ),
    clientId: z.string().min(1).max(128, 'must be 1-128 characters').optional(),
    username: z.string().optional(),
    password: z.string().optional(),
    ca: pem.optional(),
    cert: pem.optional(),
    key: pem.optional(),
    rejectUnauthorized: z.boolean().optional(),
    reconnectPeriodMs: int(100).optional(),
    connectTimeoutMs: int(1, 600_000).optional(),
    keepaliveS: int(1, 65535).optional(),
  })
  .refine((b) => (b.cert === undefined) === (b.key === undefined), {
    path: ['cert'],
    error: 'a client certificate needs its key (and the key its certificate)',
  });

const queueSchema = z.discriminatedUnion('source', [
  z
    .strictObject({
      source: z.literal('tracker'),
      tracker: z
        .custom<SnapshotProvider>(
          (v) => typeof (v as SnapshotProvider | null)?.snapshot === 'function',
          'must have snapshot()',
        )
        .optional(),
      url: httpUrl.optional(),
      timeoutMs: sourceTimeoutMs,
    })
    .refine((q) => (q.tracker === undefined) !== (q.url === undefined), {
      path: ['url'],
      error: 'give url (the exposePath of another process) or tracker (in-process), one of them',
    }),
  z.strictObject({ source: z.literal('kernel'), port: int(1, 65535) }),
  z.strictObject({
    source: z.literal('prometheus'),
    url: httpUrl,
    gauge: z.string().regex(/^[a-zA-Z_:][a-zA-Z0-9_:]*$/, {
      error: (iss) => `must be a Prometheus metric name, got ${show(iss.input)}`,
    }),
    field: z.enum(QUEUE_FIELDS).optional(),
    timeoutMs: sourceTimeoutMs,
  }),
]);

const thresholdsSchema = z.strictObject({
  cpuUtilization: fraction.optional(),
  memoryUtilization: fraction.optional(),
  queueFull: z.boolean().optional(),
});

export const agentOptionsSchema = z.strictObject({
  backendId: asserted(z.string(), assertValidBackendId),
  broker: brokerSchema.optional(),
  prefix: asserted(z.string(), assertValidPrefix).optional(),
  serviceName: z
    .string()
    .refine(isValidBackendId, 'must be 1-64 characters of [A-Za-z0-9._:@-]')
    .optional(),
  intervalMs: int(100, 3_600_000).optional(),
  cron: z
    .string()
    .refine((v) => cron.validate(v), { error: (iss) => `invalid expression ${show(iss.input)}` })
    .optional(),
  jitterMs: int(0, 3_600_000).optional(),
  signingKey: asserted(
    z.custom<SigningKey>((v) => typeof v === 'object' && v !== null, 'must be a signing key'),
    assertValidKey,
  ).optional(),
  service: z
    .strictObject({ pid: int(1).optional(), pidFile: z.string().min(1).optional() })
    .refine(
      (s) => s.pid === undefined || s.pidFile === undefined,
      'give a PID or a PID file, not both',
    )
    .optional(),
  queue: queueSchema.optional(),
  probe: z
    .strictObject({
      url: httpUrl,
      timeoutMs: int(1, 60_000).optional(),
      expectStatus: z
        .array(int(100, 599))
        .min(1, 'must be a non-empty list of HTTP statuses')
        .optional(),
    })
    .optional(),
  concurrencyLimit: int(1).optional(),
  thresholds: thresholdsSchema.optional(),
  hostSource: z.enum(HOST_SOURCES).optional(),
  cgroup: z.union([z.boolean(), z.strictObject({ root: z.string().min(1).optional() })]).optional(),
  procRoot: z.string().min(1).optional(),
  drainGraceMs: int(0, 600_000).optional(),
  earlyRise: int(0, 1_000_000).optional(),
  earlyMinGapMs: int(10, 60_000).optional(),
  random: z.custom<() => number>((v) => typeof v === 'function', 'must be a function').optional(),
});

export type ParsedAgentOptions = z.output<typeof agentOptionsSchema>;

type Issue = z.core.$ZodIssue;
type RawIssue = z.core.$ZodRawIssue;

const article = (type: string): string => `${/^[aeiou]/.test(type) ? 'an' : 'a'} ${type}`;
const oneOf = (values: readonly unknown[]): string =>
  values.length < 2
    ? values.map(String).join('')
    : `${values.slice(0, -1).map(String).join(', ')} or ${String(values.at(-1))}`;

const pathText = (path: readonly PropertyKey[]): string =>
  path
    .map((p, i) => (typeof p === 'number' ? `[${p}]` : `${i > 0 ? '.' : ''}${String(p)}`))
    .join('');

/** Wording of zod's own issues; checks above carry their own messages. */
function message(iss: RawIssue): string | undefined {
  switch (iss.code) {
    case 'invalid_type':
      return iss.input === undefined
        ? 'is required'
        : `must be ${article(iss.expected === 'int' ? 'integer' : iss.expected)}, got ${show(iss.input)}`;
    case 'invalid_value':
      return `must be ${oneOf(iss.values)}, got ${show(iss.input)}`;
    case 'invalid_union': {
      if ('discriminator' in iss && Array.isArray(iss.options)) {
        const input = iss.input as Record<string, unknown>;
        return `must be ${oneOf(iss.options as unknown[])}, got ${show(input[String(iss.discriminator)])}`;
      }
      // Every branch refused the type itself: list the types.
      const types = iss.errors.map((b) =>
        b[0]?.code === 'invalid_type' && b[0].path.length === 0 ? b[0].expected : undefined,
      );
      return types.every((t) => t !== undefined)
        ? `must be ${oneOf(types.map((t) => article(t!)))}, got ${show(iss.input)}`
        : undefined;
    }
    case 'unrecognized_keys': {
      // The object schema that found the keys knows the keys it allows.
      const shape = (iss.inst as { _zod?: { def?: { shape?: object } } } | undefined)?._zod?.def
        ?.shape;
      const at = iss.path && iss.path.length > 0 ? `${pathText(iss.path)}.` : '';
      return unknownOptionText(iss.keys[0]!, Object.keys(shape ?? {}), at);
    }
    default:
      return undefined;
  }
}

/** Of a union's branches, the issue of the one that got furthest (an object's inner issue over "expected boolean"). */
function innermost(iss: Issue): Issue {
  if (iss.code !== 'invalid_union' || iss.errors.length === 0) return iss;
  const branch = iss.errors
    .map((issues) => issues[0])
    .find((b) => b !== undefined && (b.code !== 'invalid_type' || b.path.length > 0));
  return branch ? innermost({ ...branch, path: [...iss.path, ...branch.path] }) : iss;
}

function toAgentError(issues: readonly Issue[]): AgentError {
  // A typo also leaves its right name missing: report the unknown key, the cause.
  const first = innermost(issues.find((i) => i.code === 'unrecognized_keys') ?? issues[0]!);
  const at = pathText(first.path);
  if (first.code === 'unrecognized_keys')
    return new AgentError(
      'LW_AGENT_INVALID_OPTION',
      first.message,
      `${at ? `${at}.` : ''}${first.keys[0]}`,
    );
  return invalidOption(at || 'options', first.message);
}

/** Validates createAgent()'s input; throws LW_AGENT_INVALID_OPTION naming the first bad option by its path. */
export function parseAgentOptions(input: unknown): ParsedAgentOptions {
  const result = agentOptionsSchema.safeParse(input, { error: message });
  if (!result.success) throw toAgentError(result.error.issues);
  return result.data;
}

// Compile-time: the hand-written public types and the schema accept the same options.
type Same<A, B> = [A] extends [B] ? ([B] extends [A] ? true : false) : false;
type SameKeys<A, B> = Same<keyof A, keyof B>;
type Input = z.input<typeof agentOptionsSchema>;
type Check<T extends true> = T;
export type _SchemaMatchesTypes = [
  Check<Same<Omit<Input, 'queue'>, Omit<AgentOptions, 'queue'>>>,
  Check<SameKeys<Required<Input>, Required<AgentOptions>>>,
  Check<SameKeys<NonNullable<Input['broker']>, BrokerOptions>>,
  Check<Same<NonNullable<Input['broker']>, BrokerOptions>>,
  Check<SameKeys<NonNullable<Input['thresholds']>, Thresholds>>,
  Check<SameKeys<NonNullable<Input['probe']>, NonNullable<AgentOptions['probe']>>>,
  Check<SameKeys<NonNullable<Input['service']>, NonNullable<AgentOptions['service']>>>,
  // The schema's tracker variant is one object with url or tracker; the type has two variants.
  Check<QueueOptions extends NonNullable<Input['queue']> ? true : false>,
];
