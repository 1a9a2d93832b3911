/**
 * valibot issues as AgentErrors in this package's wording: one error, for the
 * first bad option, named by its path (`queue.port`). An unknown key, which
 * valibot reports after the "required" issue its typo also causes, comes first,
 * with the nearest known key, like the gateway's options. The schema building
 * blocks below (int(), httpUrl, ...) carry that wording; options.ts and each
 * queue source's schema (queue/) are made of them.
 */
import * as v from 'valibot';
import { unknownOptionText } from '@loadwise/protocol';
import { AgentError, invalidOption } from './errors';

/** A value as an error message shows it. */
export const show = (x: unknown): string =>
  typeof x === 'function' ? 'a function' : (JSON.stringify(x) ?? String(x));

type Issue = v.BaseIssue<unknown>;
type Path = readonly v.IssuePathItem[];

const article = (type: string): string => `${/^[aeiou]/.test(type) ? 'an' : 'a'} ${type}`;

/** `a, b or c` */
export const oneOf = (values: readonly unknown[]): string =>
  values.length < 2
    ? values.map(String).join('')
    : `${values.slice(0, -1).map(String).join(', ')} or ${String(values.at(-1))}`;

const pathText = (path: Path): string =>
  path
    .map((p, i) =>
      typeof p.key === 'number' ? `[${p.key}]` : `${i > 0 ? '.' : ''}${String(p.key)}`,
    )
    .join('');

/** `must be a string, got 5`, or `is required` when the value is missing. */
export const wrongType =
  (type: string) =>
  (iss: Issue): string =>
    iss.input === undefined ? 'is required' : `must be ${article(type)}, got ${show(iss.input)}`;

/** valibot's objects take arrays (typeof [] is 'object'); an option object never is one. */
export function notArray<S extends v.GenericSchema>(schema: S) {
  return v.pipe(
    v.custom<v.InferInput<S>>((x) => !Array.isArray(x), wrongType('object')),
    schema,
  );
}

/** The keys each unknown-key issue's object allows, for the did-you-mean. */
const knownKeys = new WeakMap<Issue, readonly string[]>();

/**
 * A strict object in this wording. A missing key gets its entry's own message
 * for an absent value (`is required`, or an integer's range); an unknown key is
 * worded in toAgentError(), which knows its full path.
 */
export function strictObject<E extends v.ObjectEntries>(entries: E) {
  const known = Object.keys(entries);
  return v.strictObject(entries, (iss) => {
    const key = iss.path?.[0]?.key;
    if (key === undefined) return wrongType('object')(iss);
    if (iss.expected === 'never') {
      knownKeys.set(iss, known);
      return unknownOptionText(String(key), known);
    }
    return v.safeParse(entries[String(key)]!, undefined).issues?.[0].message ?? 'is required';
  });
}

/**
 * A check that runs only on a value of the right type and reports the message
 * `check` returns, if any (zod's superRefine).
 */
export function refine<T>(check: (value: T) => string | undefined) {
  return v.rawCheck<T>(({ dataset, addIssue }) => {
    if (!dataset.typed) return;
    const message = check(dataset.value);
    if (message !== undefined) addIssue({ message });
  });
}

type Found = { iss: Issue; path: Path; wrapped: boolean };

/**
 * The issues, each with its full path, a union's replaced by those of the
 * branch that got furthest (an object's inner issues over "expected boolean").
 * As zod did: a branch that only failed checks or had unknown keys stands for
 * the union; one that also failed a type shows its first issue, which then
 * does not count as an unknown key to put first.
 */
function flatten(iss: Issue, path: Path, wrapped = false): Found[] {
  const further =
    iss.type === 'union'
      ? (iss.issues ?? []).filter((b) => b.kind !== 'schema' || (b.path?.length ?? 0) > 0)
      : [];
  if (further.length === 0) return [{ iss, path, wrapped }];
  const open = further.every((b) => b.kind !== 'schema' || knownKeys.has(b));
  return (open ? further : further.slice(0, 1)).flatMap((b) =>
    flatten(b, [...path, ...(b.path ?? [])], wrapped || !open),
  );
}

function toAgentError(issues: readonly Issue[]): AgentError {
  const all = issues.flatMap((i) => flatten(i, i.path ?? []));
  // A typo also leaves its right name missing: report the unknown key, the cause.
  const first = all.find((f) => !f.wrapped && knownKeys.has(f.iss)) ?? all[0]!;
  const known = knownKeys.get(first.iss);
  if (known) {
    const at = pathText(first.path.slice(0, -1));
    const prefix = at ? `${at}.` : '';
    const key = String(first.path.at(-1)!.key);
    return new AgentError(
      'LW_AGENT_INVALID_OPTION',
      unknownOptionText(key, known, prefix),
      `${prefix}${key}`,
    );
  }
  return invalidOption(pathText(first.path) || 'options', first.iss.message);
}

/** Parses `input` with `schema`; throws LW_AGENT_INVALID_OPTION naming the first bad option by its path. */
export function parseOptions<S extends v.GenericSchema>(
  schema: S,
  input: unknown,
): v.InferOutput<S> {
  const result = v.safeParse(schema, input);
  if (!result.success) throw toAgentError(result.issues);
  return result.output;
}

/** An integer in [min, max]; one message for every way to miss it. */
export function int(min: number, max = Number.MAX_SAFE_INTEGER) {
  const error = (iss: { input: unknown }): string =>
    `must be an integer from ${min} to ${max}, got ${show(iss.input)}`;
  return v.pipe(v.number(error), v.integer(error), v.minValue(min, error), v.maxValue(max, error));
}

export const string = () => v.string(wrongType('string'));
export const boolean = () => v.boolean(wrongType('boolean'));
/** zod's wording for an empty string, kept so that messages did not change. */
export const nonEmpty = () =>
  v.pipe(string(), v.minLength(1, 'Too small: expected string to have >=1 characters'));
export const picklist = <const T extends readonly string[]>(values: T) =>
  v.picklist(values, (iss) => `must be ${oneOf(values)}, got ${show(iss.input)}`);

/**
 * A URL string with one of `protocols` (`'http:'`) and a host; `wrong` is the message for
 * another protocol. `mqtt://` (an empty template variable after it) parsed, had no host,
 * and mqtt.js connected to localhost:1883.
 */
export function url(protocols: readonly string[], wrong: string) {
  return v.pipe(
    string(),
    refine<string>((x) => {
      let parsed: URL;
      try {
        parsed = new URL(x);
      } catch {
        // Not the password of one that does not parse (`mqtt://u:pw@host:99999`): the
        // error reaches the journal. Up to the authority's last `@`, as a password may hold one.
        return `is not a URL: ${show(x.replace(/^([a-z][a-z0-9+.-]*:\/\/)[^/?#]*@/i, '$1***@'))}`;
      }
      if (!protocols.includes(parsed.protocol)) return wrong;
      return parsed.hostname === '' ? `has no host: ${show(x)}` : undefined;
    }),
  );
}
export const httpUrl = url(['http:', 'https:'], 'must be an http(s) URL');
