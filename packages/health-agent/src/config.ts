import { statSync } from 'node:fs';
import { readRegularFileSync } from './samplers/bounded-read';
import {
  ENV_PREFIX,
  GATEWAY_SIDE_ENV,
  didYouMean,
  isGatewaySideVariable,
  parseKeyFile,
  unknownOptionText,
  type SigningKey,
} from '@loadwise/protocol';
import { AgentError, invalidOption } from './errors';
import type { AgentOptions } from './options';
import { QUEUE_SOURCES, queueCliOptions } from './queue';

/**
 * One table gives each option its one name. From a row's flag come its
 * LOADWISE_* environment variable and its config file key; its `option` is
 * the createAgent() option it sets, so that an error about `queue.port` is
 * shown to a CLI user as `--kernel-port`. --help and docs/agent.md list the
 * rows. Precedence: flag > environment > config file > default.
 */
type Kind = 'string' | 'int' | 'number' | 'boolean' | 'list';

export interface OptionSpec {
  /** The option's one name: `--<flag>`, LOADWISE_<FLAG>, config key camel(flag). */
  flag: string;
  kind: Kind;
  help: string;
  arg?: string;
  /** Where else the value may come from (default both): --help and --version are flags only. */
  from?: 'flag' | 'flag+env';
  /** The createAgent() option this row sets, as a path (`queue.port`); none for CLI-only rows. */
  option?: string;
  /** Library options that giving this row also sets, e.g. the queue source. */
  implies?: Readonly<Record<string, string>>;
  /** Rows of which one must be given with this one. */
  needs?: readonly string[];
  /** Turns the raw value into the option's value (reads a file, inverts a switch); undefined sets nothing. */
  value?: (v: NonNullable<RawConfig[string]>, raw: RawConfig) => unknown;
}

export const CLI_OPTIONS: readonly OptionSpec[] = [
  {
    flag: 'config',
    kind: 'string',
    arg: 'file',
    help: 'JSON config file; keys are the flag names in camelCase (backendId, intervalMs, ...)',
  },
  {
    flag: 'backend-id',
    option: 'backendId',
    kind: 'string',
    arg: 'id',
    help: 'Backend id as the gateways know it (required)',
  },
  {
    flag: 'broker',
    option: 'broker.url',
    kind: 'string',
    arg: 'url',
    help: 'MQTT broker URL: mqtt://host:1883, mqtts://host:8883, ws(s)://... (required unless --once)',
  },
  {
    flag: 'prefix',
    option: 'prefix',
    kind: 'string',
    arg: 'prefix',
    help: 'Topic prefix (default loadwise)',
  },
  {
    flag: 'service-name',
    option: 'serviceName',
    kind: 'string',
    arg: 'name',
    help: "The gateway balancer's `service` (one gateway, several services): topics go under <prefix>/<name>",
  },
  {
    flag: 'interval-ms',
    option: 'intervalMs',
    kind: 'int',
    arg: 'ms',
    help: 'Sampling and publishing interval (default 1000, min 100)',
  },
  {
    flag: 'cron',
    option: 'cron',
    kind: 'string',
    arg: 'expr',
    help: 'node-cron schedule instead of --interval-ms (which must then agree), e.g. "*/5 * * * * *"',
  },
  {
    flag: 'jitter-ms',
    option: 'jitterMs',
    kind: 'int',
    arg: 'ms',
    help: 'Max random per-agent offset after each scheduled instant (default min(interval, 1000))',
  },
  {
    flag: 'early-rise',
    option: 'earlyRise',
    kind: 'int',
    arg: 'n',
    help: 'Publish early when in-flight + queued rise by n over the last report (default 2, 0 = off; tracker sources)',
  },
  {
    flag: 'early-min-gap-ms',
    option: 'earlyMinGapMs',
    kind: 'int',
    arg: 'ms',
    help: 'Least time between two reports with early reports on (default 300, 10..60000)',
  },
  // The queue sources' rows (queue/index.ts), then --source-timeout-ms.
  ...queueCliOptions(QUEUE_SOURCES),
  {
    flag: 'probe-url',
    option: 'probe.url',
    kind: 'string',
    arg: 'url',
    help: "The service's health URL; a failing probe reports the backend down",
  },
  {
    flag: 'probe-timeout-ms',
    option: 'probe.timeoutMs',
    needs: ['probe-url'],
    kind: 'int',
    arg: 'ms',
    help: 'Probe timeout (default 1000; at most 90% of the interval)',
  },
  {
    flag: 'probe-expect-status',
    option: 'probe.expectStatus',
    needs: ['probe-url'],
    kind: 'list',
    arg: 'codes',
    help: 'Accepted probe statuses, comma-separated (default any 2xx/3xx)',
  },
  {
    flag: 'concurrency-limit',
    option: 'concurrencyLimit',
    kind: 'int',
    arg: 'n',
    help: 'Requests the service serves at once (overrides what the tracker reports)',
  },
  {
    flag: 'service-pid',
    option: 'service.pid',
    kind: 'int',
    arg: 'pid',
    help: "Watched service's PID, for its CPU and RSS",
  },
  {
    flag: 'service-pid-file',
    option: 'service.pidFile',
    kind: 'string',
    arg: 'file',
    help: "Watched service's PID file (a regular file, re-read every sample)",
  },
  {
    flag: 'cpu-threshold',
    option: 'thresholds.cpuUtilization',
    kind: 'number',
    arg: '0..1',
    help: 'Host/cgroup CPU utilization reported as degraded (default 0.9)',
  },
  {
    flag: 'memory-threshold',
    option: 'thresholds.memoryUtilization',
    kind: 'number',
    arg: '0..1',
    help: 'Host/cgroup memory utilization reported as degraded (default 0.9)',
  },
  {
    flag: 'host-source',
    option: 'hostSource',
    kind: 'string',
    arg: 'src',
    help: 'Host CPU/memory reader: proc (default, reads /proc) or systeminformation',
  },
  {
    flag: 'cgroup-root',
    option: 'cgroup.root',
    kind: 'string',
    arg: 'dir',
    // Unused with --no-cgroup, which wins.
    value: (v, raw) => (raw['noCgroup'] === true ? v : existingDir('cgroup-root', String(v))),
    help: 'cgroup mount (default /sys/fs/cgroup)',
  },
  {
    flag: 'no-cgroup',
    option: 'cgroup',
    value: (v) => (v ? false : undefined),
    kind: 'boolean',
    help: 'Do not read cgroup limits',
  },
  {
    flag: 'proc-root',
    option: 'procRoot',
    kind: 'string',
    arg: 'dir',
    value: (v) => existingDir('proc-root', String(v)),
    help: 'procfs mount (default /proc)',
  },
  {
    flag: 'client-id',
    option: 'broker.clientId',
    kind: 'string',
    arg: 'id',
    help: 'MQTT client id (default lw-agent-<backend-id>-<random>; must be unique)',
  },
  {
    flag: 'username',
    option: 'broker.username',
    kind: 'string',
    arg: 'user',
    help: 'MQTT username',
  },
  {
    flag: 'password',
    option: 'broker.password',
    kind: 'string',
    arg: 'pass',
    help: 'MQTT password (prefer LOADWISE_PASSWORD: flags show in ps)',
  },
  {
    flag: 'password-file',
    option: 'broker.password',
    value: (v) => readFileOption('password-file', String(v)).toString('utf8').trim(),
    kind: 'string',
    arg: 'file',
    help: 'File holding the MQTT password',
  },
  {
    flag: 'tls-ca',
    option: 'broker.ca',
    value: (v) => readFileOption('tls-ca', String(v)),
    kind: 'string',
    arg: 'file',
    help: 'PEM CA bundle for mqtts:// / wss://',
  },
  {
    flag: 'tls-cert',
    option: 'broker.cert',
    value: (v) => readFileOption('tls-cert', String(v)),
    kind: 'string',
    arg: 'file',
    help: 'PEM client certificate (mutual TLS)',
  },
  {
    flag: 'tls-key',
    option: 'broker.key',
    value: (v) => readFileOption('tls-key', String(v)),
    kind: 'string',
    arg: 'file',
    help: 'PEM client key (mutual TLS)',
  },
  {
    flag: 'tls-insecure',
    option: 'broker.rejectUnauthorized',
    value: (v) => (v ? false : undefined),
    kind: 'boolean',
    help: 'Do not verify the broker certificate (testing only)',
  },
  {
    flag: 'reconnect-ms',
    option: 'broker.reconnectPeriodMs',
    kind: 'int',
    arg: 'ms',
    help: 'Wait between broker reconnect attempts (default 1000, at most 2147483647)',
  },
  {
    flag: 'keepalive-s',
    option: 'broker.keepaliveS',
    kind: 'int',
    arg: 's',
    help: 'MQTT keepalive; the Last Will fires after 1.5x this (default 10)',
  },
  {
    flag: 'key-file',
    option: 'signingKey',
    value: (v, raw) => signingKey(String(v), raw['keyId'] as string | undefined),
    kind: 'string',
    arg: 'file',
    help: 'Signing key file ("<keyId> <base64 secret> [<backends>]" per line); signs every message',
  },
  {
    flag: 'key-id',
    needs: ['key-file'],
    kind: 'string',
    arg: 'id',
    help: 'Which key of --key-file signs (default the first)',
  },
  {
    flag: 'advertise-url',
    option: 'advertiseUrl',
    needs: ['key-file'],
    kind: 'string',
    arg: 'url',
    help: 'Register the backend at url with gateways that run discovery (signed, renewed every 20 s, cleared on stop)',
  },
  {
    flag: 'drain-grace-ms',
    option: 'drainGraceMs',
    kind: 'int',
    arg: 'ms',
    help: 'On SIGTERM/SIGINT, report draining this long before offline (default 2000)',
  },
  {
    flag: 'agent-pid-file',
    kind: 'string',
    arg: 'file',
    help: "Write the agent's own PID here (for `loadwise-agent drain|undrain --pid-file`)",
  },
  { flag: 'log-level', kind: 'string', arg: 'level', help: 'error, warn, info (default) or debug' },
  { flag: 'once', kind: 'boolean', help: 'Print one sample as JSON and exit (no broker needed)' },
  { flag: 'help', from: 'flag', kind: 'boolean', help: 'Show this help' },
  { flag: 'version', from: 'flag', kind: 'boolean', help: 'Show the version' },
];

const CLI_ONLY = new Set(['config', 'once']);

/** Whether a row can also come from its LOADWISE_* variable: every one but --help and --version. */
export function fromEnvironment(flag: string): boolean {
  return specOf(flag)?.from !== 'flag';
}

export function camel(flag: string): string {
  return flag.replace(/-([a-z])/g, (_, c: string) => c.toUpperCase());
}
export function envName(flag: string): string {
  return `${ENV_PREFIX}${flag.replace(/-/g, '_').toUpperCase()}`;
}
/** The LOADWISE_* variables the CLI reads: a row's each, but --help's and --version's. */
export function agentVariables(): string[] {
  return CLI_OPTIONS.filter((s) => fromEnvironment(s.flag)).map((s) => envName(s.flag));
}

/**
 * One warning for each variable of `env` named like a loadwise one (LOADWISE_, in any
 * case) that the CLI does not read, with the nearest known name when one is close: a
 * misspelt `LOADWISE_TRAKER_URL` was ignored without a word, and the agent ran without
 * its queue source. Not the variables of the gateway side's programs (@loadwise/protocol
 * environment.ts): one environment may serve the agent and a gateway.
 */
export function unknownVariables(env: NodeJS.ProcessEnv): string[] {
  const own = agentVariables();
  const known = [...own, ...GATEWAY_SIDE_ENV].map((n) => n.slice(ENV_PREFIX.length));
  const out: string[] = [];
  for (const name of Object.keys(env).sort()) {
    if (!name.toUpperCase().startsWith(ENV_PREFIX)) continue;
    if (own.includes(name) || isGatewaySideVariable(name)) continue;
    // Without the prefix: every name shares it, and its length would let a nonsense name
    // (LOADWISE_FOO) be "near" a short one (LOADWISE_ONCE).
    const near = didYouMean(name.slice(ENV_PREFIX.length), known);
    out.push(
      `${name}: unknown variable, ignored ${near ? `(did you mean ${ENV_PREFIX}${near}?)` : '(see --help)'}`,
    );
  }
  return out;
}

/** The row's key in a --config file; none for --config itself, --once, --help and --version. */
export function configKey(spec: OptionSpec): string | undefined {
  return spec.from === 'flag' || CLI_ONLY.has(spec.flag) ? undefined : camel(spec.flag);
}

function specOf(flag: string): OptionSpec | undefined {
  return CLI_OPTIONS.find((s) => s.flag === flag);
}

export type RawConfig = Record<string, string | number | boolean | string[] | number[] | undefined>;

function describe(spec: OptionSpec): string {
  return `--${spec.flag}`;
}

/** Options whose value is a secret: an error about them never shows it. */
const SECRET_FLAGS = new Set(['password']);

/** A whole decimal number, as `--interval-ms` has always read one. */
const INT_RE = /^-?\d+$/;
/** A decimal fraction (`0.9`, `.9`): no exponent, as INT_RE has none. */
const NUMBER_RE = /^-?(?:\d+\.?\d*|\.\d+)$/;

/**
 * `text` as a number if it is decimal as `re` spells one, else NaN. Number() alone also
 * reads `0x1`, `0b1`, `0o620`, `2e2` and `Infinity`: `--cpu-threshold 0x1` was 1 and
 * `--probe-expect-status 0x1F4,2e2` was 500 and 200, forms no `int` option took.
 */
function decimal(text: unknown, re: RegExp): number {
  const t = typeof text === 'string' ? text.trim() : '';
  return re.test(t) ? Number(t) : NaN;
}

function coerce(spec: OptionSpec, value: unknown, origin: string): RawConfig[string] {
  const bad = (why: string): never => {
    // A password of the wrong type (a number in a config file) was echoed in the error.
    const shown = SECRET_FLAGS.has(spec.flag) ? '<redacted>' : JSON.stringify(value);
    throw invalidOption(describe(spec), `${why} (from ${origin}, got ${shown})`);
  };
  switch (spec.kind) {
    case 'boolean':
      if (typeof value === 'boolean') return value;
      // Not '': an empty value (a blank line of an env file, a template variable that
      // expanded to nothing) read as true, and `LOADWISE_TLS_INSECURE=` silently turned the
      // broker's certificate check off.
      if (value === 'true' || value === '1') return true;
      if (value === 'false' || value === '0') return false;
      return bad('must be true or false');
    case 'int': {
      const n = typeof value === 'number' ? value : decimal(value, INT_RE);
      return Number.isSafeInteger(n) ? n : bad('must be an integer');
    }
    case 'number': {
      const n = typeof value === 'number' ? value : decimal(value, NUMBER_RE);
      return Number.isFinite(n) ? n : bad('must be a number');
    }
    case 'list': {
      const items = Array.isArray(value)
        ? value
        : typeof value === 'string'
          ? value.split(',')
          : bad('must be a list');
      const nums = items.map((x) => (typeof x === 'number' ? x : decimal(x, INT_RE)));
      return nums.every((n) => Number.isSafeInteger(n))
        ? nums
        : bad('must be comma-separated integers');
    }
    default:
      return typeof value === 'string' && value !== '' ? value : bad('must be a non-empty string');
  }
}

/** The config file, key, password and TLS files: far below this; a larger one is not one of them. */
const MAX_START_FILE_BYTES = 1024 * 1024;

/**
 * A file read once at start (--config, --key-file, --password-file, TLS files): a
 * regular file of at most 1 MiB (readRegularFileSync), else why not. readFileSync took
 * whatever the path was: --config /dev/zero grew the agent to 2.1 GB, a named pipe hung
 * it with no output.
 */
function readStartFile(path: string): { bytes: Buffer } | { why: string } {
  const r = readRegularFileSync(path, MAX_START_FILE_BYTES);
  if ('bytes' in r) return r;
  return { why: r.error === 'too large' ? 'larger than 1 MiB' : r.error };
}

/** The config file a merged record's secret came from (for the permissions warning). */
const secretFiles = new WeakMap<RawConfig, string>();

/** The --config file of `raw` if it holds a secret (a password, a broker URL's), else undefined. */
export function configFileWithSecret(raw: RawConfig): string | undefined {
  return secretFiles.get(raw);
}

/** Where a merged value came from: its level (config file 0, environment 1, flag 2) and its name there. */
interface Origin {
  level: number;
  name: string;
}

/**
 * Merges config file, environment and flags (highest) into one raw record keyed by camelCase
 * name, then settles the broker password (onePassword).
 */
export function mergeSources(flags: Record<string, unknown>, env: NodeJS.ProcessEnv): RawConfig {
  const out: RawConfig = {};
  const origins = new Map<string, Origin>();
  const configPath = (flags['config'] as string | undefined) ?? env[envName('config')];
  if (configPath) {
    const read = readStartFile(configPath);
    if ('why' in read) throw new AgentError('LW_AGENT_CONFIG_FILE', `${configPath}: ${read.why}`);
    let doc: unknown;
    try {
      doc = JSON.parse(read.bytes.toString('utf8'));
    } catch (err) {
      throw new AgentError('LW_AGENT_CONFIG_FILE', `${configPath}: ${(err as Error).message}`);
    }
    if (!doc || typeof doc !== 'object' || Array.isArray(doc)) {
      throw new AgentError('LW_AGENT_CONFIG_FILE', `${configPath}: must hold a JSON object`);
    }
    const byKey = new Map<string, OptionSpec>();
    for (const spec of CLI_OPTIONS) {
      const key = configKey(spec);
      if (key) byKey.set(key, spec);
    }
    for (const [key, value] of Object.entries(doc as Record<string, unknown>)) {
      const spec = byKey.get(key);
      if (!spec) {
        throw new AgentError(
          'LW_AGENT_CONFIG_FILE',
          `${configPath}: ${unknownOptionText(key, [...byKey.keys()])}`,
          key,
        );
      }
      out[key] = coerce(spec, value, configPath);
      origins.set(key, { level: 0, name: `${key} in ${configPath}` });
      // A broker URL with credentials in it (`mqtt://user:pass@host`) is a secret too.
      if (SECRET_FLAGS.has(spec.flag) || (spec.flag === 'broker' && String(value).includes('@')))
        secretFiles.set(out, configPath);
    }
  }
  for (const spec of CLI_OPTIONS) {
    if (!fromEnvironment(spec.flag) || spec.flag === 'config') continue;
    const v = env[envName(spec.flag)];
    // Empty is unset, as for the gateway's CLI.
    if (v !== undefined && v !== '') {
      out[camel(spec.flag)] = coerce(spec, v, envName(spec.flag));
      origins.set(camel(spec.flag), { level: 1, name: envName(spec.flag) });
    }
  }
  for (const spec of CLI_OPTIONS) {
    const v = flags[spec.flag];
    if (v !== undefined && spec.flag !== 'config') {
      out[camel(spec.flag)] = coerce(spec, v, describe(spec));
      origins.set(camel(spec.flag), { level: 2, name: describe(spec) });
    }
  }
  onePassword(out, origins);
  oneUser(out, origins);
  return out;
}

/** The password a broker URL holds (`mqtt://user:pass@host`), '' for none or an unparsable URL. */
function urlPassword(url: unknown): string {
  try {
    return typeof url === 'string' ? new URL(url).password : '';
  } catch {
    return '';
  }
}

/**
 * One broker password of three places: --password, --password-file and the broker URL
 * (mqtt.js takes the URL's over the others). Each row merged on its own, so two of them
 * given at once both reached the options and one won without a word: the file over the
 * flag, the URL over both. The one from the highest level wins, as flag > environment >
 * file does for one option; the others are dropped (a URL loses its password, and its user
 * when a username is given apart). Two at
 * the highest level are refused, naming both places and never the value.
 */
function onePassword(out: RawConfig, origins: Map<string, Origin>): void {
  const given: Array<{ key: string; flag: string; origin: Origin }> = [];
  if (urlPassword(out['broker']) !== '') {
    const o = origins.get('broker')!;
    given.push({ key: 'broker', flag: 'broker', origin: { ...o, name: `the URL of ${o.name}` } });
  }
  for (const flag of ['password', 'password-file']) {
    const o = origins.get(camel(flag));
    if (o && out[camel(flag)] !== undefined) given.push({ key: camel(flag), flag, origin: o });
  }
  if (given.length < 2) return;
  const top = Math.max(...given.map((g) => g.origin.level));
  const winners = given.filter((g) => g.origin.level === top);
  if (winners.length > 1) {
    const [a, b] = winners as [(typeof winners)[number], (typeof winners)[number]];
    throw invalidOption(
      `--${b.flag}`,
      `give the broker password once: ${a.origin.name} and ${b.origin.name} both give one`,
    );
  }
  for (const g of given) {
    if (g.origin.level === top) continue;
    if (g.key !== 'broker') {
      delete out[g.key];
      continue;
    }
    const u = new URL(out['broker'] as string);
    u.password = '';
    out['broker'] = u.toString();
  }
}

/**
 * One broker user, by the password's rule: mqtt.js sends the URL's user
 * (`mqtt://alice@host`) whatever `username` says, so a URL's user and another username
 * were two, one of them dropped without a word (alice's name went with bob's password,
 * or a --username flag was ignored for an environment's URL). The one of the higher level
 * is used: a URL below loses its user, a username below is dropped; one at the same level
 * is refused, and so is a username above a URL that keeps its password (that password is
 * the URL user's). Both name their places, never a value.
 */
function oneUser(out: RawConfig, origins: Map<string, Origin>): void {
  const url = origins.get('broker');
  const user = origins.get('username');
  if (url === undefined || user === undefined || out['username'] === undefined) return;
  let parsed: URL;
  try {
    parsed = new URL(String(out['broker']));
  } catch {
    return; // not a URL: the broker option says so
  }
  if (parsed.username === '') return;
  let urlUser: string;
  try {
    urlUser = decodeURIComponent(parsed.username);
  } catch {
    throw invalidOption('--broker', `the user in the URL of ${url.name} has a malformed %-escape`);
  }
  // The same user twice is no conflict.
  if (urlUser === String(out['username'])) return;
  const both = `the URL of ${url.name} and ${user.name} both give one`;
  if (user.level === url.level)
    throw invalidOption('--username', `give the broker user once: ${both}`);
  if (user.level < url.level) {
    delete out['username'];
    return;
  }
  if (parsed.password !== '')
    throw invalidOption(
      '--username',
      `give the broker user once: ${both}, and the URL's password is its own user's`,
    );
  parsed.username = '';
  out['broker'] = parsed.toString();
}

/**
 * `--backend-id: given 2 times; give it once` for the first flag of `names` (the options
 * of a command line, in order) given more than once, else undefined. parseArgs keeps the
 * last of a repeated flag: `--backend-id api-1 --backend-id api-2` published as api-2,
 * and no flag takes several values (a list is comma-separated). Never shows a value (a
 * repeated --password).
 */
export function repeatedFlag(names: readonly string[]): string | undefined {
  const count = new Map<string, number>();
  for (const n of names) count.set(n, (count.get(n) ?? 0) + 1);
  for (const [name, n] of count) {
    if (n < 2) continue;
    const list = specOf(name)?.kind === 'list' ? ' (a list is comma-separated: 200,204)' : '';
    return `--${name}: given ${n} times; give it once${list}`;
  }
  return undefined;
}

/** `unknown option --kernel-prot (did you mean --kernel-port?)` for a flag not in the table, else undefined. */
export function unknownFlag(name: string): string | undefined {
  const flags = CLI_OPTIONS.map((s) => s.flag);
  return flags.includes(name) || name === 'h' ? undefined : unknownOptionText(name, flags, '--');
}

/**
 * A file an option names, read at start: a regular file of at most 1 MiB
 * (readRegularFileSync), else a coded error naming the flag.
 */
function readFileOption(flag: string, path: string): Buffer {
  const r = readStartFile(path);
  if ('why' in r) throw new AgentError('LW_AGENT_KEY_FILE', `--${flag} ${path}: ${r.why}`);
  return r.bytes;
}

/**
 * A root directory an option names (--cgroup-root, --proc-root), checked at start: one
 * that did not exist (a typo) was taken, and its signal left the reports without a word
 * (the cgroup block was just missing).
 */
function existingDir(flag: string, dir: string): string {
  let isDir: boolean;
  try {
    isDir = statSync(dir).isDirectory();
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    throw invalidOption(
      `--${flag}`,
      code === 'ENOENT' ? `${dir} does not exist` : `${dir} cannot be read (${code})`,
    );
  }
  if (!isDir) throw invalidOption(`--${flag}`, `${dir} is not a directory`);
  return dir;
}

/** The key of --key-file that signs: --key-id's, or the first. */
function signingKey(file: string, wanted: string | undefined): SigningKey {
  let keys;
  try {
    keys = parseKeyFile(readFileOption('key-file', file).toString('utf8'));
  } catch (err) {
    if (err instanceof AgentError) throw err;
    throw new AgentError(
      'LW_AGENT_KEY_FILE',
      `--key-file ${file}: ${(err as Error).message.replace(/^LW_PROTO_\w+: /, '')}`,
    );
  }
  const key = wanted ? keys.find((k) => k.keyId === wanted) : keys[0];
  if (!key) throw invalidOption('--key-id', `${wanted} is not in ${file}`);
  return key;
}

function setPath(target: Record<string, unknown>, path: string, value: unknown): void {
  const keys = path.split('.');
  let at = target;
  for (const k of keys.slice(0, -1)) {
    if (typeof at[k] !== 'object' || at[k] === null) at[k] = {};
    at = at[k] as Record<string, unknown>;
  }
  at[keys.at(-1)!] = value;
}

const given = (c: RawConfig, spec: OptionSpec): boolean => {
  const v = c[camel(spec.flag)];
  return v !== undefined && v !== '';
};

/**
 * Turns the merged raw config into library options, row by row through the
 * table (file reads happen here, so their errors name the flag). The
 * library then validates every value (createAgent(), agentOptionsSchema in options.ts).
 */
export function toAgentOptions(c: RawConfig, opts: { requireBroker: boolean }): AgentOptions {
  const required = (flag: string, extra = ''): never => {
    throw invalidOption(
      `--${flag}`,
      `is required (or ${envName(flag)}, or ${camel(flag)} in --config)${extra}`,
    );
  };
  if (!given(c, specOf('backend-id')!)) required('backend-id');
  const o: Record<string, unknown> = {};
  const implied = new Map<string, OptionSpec>();
  for (const spec of CLI_OPTIONS) {
    if (!given(c, spec)) continue;
    if (spec.needs && !spec.needs.some((f) => given(c, specOf(f)!))) {
      throw invalidOption(
        `--${spec.flag}`,
        `needs ${spec.needs.map((f) => `--${f}`).join(' or ')}`,
      );
    }
    for (const [path, value] of Object.entries(spec.implies ?? {})) {
      const other = implied.get(path);
      if (other) {
        throw invalidOption(
          `--${spec.flag}`,
          `choose one ${path.replace('.', ' ')} (also given: --${other.flag})`,
        );
      }
      implied.set(path, spec);
      setPath(o, path, value);
    }
    if (!spec.option) continue;
    const raw = c[camel(spec.flag)]!;
    const value = spec.value ? spec.value(raw, c) : raw;
    if (value !== undefined) setPath(o, spec.option, value);
  }
  // The broker's other settings mean nothing without its URL (--once drops it all).
  if (!(o['broker'] as { url?: string } | undefined)?.url) {
    delete o['broker'];
    if (opts.requireBroker) required('broker', '; use --once to sample without one');
  }
  return o as unknown as AgentOptions;
}

/**
 * The flag that sets a library option, for errors: `queue.url` is
 * --tracker-url or --prometheus-url, whichever was given; `service` (the
 * object) is the first given row under it.
 */
export function flagFor(option: string, c: RawConfig): string | undefined {
  const path = option.replace(/\[\d+\]/g, '');
  const rows = CLI_OPTIONS.filter((s) => s.option !== undefined && given(c, s));
  const row =
    rows.find((s) => s.option === path) ??
    rows.find((s) => s.option!.startsWith(`${path}.`) || path.startsWith(`${s.option!}.`)) ??
    CLI_OPTIONS.find((s) => s.option === path); // a required one not given
  return row && `--${row.flag}`;
}
