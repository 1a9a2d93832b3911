/**
 * zod issues as AgentErrors in this package's wording: one error, for the
 * first bad option, named by its path (`queue.port`). An unknown key, which
 * zod reports after the "required" issue its typo also causes, comes first,
 * with the nearest known key, like the gateway's options.
 */
import type { z } from 'zod';
import { AgentError, invalidOption, unknownOptionText } from './errors';

/** A value as an error message shows it. */
export const show = (v: unknown): string =>
  typeof v === 'function' ? 'a function' : (JSON.stringify(v) ?? String(v));

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

/** Parses `input` with `schema`; throws LW_AGENT_INVALID_OPTION naming the first bad option by its path. */
export function parseOptions<S extends z.ZodType>(schema: S, input: unknown): z.output<S> {
  const result = schema.safeParse(input, { error: message });
  if (!result.success) throw toAgentError(result.error.issues);
  return result.data;
}
