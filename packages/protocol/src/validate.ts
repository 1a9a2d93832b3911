import type { ProtocolErrorCode } from './errors';
import { BACKEND_STATES, HEALTH_VERDICTS, PROTOCOL_VERSION, QUEUE_FIELDS } from './messages';
import { isValidBackendId, type MessageKind } from './topics';

/** Where validation failed: the error code and the JSON path of the field. */
export interface ValidationFailure {
  code: ProtocolErrorCode;
  path: string;
}

export const MAX_REASON_LENGTH = 200;
/** Entries of `health.causes` at most. */
export const MAX_DEGRADED_CAUSES = 8;
const TOKEN = /^[a-z][a-z0-9_-]{0,31}$/;
export const MAX_URL_LENGTH = 2048;

type Obj = Record<string, unknown>;

// Number shapes. Checked in the order type → finite → sign → range, so each
// kind of bad input gets its own code.
const enum Num {
  /** any finite number >= 0 (durations, rates, bytes measured as floats) */
  NonNegative,
  /** integer >= 0 (counts, bytes, sequence numbers, timestamps) */
  Count,
  /** 0..1 */
  Ratio,
  /** integer >= 1 (pids, intervals, limits) */
  Positive,
  /** 100..599 */
  HttpStatus,
}

function isObj(x: unknown): x is Obj {
  return typeof x === 'object' && x !== null && !Array.isArray(x);
}

function numberCode(value: unknown, shape: Num): ProtocolErrorCode | undefined {
  if (typeof value !== 'number') return 'LW_PROTO_WRONG_TYPE';
  if (!Number.isFinite(value)) return 'LW_PROTO_NOT_FINITE';
  if (value < 0) return 'LW_PROTO_NEGATIVE';
  switch (shape) {
    case Num.NonNegative:
      return undefined;
    case Num.Count:
      return Number.isSafeInteger(value) ? undefined : 'LW_PROTO_OUT_OF_RANGE';
    case Num.Ratio:
      return value <= 1 ? undefined : 'LW_PROTO_OUT_OF_RANGE';
    case Num.Positive:
      return Number.isSafeInteger(value) && value >= 1 ? undefined : 'LW_PROTO_OUT_OF_RANGE';
    case Num.HttpStatus:
      return Number.isInteger(value) && value >= 100 && value <= 599
        ? undefined
        : 'LW_PROTO_OUT_OF_RANGE';
  }
}

/**
 * A single-use validator. Methods return false on the first failure and keep
 * it; later checks are no-ops, so call sites read as a flat list of rules.
 */
class Validator {
  failure: ValidationFailure | undefined;

  fail(code: ProtocolErrorCode, path: string): false {
    if (this.failure === undefined) this.failure = { code, path };
    return false;
  }

  num(o: Obj, key: string, path: string, shape: Num, required: boolean): boolean {
    const value = o[key];
    if (value === undefined)
      return required ? this.fail('LW_PROTO_MISSING_FIELD', path + key) : true;
    const code = numberCode(value, shape);
    return code === undefined ? true : this.fail(code, path + key);
  }

  oneOf(o: Obj, key: string, path: string, allowed: readonly string[], required: boolean): boolean {
    const value = o[key];
    if (value === undefined)
      return required ? this.fail('LW_PROTO_MISSING_FIELD', path + key) : true;
    if (typeof value !== 'string') return this.fail('LW_PROTO_WRONG_TYPE', path + key);
    return allowed.includes(value) ? true : this.fail('LW_PROTO_INVALID_VALUE', path + key);
  }

  /** A short lowercase name (`tracker`, `kernel`, a future source's): ≤ 32 of [a-z0-9_-]. */
  token(o: Obj, key: string, path: string): boolean {
    const value = o[key];
    if (typeof value !== 'string') return this.fail('LW_PROTO_WRONG_TYPE', path + key);
    return TOKEN.test(value) ? true : this.fail('LW_PROTO_INVALID_VALUE', path + key);
  }

  /** An optional list of at most `max` tokens (informational, so open to names this version does not know). */
  tokens(o: Obj, key: string, path: string, max: number): boolean {
    const value = o[key];
    if (value === undefined) return true;
    if (!Array.isArray(value)) return this.fail('LW_PROTO_WRONG_TYPE', path + key);
    if (value.length > max) return this.fail('LW_PROTO_OUT_OF_RANGE', path + key);
    for (let i = 0; i < value.length; i++) {
      const t: unknown = value[i];
      if (typeof t !== 'string') return this.fail('LW_PROTO_WRONG_TYPE', `${path}${key}.${i}`);
      if (!TOKEN.test(t)) return this.fail('LW_PROTO_INVALID_VALUE', `${path}${key}.${i}`);
    }
    return true;
  }

  text(o: Obj, key: string, path: string, maxLength: number, required: boolean): boolean {
    const value = o[key];
    if (value === undefined)
      return required ? this.fail('LW_PROTO_MISSING_FIELD', path + key) : true;
    if (typeof value !== 'string') return this.fail('LW_PROTO_WRONG_TYPE', path + key);
    return value.length <= maxLength ? true : this.fail('LW_PROTO_OUT_OF_RANGE', path + key);
  }

  bool(o: Obj, key: string, path: string): boolean {
    const value = o[key];
    return value === undefined || typeof value === 'boolean'
      ? true
      : this.fail('LW_PROTO_WRONG_TYPE', path + key);
  }

  /** Returns the nested object, undefined when absent (and allowed), or null on failure. */
  obj(o: Obj, key: string, path: string, required: boolean): Obj | undefined | null {
    const value = o[key];
    if (value === undefined) {
      return required ? (this.fail('LW_PROTO_MISSING_FIELD', path + key), null) : undefined;
    }
    return isObj(value) ? value : (this.fail('LW_PROTO_WRONG_TYPE', path + key), null);
  }
}

function validateMetrics(v: Validator, o: Obj): void {
  v.num(o, 'intervalMs', '', Num.Positive, true);
  v.oneOf(o, 'state', '', BACKEND_STATES, true);
  v.num(o, 'concurrencyLimit', '', Num.Positive, false);
  v.bool(o, 'early', '');

  const host = v.obj(o, 'host', '', true);
  if (host) {
    v.num(host, 'cpuUtilization', 'host.', Num.Ratio, true);
    v.num(host, 'memoryUtilization', 'host.', Num.Ratio, true);
    v.num(host, 'memoryAvailableBytes', 'host.', Num.Count, true);
    v.num(host, 'loadAverage1m', 'host.', Num.NonNegative, false);
    v.num(host, 'cpuCount', 'host.', Num.Positive, false);
  }

  const proc = v.obj(o, 'process', '', false);
  if (proc) {
    v.num(proc, 'pid', 'process.', Num.Positive, true);
    v.num(proc, 'cpuCores', 'process.', Num.NonNegative, true);
    v.num(proc, 'rssBytes', 'process.', Num.Count, true);
  }

  const cg = v.obj(o, 'cgroup', '', false);
  if (cg) {
    v.num(cg, 'cpuLimitCores', 'cgroup.', Num.NonNegative, false);
    v.num(cg, 'cpuUtilization', 'cgroup.', Num.Ratio, false);
    v.num(cg, 'memoryLimitBytes', 'cgroup.', Num.Count, false);
    v.num(cg, 'memoryUsedBytes', 'cgroup.', Num.Count, false);
    v.num(cg, 'memoryUtilization', 'cgroup.', Num.Ratio, false);
  }

  const queue = v.obj(o, 'queue', '', false);
  if (queue) {
    for (const field of QUEUE_FIELDS) v.num(queue, field, 'queue.', Num.Count, false);
    const source = v.obj(queue, 'source', 'queue.', true);
    if (source) {
      // Informational, so open to additions: a newer agent may name a source this version
      // does not know, or give the source of a figure it does not know. Either is kept,
      // never fatal (the whole report would be lost over a label); only a value that is
      // not a short token is refused.
      for (const key in source) v.token(source, key, 'queue.source.');
    }
  }

  const traffic = v.obj(o, 'traffic', '', false);
  if (traffic) {
    v.num(traffic, 'rps', 'traffic.', Num.NonNegative, false);
    v.num(traffic, 'errorRate', 'traffic.', Num.Ratio, false);
    v.num(traffic, 'latencyMeanMs', 'traffic.', Num.NonNegative, false);
    v.num(traffic, 'latencyP50Ms', 'traffic.', Num.NonNegative, false);
    v.num(traffic, 'latencyP90Ms', 'traffic.', Num.NonNegative, false);
    v.num(traffic, 'latencyP99Ms', 'traffic.', Num.NonNegative, false);
    v.num(traffic, 'windowMs', 'traffic.', Num.Positive, false);
  }

  const health = v.obj(o, 'health', '', true);
  if (health) {
    v.oneOf(health, 'verdict', 'health.', HEALTH_VERDICTS, true);
    v.text(health, 'reason', 'health.', MAX_REASON_LENGTH, false);
    v.tokens(health, 'causes', 'health.', MAX_DEGRADED_CAUSES);
    v.num(health, 'probeLatencyMs', 'health.', Num.NonNegative, false);
    v.num(health, 'probeStatus', 'health.', Num.HttpStatus, false);
  }
}

function validateRegistration(v: Validator, o: Obj): void {
  if (!v.text(o, 'url', '', MAX_URL_LENGTH, true)) return;
  v.num(o, 'weight', '', Num.NonNegative, false);
  let url: URL | undefined;
  try {
    url = new URL(o.url as string);
  } catch {
    url = undefined;
  }
  if (
    !url ||
    (url.protocol !== 'http:' && url.protocol !== 'https:') ||
    url.username ||
    url.password
  ) {
    v.fail('LW_PROTO_INVALID_VALUE', 'url');
  }
}

/**
 * Checks a parsed payload against the v1 schema and the topic it arrived on.
 * Unknown fields are tolerated (a newer agent may add optional ones) but never
 * interpreted. Returns undefined when the message is valid.
 */
export function validateMessage(
  value: unknown,
  topic?: { backendId: string; kind: MessageKind },
): ValidationFailure | undefined {
  const v = new Validator();
  if (!isObj(value)) return (v.fail('LW_PROTO_WRONG_TYPE', '$'), v.failure);
  if (value.v !== PROTOCOL_VERSION) {
    return {
      code: value.v === undefined ? 'LW_PROTO_MISSING_FIELD' : 'LW_PROTO_UNKNOWN_VERSION',
      path: 'v',
    };
  }
  const kind = value.kind;
  if (kind === undefined) return { code: 'LW_PROTO_MISSING_FIELD', path: 'kind' };
  if (kind !== 'metrics' && kind !== 'status' && kind !== 'register') {
    return {
      code: typeof kind === 'string' ? 'LW_PROTO_UNKNOWN_KIND' : 'LW_PROTO_WRONG_TYPE',
      path: 'kind',
    };
  }
  const id = value.backendId;
  if (id === undefined) return { code: 'LW_PROTO_MISSING_FIELD', path: 'backendId' };
  if (typeof id !== 'string') return { code: 'LW_PROTO_WRONG_TYPE', path: 'backendId' };
  if (!isValidBackendId(id)) return { code: 'LW_PROTO_INVALID_BACKEND_ID', path: 'backendId' };
  if (topic && (topic.backendId !== id || topic.kind !== kind)) {
    return { code: 'LW_PROTO_TOPIC_MISMATCH', path: topic.backendId !== id ? 'backendId' : 'kind' };
  }
  v.num(value, 'epochMs', '', Num.Count, true);
  v.num(value, 'seq', '', Num.Count, true);
  v.num(value, 'ts', '', Num.Count, true);
  if (kind === 'metrics') validateMetrics(v, value);
  else if (kind === 'status') {
    v.oneOf(value, 'state', '', BACKEND_STATES, true);
    v.bool(value, 'will', '');
    v.text(value, 'reason', '', MAX_REASON_LENGTH, false);
  } else validateRegistration(v, value);
  return v.failure;
}
