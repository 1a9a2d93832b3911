/**
 * `loadwise`: the gateway-side command line. `loadwise status` reads a
 * gateway's status endpoint (the `statusPath` option) and prints its registry
 * as a table, once or refreshed in place (`--watch`).
 *
 * Exit codes: 0 ok; 1 the gateway could not be read (unreachable, timeout,
 * an HTTP error such as 401, a body that is not status JSON or cannot be
 * shown; with --watch: the last refresh failed); 2 invalid usage (one line on
 * stderr).
 */
import { STATUS_ENV } from '@loadwise/protocol';
import { TOKEN_HEADER } from '../observability/handlers';
import { readFileSync } from 'node:fs';
import { request as httpRequest } from 'node:http';
import { request as httpsRequest } from 'node:https';
import { parseArgs } from 'node:util';
import { balancersOf, renderStatus, terminalJson, text, type StatusDocument } from './render';

const NAME = 'loadwise';
const DEFAULT_INTERVAL_MS = 1000;
const MIN_INTERVAL_MS = 100;
const DEFAULT_TIMEOUT_MS = 5000;

interface FlagSpec {
  flag: string;
  type: 'string' | 'boolean';
  arg?: string;
  env?: string;
  /** May be given several times (parseArgs `multiple`). */
  multiple?: boolean;
  help: string;
}

/** One table drives parsing, the environment fallback and --help. */
export const STATUS_FLAGS: readonly FlagSpec[] = [
  {
    flag: 'url',
    type: 'string',
    arg: 'url',
    env: STATUS_ENV.url,
    help: "The gateway's status endpoint (its statusPath), e.g. http://127.0.0.1:8080/_lb/status",
  },
  {
    flag: 'token',
    type: 'string',
    arg: 'token',
    env: STATUS_ENV.token,
    help: "The gateway's statusToken (prefer the variable: flags show in ps)",
  },
  {
    flag: 'token-header',
    type: 'string',
    arg: 'name',
    env: STATUS_ENV.tokenHeader,
    help: 'Header that carries the token: x-loadwise-token (default; a backend never sees it), authorization (sent as "Bearer <token>") or another name, sent as the bare token',
  },
  {
    flag: 'header',
    type: 'string',
    arg: 'name: value',
    multiple: true,
    env: STATUS_ENV.header,
    help: 'Another request header, e.g. the credentials of an app in front of the status endpoint (repeatable; the variable holds one)',
  },
  {
    flag: 'watch',
    type: 'boolean',
    help: 'Refresh in place every --interval-ms until Ctrl-C',
  },
  {
    flag: 'interval-ms',
    type: 'string',
    arg: 'ms',
    help: `Refresh interval with --watch (default ${DEFAULT_INTERVAL_MS}, min ${MIN_INTERVAL_MS})`,
  },
  { flag: 'count', type: 'string', arg: 'n', help: 'With --watch: stop after n refreshes' },
  {
    flag: 'timeout-ms',
    type: 'string',
    arg: 'ms',
    help: `Timeout of one status request (default ${DEFAULT_TIMEOUT_MS})`,
  },
  {
    flag: 'json',
    type: 'boolean',
    help: 'Print the status JSON as served (one line per refresh with --watch)',
  },
  { flag: 'help', type: 'boolean', help: 'Show this help' },
];

export function helpText(): string {
  const rows = STATUS_FLAGS.map((f) => {
    const left = `  --${f.flag}${f.arg ? ` <${f.arg}>` : ''}`;
    return `${left.padEnd(26)} ${f.help}${f.env ? `\n${''.padEnd(27)}env ${f.env}` : ''}`;
  });
  return [
    `Usage: ${NAME} status --url <status url> [options]`,
    `       ${NAME} --help | --version`,
    '',
    "Prints a loadwise gateway's backends (state, traffic share, in-flight requests, latency,",
    "expected wait, report age, the agents' CPU, memory and queue) from its status endpoint.",
    '',
    'Options of `status` (flag > environment):',
    ...rows,
    '',
    'Exit codes: 0 ok, 1 the gateway could not be read, 2 invalid usage.',
    '',
  ].join('\n');
}

function version(): string {
  try {
    return (
      JSON.parse(readFileSync(`${__dirname}/../../package.json`, 'utf8')) as { version: string }
    ).version;
  } catch {
    return 'unknown';
  }
}

class UsageError extends Error {}

/** RFC 9110 §5.1: a field name is a token (lowercased here). */
const HEADER_NAME = /^[!#$%&'*+.^_`|~0-9a-z-]+$/;

/**
 * `name: value` from --header, the name lowercased. The value may be a
 * secret (an app's own credentials), so no message ever repeats it.
 */
function splitHeader(raw: string): [string, string] {
  const colon = raw.indexOf(':');
  const name = raw.slice(0, Math.max(colon, 0)).trim().toLowerCase();
  if (colon < 0 || !HEADER_NAME.test(name))
    throw new UsageError('--header: give it as "<name>: <value>"');
  const value = raw.slice(colon + 1).trim();
  // A line break would end the header early (request splitting); Node refuses it anyway.
  if (/[\r\n\0]/.test(value))
    throw new UsageError(`--header ${name}: the value may not contain a line break`);
  return [name, value];
}

/** Node's timers take at most 2^31 - 1 ms; a longer one fires after 1 ms. */
const MAX_TIMER_MS = 2 ** 31 - 1;

function positiveInt(flag: string, raw: string | undefined, fallback: number, min = 1): number {
  if (raw === undefined) return fallback;
  if (!/^\d+$/.test(raw.trim()) || Number(raw) < min || Number(raw) > MAX_TIMER_MS)
    throw new UsageError(
      `--${flag}: must be an integer from ${min} to ${MAX_TIMER_MS} (got ${JSON.stringify(raw)})`,
    );
  return Number(raw);
}

export interface StatusOptions {
  url: URL;
  headers: Record<string, string>;
  /** The header the token goes in; undefined when no token was given. */
  tokenHeader: string | undefined;
  watch: boolean;
  intervalMs: number;
  count: number | undefined;
  timeoutMs: number;
  json: boolean;
}

/** Parses `status` arguments (and the environment) into options; throws UsageError. */
export function parseStatusArgs(argv: string[], env: NodeJS.ProcessEnv): StatusOptions | 'help' {
  let values: Record<string, string | boolean | (string | boolean)[] | undefined>;
  try {
    ({ values } = parseArgs({
      args: argv,
      options: Object.fromEntries(
        STATUS_FLAGS.map((f) => [
          f.flag,
          {
            type: f.type,
            ...(f.multiple ? { multiple: true } : {}),
            ...(f.flag === 'help' ? { short: 'h' } : {}),
          },
        ]),
      ),
      strict: true,
      allowPositionals: false,
    }));
  } catch (err) {
    throw new UsageError((err as Error).message);
  }
  if (values['help']) return 'help';
  const get = (flag: string): string | undefined => {
    const v = values[flag];
    if (typeof v === 'string') return v;
    const e = STATUS_FLAGS.find((f) => f.flag === flag)?.env;
    return e && env[e] !== undefined && env[e] !== '' ? env[e] : undefined;
  };
  const rawUrl = get('url');
  if (!rawUrl) throw new UsageError(`--url: is required (or ${STATUS_ENV.url})`);
  let url: URL;
  try {
    url = new URL(rawUrl);
  } catch {
    throw new UsageError(`--url: not a URL (got ${JSON.stringify(rawUrl)})`);
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:')
    throw new UsageError(`--url: must be http:// or https:// (got ${url.protocol})`);
  const headers: Record<string, string> = { accept: 'application/json' };
  const token = get('token');
  // The gateway's own header by default: the gateway strips it from what it proxies, so a
  // --url a little off (a trailing slash, another mount path) that reaches a backend does
  // not hand it the token, as an Authorization header would.
  const header = (get('token-header') ?? TOKEN_HEADER).toLowerCase();
  if (!HEADER_NAME.test(header))
    throw new UsageError(`--token-header: not a header name (got ${JSON.stringify(header)})`);
  const given = values['header'];
  const envHeader = env[STATUS_ENV.header];
  const extra = Array.isArray(given)
    ? given.map(String)
    : envHeader !== undefined && envHeader !== ''
      ? [envHeader]
      : [];
  for (const [name, value] of extra.map(splitHeader)) {
    if (token !== undefined && name === header)
      throw new UsageError(
        `--header: ${name} already carries the --token; name another --token-header`,
      );
    headers[name] = value;
  }
  if (token !== undefined) headers[header] = header === 'authorization' ? `Bearer ${token}` : token;
  const watch = values['watch'] === true;
  const count = values['count'] === undefined ? undefined : positiveInt('count', get('count'), 1);
  if (count !== undefined && !watch) throw new UsageError('--count: needs --watch');
  if (values['interval-ms'] !== undefined && !watch)
    throw new UsageError('--interval-ms: needs --watch');
  return {
    url,
    headers,
    tokenHeader: token === undefined ? undefined : header,
    watch,
    intervalMs: positiveInt(
      'interval-ms',
      get('interval-ms'),
      DEFAULT_INTERVAL_MS,
      MIN_INTERVAL_MS,
    ),
    count,
    timeoutMs: positiveInt('timeout-ms', get('timeout-ms'), DEFAULT_TIMEOUT_MS),
    json: values['json'] === true,
  };
}

/** Larger bodies are refused: a status document is a few hundred bytes per backend. */
const MAX_BODY_BYTES = 32 * 1024 * 1024;

/**
 * A GET on a connection of its own, closed afterwards: fetch() would keep the
 * socket in a keep-alive pool and hold a one-shot `loadwise status` up for
 * seconds after its answer (undici's keep-alive timeout). `signal` ends it at
 * once (rejects): a --watch's Ctrl-C waited out the request in progress, up to
 * --timeout-ms, and then printed a "retrying" line on its way out.
 */
function get(
  url: URL,
  headers: Record<string, string>,
  timeoutMs: number,
  signal?: AbortSignal,
): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    // A deadline for the whole exchange, not an idle timeout: an answer that trickles a
    // byte at a time (a URL that reaches an event stream, the dashboard's) never went
    // idle, and the CLI, and a --watch's Ctrl-C that waits for the fetch, hung for good.
    const deadline = setTimeout(
      () => req.destroy(new Error(`no answer within ${timeoutMs} ms`)),
      timeoutMs,
    );
    const req = (url.protocol === 'https:' ? httpsRequest : httpRequest)(
      url,
      { headers, agent: false, ...(signal ? { signal } : {}) },
      (res) => {
        const chunks: Buffer[] = [];
        let size = 0;
        res.on('data', (c: Buffer) => {
          size += c.length;
          if (size > MAX_BODY_BYTES) req.destroy(new Error(`body over ${MAX_BODY_BYTES} bytes`));
          else chunks.push(c);
        });
        res.on('end', () => {
          clearTimeout(deadline);
          resolve({ status: res.statusCode ?? 0, body: Buffer.concat(chunks).toString('utf8') });
        });
        res.on('error', (err) => {
          clearTimeout(deadline);
          reject(err);
        });
      },
    );
    req.on('error', (err) => {
      clearTimeout(deadline);
      reject(err);
    });
    req.end();
  });
}

/** The URL as printed: without the user and password it may carry (they are still sent). */
export function shownUrl(url: URL): string {
  if (url.username === '' && url.password === '') return url.href;
  const shown = new URL(url.href);
  shown.username = '';
  shown.password = '';
  return shown.href;
}

export type StatusRead = { ok: true; body: Record<string, unknown> } | { ok: false; error: string };

/**
 * One read of the status endpoint: the parsed JSON, or a one-line reason it failed.
 * `signal` aborts the request in progress (a failed read).
 */
export async function fetchStatus(
  o: Pick<StatusOptions, 'url' | 'headers' | 'tokenHeader' | 'timeoutMs'>,
  signal?: AbortSignal,
): Promise<StatusRead> {
  let res: { status: number; body: string };
  const where = shownUrl(o.url);
  try {
    res = await get(o.url, o.headers, o.timeoutMs, signal);
  } catch (err) {
    const e = err as NodeJS.ErrnoException;
    return { ok: false, error: `${where}: ${e.code ?? e.message}` };
  }
  if (res.status === 401) {
    const hint =
      o.tokenHeader === undefined
        ? `the gateway has a statusToken: give it with --token or ${STATUS_ENV.token}`
        : `the token sent in ${o.tokenHeader} was refused (wrong token, or the gateway reads another --token-header)`;
    return {
      ok: false,
      error: `${where}: 401 unauthorized: ${hint}; if the app's own auth guards it, send that with --header`,
    };
  }
  if (res.status < 200 || res.status > 299)
    // The body is whatever answered --url: its control bytes (an escape sequence) never reach
    // the terminal.
    return { ok: false, error: `${where}: HTTP ${res.status} ${text(res.body.slice(0, 200))}` };
  try {
    const body = JSON.parse(res.body) as unknown;
    // One balancer's snapshot, or a page of several (`services`), each with its backends.
    if (
      body &&
      typeof body === 'object' &&
      balancersOf(body as StatusDocument).every(
        (b) => b && typeof b === 'object' && Array.isArray(b.backends),
      )
    )
      return { ok: true, body: body as Record<string, unknown> };
  } catch {
    // reported below
  }
  return {
    ok: false,
    error: `${where}: not a loadwise status document (is --url the gateway's statusPath?)`,
  };
}

/**
 * On a terminal, each refresh redraws from the top-left corner and clears
 * what the previous frame left below it (ECMA-48 CUP, EL and ED), so the
 * table updates in place without flicker. Elsewhere (a pipe, a file) the
 * frames follow each other.
 */
const CURSOR_HOME = '\x1b[H';
const CLEAR_LINE_END = '\x1b[K';
const CLEAR_SCREEN_END = '\x1b[J';

/**
 * What one read prints: the table (or the JSON line), or, when the read failed, the source
 * and time and the reason (`error`, for stderr). A document that cannot be shown is a failed
 * read too: render.ts reads every field defensively, but should a document still defeat it,
 * the one-shot command says so in one line (not a stack) and --watch shows the failure and
 * retries, as after any other failed read, where the exception used to end it.
 */
export function frameOf(
  o: Pick<StatusOptions, 'url' | 'json'>,
  r: StatusRead,
): { text: string; error?: string } {
  const where = shownUrl(o.url);
  if (r.ok) {
    try {
      return { text: o.json ? `${terminalJson(r.body)}\n` : renderStatus(r.body, where) };
    } catch (err) {
      const why = err instanceof Error ? text(err.message) : 'unknown error';
      r = { ok: false, error: `${where}: cannot show the status document: ${why}` };
    }
  }
  return { text: o.json ? '' : `${where}  ${new Date().toISOString()}\n`, error: r.error };
}

async function statusCommand(argv: string[]): Promise<number> {
  const parsed = parseStatusArgs(argv, process.env);
  if (parsed === 'help') {
    process.stdout.write(helpText());
    return 0;
  }
  const o = parsed;
  if (!o.watch) {
    const f = frameOf(o, await fetchStatus(o));
    if (f.error !== undefined) {
      process.stderr.write(`${NAME}: ${f.error}\n`);
      return 1;
    }
    process.stdout.write(f.text);
    return 0;
  }
  const inPlace = process.stdout.isTTY === true && !o.json;
  let stop = false;
  let wake: (() => void) | undefined;
  const abort = new AbortController();
  // Ctrl-C, SIGTERM, or a stdout whose reader went away (`--watch | head -1` has what it
  // wanted: EPIPE) stop the watch at once, the read in progress aborted.
  const onStop = (): void => {
    stop = true;
    abort.abort();
    wake?.();
  };
  process.once('SIGINT', onStop);
  process.once('SIGTERM', onStop);
  process.stdout.once('error', onStop);
  let lastOk = true;
  try {
    for (let n = 1; !stop; n++) {
      const r = await fetchStatus(o, abort.signal);
      // Stopped during the read: nothing more to show, and the aborted read is no failure.
      if (stop) break;
      const f = frameOf(o, r);
      lastOk = f.error === undefined;
      let text = f.text;
      if (f.error !== undefined)
        text += `${NAME}: ${f.error} (retrying every ${o.intervalMs} ms)\n`;
      if (inPlace) {
        text = `${CURSOR_HOME}${text.replace(/\n/g, `${CLEAR_LINE_END}\n`)}${CLEAR_SCREEN_END}`;
      } else if (!o.json && n > 1) {
        text = `\n${text}`;
      }
      if (o.json && f.error !== undefined) process.stderr.write(`${NAME}: ${f.error}\n`);
      else process.stdout.write(text);
      // Ctrl-C during the fetch: exit now, not after one more interval.
      if (stop || (o.count !== undefined && n >= o.count)) break;
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, o.intervalMs);
        wake = () => {
          clearTimeout(timer);
          resolve();
        };
      });
    }
  } finally {
    process.removeListener('SIGINT', onStop);
    process.removeListener('SIGTERM', onStop);
    process.stdout.removeListener('error', onStop);
  }
  return lastOk ? 0 : 1;
}

async function main(argv: string[]): Promise<number> {
  const [command, ...rest] = argv;
  if (command === undefined) {
    process.stderr.write(helpText());
    return 2;
  }
  if (command === '--help' || command === '-h' || command === 'help') {
    process.stdout.write(helpText());
    return 0;
  }
  if (command === '--version') {
    process.stdout.write(`${version()}\n`);
    return 0;
  }
  if (command !== 'status')
    throw new UsageError(`unknown command ${JSON.stringify(command)} (see --help)`);
  return statusCommand(rest);
}

/** Runs the CLI with `argv` (without node and script); the bin shim calls this. */
export function run(argv: string[]): void {
  // A stdout or stderr whose reader went away (`loadwise status | head -1`) ends the output,
  // never the command with an unhandled 'error' (EPIPE) and its stack, as in the agent's CLI:
  // the stream is left destroyed, later writes to it are dropped (--watch stops: onStop).
  for (const stream of [process.stdout, process.stderr]) stream.on('error', () => undefined);
  main(argv).then(
    (code) => {
      process.exitCode = code;
    },
    (err: unknown) => {
      if (err instanceof UsageError) {
        process.stderr.write(`${NAME}: ${err.message}\n`);
        process.exitCode = 2;
        return;
      }
      process.stderr.write(`${NAME}: ${(err as Error)?.stack ?? String(err)}\n`);
      process.exitCode = 1;
    },
  );
}

if (require.main === module) run(process.argv.slice(2));
