/**
 * valibot issues as GatewayErrors in this package's wording: one error, for
 * the first bad option, named by its path (`backends[0].url`). A leaf says how
 * to word its error (`leaf()`); the path is known only once valibot has
 * returned, so the wording is kept beside the issue until then. An unknown
 * key anywhere comes first, with the nearest known key (unknownOptionText,
 * as the agent's options).
 */
import * as v from 'valibot';
import { unknownOptionText } from '@loadwise/protocol';
import { GatewayError, invalidOption } from './errors';

/** Builds the error of the option at `name`, its full path. */
export type Fail = (name: string) => GatewayError;
type Issue = v.BaseIssue<unknown>;

const fails = new WeakMap<Issue, Fail>();
const unknownKeys = new WeakMap<Issue, readonly string[]>();

export function isObject(x: unknown): x is Record<string, unknown> {
  return typeof x === 'object' && x !== null && !Array.isArray(x);
}

/**
 * An options section: an object literal (or one without a prototype). A Date or a RegExp
 * passed as a section used to read as `{}`, every default in place and no error.
 */
function isPlainObject(x: unknown): x is Record<string, unknown> {
  if (!isObject(x)) return false;
  const proto = Object.getPrototypeOf(x) as unknown;
  return proto === Object.prototype || proto === null;
}

/** `<name> must be <expected>, got <value>` (invalidOption). */
export const expected =
  (text: string) =>
  (x: unknown): Fail =>
  (name) =>
    invalidOption(name, text, x);

/** An error whose wording does not depend on the path (a code of its own). */
export const fixed =
  (err: GatewayError): Fail =>
  () =>
    err;

/**
 * A value of type T, checked by `problem`: undefined when the value is fine,
 * else how to word the error. The schema of every leaf option.
 */
export function leaf<T>(problem: (x: unknown) => Fail | undefined) {
  return v.custom<T>(
    (x) => problem(x) === undefined,
    (iss) => {
      fails.set(iss, problem(iss.input) ?? expected('valid')(iss.input));
      return 'invalid option';
    },
  );
}

/**
 * A check of a whole typed value (several fields at once); runs only when
 * every part of the value passed its own checks. `problem` returns the error.
 */
export function crossCheck<T>(problem: (value: T) => GatewayError | undefined) {
  return v.rawCheck<T>(({ dataset, addIssue }) => {
    if (!dataset.typed) return;
    const err = problem(dataset.value);
    if (err === undefined) return;
    addIssue({
      message: (iss) => {
        fails.set(iss, fixed(err));
        return err.message;
      },
    });
  });
}

/**
 * An object with these keys only: anything but a plain object fails with
 * `notObject`, an unknown key with its path and the nearest known key, a
 * missing required key as its entry words an absent value.
 */
export function strict<E extends v.ObjectEntries>(
  entries: E,
  notObject: (x: unknown) => Fail = expected('an object'),
) {
  const known = Object.keys(entries);
  const object = v.strictObject(entries, (iss) => {
    if (iss.expected === 'never') {
      unknownKeys.set(iss, known);
      return 'unknown option';
    }
    const key = String(iss.path?.[0]?.key);
    const inner = v.safeParse(entries[key]!, undefined).issues?.[0];
    fails.set(iss, (inner && fails.get(inner)) ?? expected('given')(undefined));
    return 'missing option';
  });
  return v.pipe(
    leaf<v.InferInput<typeof object>>((x) => (isPlainObject(x) ? undefined : notObject(x))),
    object,
  );
}

type Path = readonly v.IssuePathItem[];

const pathText = (root: string, path: Path): string =>
  path.reduce<string>(
    (at, p) =>
      typeof p.key === 'number' ? `${at}[${p.key}]` : `${at}${at ? '.' : ''}${String(p.key)}`,
    root,
  );

function toGatewayError(issues: readonly Issue[], root: string): GatewayError {
  // An unknown key comes first: a typo also leaves its right name missing.
  const first = issues.find((i) => unknownKeys.has(i)) ?? issues[0]!;
  const path = first.path ?? [];
  const known = unknownKeys.get(first);
  if (known) {
    const at = pathText(root, path.slice(0, -1));
    const key = String(path.at(-1)!.key);
    return new GatewayError('LW_GW_INVALID_OPTION', unknownOptionText(key, known, at && `${at}.`));
  }
  const name = pathText(root, path) || 'options';
  return (fails.get(first) ?? expected(first.message)(first.input))(name);
}

/**
 * Parses `input` with `schema`; throws the GatewayError of the first bad
 * option. `root` prefixes every path (`load` when load options are parsed
 * on their own).
 */
export function parseOptions<S extends v.GenericSchema>(
  schema: S,
  input: unknown,
  root = '',
): v.InferOutput<S> {
  const result = v.safeParse(schema, input);
  if (!result.success) throw toGatewayError(result.issues, root);
  return result.output;
}

/** Compile-time equality of two types (the schema's input and a hand-written public type). */
export type Same<A, B> = [A] extends [B] ? ([B] extends [A] ? true : false) : false;
export type Check<T extends true> = T;
