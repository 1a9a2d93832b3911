/**
 * Structured, levelled log lines for every state change of a balancer, with
 * its reason: one listener per balancer event (events.ts) turns the event
 * into `{ event, backend?, ...fields }` and a sentence, and writes it
 * pino-style, `logger[level](fields, msg)`.
 *
 * Levels: `error` when the gateway itself refuses or degrades service for
 * everyone (panic mode, event-loop overload); `warn` when one backend or the
 * control channel is lost (ejected, down, stale, broker lost, saturation,
 * dropped messages); `info` for recoveries and planned changes (restored, up,
 * draining, broker connected, discovery). The default logger
 * (options-checks.ts) prints warn and above, so an operator who configured
 * nothing still sees trouble but not every recovery.
 *
 * Events that a hostile or broken peer can repeat at will (dropped messages,
 * a flapping broker) go through RateLimitedLog; the others are transitions
 * and are already bounded by the state machines that emit them.
 */
import { redactUrl } from '@loadwise/protocol';
import type { BalancerEmitter, BalancerEvents } from '../events';
import type { Logger } from '../options';
import type { RateLimitedLog } from '../rate-limited-log';
import { currentWorkerId } from '../cluster/run-workers';

export type LogLevel = 'info' | 'warn' | 'error';

/** The structured part of a line: always `event`, then what explains it. */
export interface LogFields {
  event: keyof BalancerEvents;
  [field: string]: unknown;
}

export interface LogRecord {
  level: LogLevel;
  fields: LogFields;
  msg: string;
}

type Describers = { [K in keyof BalancerEvents]: (data: BalancerEvents[K][0]) => LogRecord };

const seconds = (ms: number | undefined): string =>
  ms === undefined ? 'unknown' : `${(ms / 1000).toFixed(ms < 10_000 ? 1 : 0)} s`;

/** Why discovery took a backend out, as the end of its line. */
const REMOVED: Record<
  BalancerEvents['backend-removed'][0]['reason'],
  (silentMs: number) => string
> = {
  silent: (ms) => `forgotten by discovery: nothing signed from its agent for ${seconds(ms)}`,
  evicted: () => 'forgotten by discovery: it had left, and discovery.maxBackends needed its slot',
  moved: () => 'replaced by discovery: another run of its agent registered it at another address',
  'configured-server': () =>
    "let go by discovery: a configured backend's name resolves to its address now (one id per server)",
};

/**
 * One entry per event name; the mapped type makes the compiler refuse an
 * event that has no line.
 */
const DESCRIBE: Describers = {
  'backend-ejected': ({ id, durationMs, consecutiveFailures }) => ({
    level: 'warn',
    fields: { event: 'backend-ejected', backend: id, durationMs, consecutiveFailures },
    msg: `backend ${id} ejected for ${seconds(durationMs)} after ${consecutiveFailures} consecutive failures`,
  }),
  'backend-restored': ({ id }) => ({
    level: 'info',
    fields: { event: 'backend-restored', backend: id },
    msg: `backend ${id} restored after its ejection`,
  }),
  'backend-down': ({ id, reason }) => ({
    level: 'warn',
    fields: { event: 'backend-down', backend: id, reason },
    msg: `backend ${id} down: ${reason}`,
  }),
  'backend-up': ({ id }) => ({
    level: 'info',
    fields: { event: 'backend-up', backend: id },
    msg: `backend ${id} up again`,
  }),
  'backend-draining': ({ id }) => ({
    level: 'info',
    fields: { event: 'backend-draining', backend: id, reason: 'agent reported draining' },
    msg: `backend ${id} draining: no new requests, in-flight ones finish`,
  }),
  'backend-added': ({ id, url }) => ({
    level: 'info',
    fields: { event: 'backend-added', backend: id, url },
    msg: `backend ${id} added by discovery at ${url}`,
  }),
  'backend-removed': ({ id, url, silentMs, reason }) => ({
    level: 'info',
    fields: { event: 'backend-removed', backend: id, url, silentMs, reason },
    msg: `backend ${id} at ${url} ${REMOVED[reason](silentMs)}`,
  }),
  'metrics-stale': ({ id, ageMs }) => ({
    level: 'warn',
    fields: { event: 'metrics-stale', backend: id, ageMs: ageMs ?? null },
    msg: `backend ${id} reports are stale (last one ${seconds(ageMs)} ago); routing on local signals`,
  }),
  saturation: ({ saturated, queued }) =>
    saturated
      ? {
          level: 'warn',
          fields: { event: 'saturation', saturated, queued },
          msg: `every eligible backend is saturated; requests wait in the queue (${queued})`,
        }
      : {
          level: 'info',
          fields: { event: 'saturation', saturated, queued },
          msg: 'saturation over: the wait queue is empty',
        },
  overload: ({ overloaded, eventLoopDelayMs }) => {
    const delay = Math.round(eventLoopDelayMs);
    return overloaded
      ? {
          level: 'error',
          fields: { event: 'overload', overloaded, eventLoopDelayMs },
          msg: `gateway overloaded (event-loop delay ${delay} ms): shedding new requests with 503`,
        }
      : {
          level: 'info',
          fields: { event: 'overload', overloaded, eventLoopDelayMs },
          msg: `gateway no longer overloaded (event-loop delay ${delay} ms)`,
        };
  },
  'accept-queue': ({ shedding, depth, limit }) =>
    shedding
      ? {
          level: 'error',
          fields: { event: 'accept-queue', shedding, depth, limit },
          msg: `gateway overloaded (${depth} of ${limit} connections wait to be accepted): shedding new requests with 503`,
        }
      : {
          level: 'info',
          fields: { event: 'accept-queue', shedding, depth, limit },
          msg: `gateway accepts again without a queue (${depth} of ${limit} waiting)`,
        },
  panic: ({ panic, healthy, routable }) =>
    panic
      ? {
          level: 'error',
          fields: { event: 'panic', panic, healthy, routable },
          msg: `panic mode: only ${healthy} of ${routable} routable backends are healthy; traffic spreads over all of them`,
        }
      : routable === 0
        ? {
            // Not a recovery: every backend left is draining, stopped or presumed gone
            // (a re-review read "panic mode over: 0 of 0" as one while every request got 503).
            level: 'error',
            fields: { event: 'panic', panic, healthy, routable },
            msg: 'no routable backend is left (every one is draining, stopped, presumed gone or replaced); requests get 503 LW_GW_NO_BACKEND',
          }
        : {
            level: 'info',
            fields: { event: 'panic', panic, healthy, routable },
            msg: `panic mode over: ${healthy} of ${routable} routable backends healthy`,
          },
  'broker-connected': ({ url }) => {
    const shown = url === undefined ? null : redactUrl(url);
    return {
      level: 'info',
      fields: { event: 'broker-connected', url: shown },
      msg: `broker connected${shown ? ` (${shown})` : ''}`,
    };
  },
  'broker-lost': ({ error }) => ({
    level: 'warn',
    fields: { event: 'broker-lost', error: error ?? null },
    msg: `broker connection lost${error ? `: ${error}` : ''}; routing on last state`,
  }),
  'broker-unreachable': ({ url, error }) => ({
    level: 'warn',
    fields: { event: 'broker-unreachable', url: url === undefined ? null : redactUrl(url), error },
    msg: `broker ${url === undefined ? '(unknown url)' : redactUrl(url)} unreachable: ${error}; routing on local signals, reconnecting`,
  }),
  'invalid-message': ({ code, backendId, detail }) => ({
    level: 'warn',
    fields: { event: 'invalid-message', code, backend: backendId ?? null },
    msg: `dropped message (${code}) from ${backendId ?? 'unknown'}${detail ? `: ${detail}` : ''}`,
  }),
};

/** Every balancer event name, in a stable order. */
export const BALANCER_EVENT_NAMES = Object.keys(DESCRIBE) as (keyof BalancerEvents)[];

/** The level, fields and sentence of one balancer event. */
export function describeEvent<K extends keyof BalancerEvents>(
  name: K,
  data: BalancerEvents[K][0],
): LogRecord {
  return (DESCRIBE[name] as (d: BalancerEvents[K][0]) => LogRecord)(data);
}

/**
 * Writes one line. The fields object gets a non-enumerable `toString` that
 * returns the sentence, so a logger written for the older `(msg: string)`
 * signature that formats its argument as a string (`${msg}`) still prints the
 * sentence; pino and JSON serialisers see only the enumerable fields. A
 * logger that throws must not break routing (events are emitted from inside
 * the request path), so its exceptions are swallowed.
 */
export function writeLog(
  logger: Logger,
  level: LogLevel,
  fields: Record<string, unknown>,
  msg: string,
): void {
  const obj = { ...fields };
  Object.defineProperty(obj, 'toString', { value: () => msg, enumerable: false });
  try {
    logger[level](obj, msg);
  } catch {
    // Nothing sensible to do: logging about a broken logger would recurse.
  }
}

/** Events a peer can repeat at will: one line per key per interval (RateLimitedLog). */
const RATE_LIMITED: ReadonlySet<keyof BalancerEvents> = new Set(['invalid-message', 'broker-lost']);

/**
 * Subscribes a logger to every event of `events`; returns the unsubscribe
 * function. `rateLimited` throttles the repeatable ones (per error code for
 * dropped messages).
 */
export function attachEventLog(
  events: BalancerEmitter,
  logger: Logger,
  rateLimited: RateLimitedLog,
): () => void {
  const listeners = BALANCER_EVENT_NAMES.map((name) => {
    // One generic listener per name; describeEvent is keyed by the same name.
    const listener = (data: unknown): void => {
      if ((data as { quiet?: boolean } | undefined)?.quiet === true) return;
      const r = describeEvent(name, data as never);
      if (RATE_LIMITED.has(name)) {
        const key = name === 'invalid-message' ? String(r.fields.code) : name;
        rateLimited.log(r.level, key, r.fields, r.msg);
      } else {
        writeLog(logger, r.level, r.fields, r.msg);
      }
    };
    events.on(name, listener as never);
    return [name, listener] as const;
  });
  return () => {
    for (const [name, listener] of listeners) events.off(name, listener as never);
  };
}

/**
 * The logger used when none is given: `warn` and `error` lines to stderr as
 * `[loadwise] <level>: <sentence> <fields as JSON>` (`[loadwise w2]` in a
 * runWorkers worker), `info` dropped. Quiet,
 * because a library should not chat on the console of the app that embeds
 * it; not silent, because an operator who configured nothing must still see
 * ejections, a lost broker or panic mode. Pass `logger: pino()` (or any
 * `{ info, warn, error }`) for everything.
 */
export function defaultLogger(): Logger {
  // In a runWorkers worker, which one: `[loadwise w2]`.
  const worker = currentWorkerId();
  const tag = worker === undefined ? '[loadwise]' : `[loadwise ${worker}]`;
  const line =
    (level: 'warn' | 'error') =>
    (objOrMsg: object | string, msg?: string): void => {
      // Fields after the sentence; none (a plain warning) adds nothing.
      const fields = typeof objOrMsg === 'string' ? '' : JSON.stringify(objOrMsg);
      const text =
        typeof objOrMsg === 'string'
          ? objOrMsg
          : `${msg ?? ''} ${fields === '{}' ? '' : fields}`.trim();
      console[level](`${tag} ${level}: ${text}`);
    };
  return { info: () => {}, warn: line('warn'), error: line('error') };
}

/** The longest path a log line shows. */
const MAX_LOGGED_PATH = 1024;

/**
 * A request's path for a log line or field: without its query, which may carry a credential
 * (a dashboard's `?token=` was logged whole; `?...` says there was one), printable ASCII
 * only, the path cut at 1,024 characters (`...` says so).
 */
export function pathForLog(url: string | undefined): string {
  const raw = url ?? '';
  const q = raw.indexOf('?');
  const path = q < 0 ? raw : raw.slice(0, q);
  const shown = path.length > MAX_LOGGED_PATH ? `${path.slice(0, MAX_LOGGED_PATH)}...` : path;
  return `${shown.replace(/[^\x20-\x7e]/g, '?')}${q < 0 ? '' : '?...'}`;
}
