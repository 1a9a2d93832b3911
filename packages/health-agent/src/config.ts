import { readFileSync } from 'node:fs';
import { parseKeyFile, type QueueField } from '@loadwise/protocol';
import { AgentError, invalidOption } from './errors';
import type { AgentOptions } from './options';
import type { HostSource } from './samplers/host';

/**
 * One table drives the CLI flags, the LOADWISE_* environment variables, the
 * config file keys and --help, so the four cannot drift apart.
 * Precedence: flag > environment > config file > default.
 */
type Kind = 'string' | 'int' | 'number' | 'boolean' | 'list';

export interface OptionSpec {
  flag: string;
  kind: Kind;
  help: string;
  arg?: string;
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
    kind: 'string',
    arg: 'id',
    help: 'Backend id as the gateways know it (required)',
  },
  {
    flag: 'broker',
    kind: 'string',
    arg: 'url',
    help: 'MQTT broker URL: mqtt://host:1883, mqtts://host:8883, ws(s)://... (required unless --once)',
  },
  { flag: 'prefix', kind: 'string', arg: 'prefix', help: 'Topic prefix (default loadwise)' },
  {
    flag: 'service-name',
    kind: 'string',
    arg: 'name',
    help: "The gateway balancer's `service` (one gateway, several services): topics go under <prefix>/<name>",
  },
  {
    flag: 'interval-ms',
    kind: 'int',
    arg: 'ms',
    help: 'Sampling and publishing interval (default 1000, min 100)',
  },
  {
    flag: 'cron',
    kind: 'string',
    arg: 'expr',
    help: 'node-cron schedule instead of --interval-ms, e.g. "*/5 * * * * *"',
  },
  {
    flag: 'jitter-ms',
    kind: 'int',
    arg: 'ms',
    help: 'Max random per-agent offset after each scheduled instant (default min(interval, 1000))',
  },
  {
    flag: 'early-rise',
    kind: 'int',
    arg: 'n',
    help: 'Publish early when in-flight + queued rise by n over the last report (default 2, 0 = off; tracker sources)',
  },
  {
    flag: 'early-min-gap-ms',
    kind: 'int',
    arg: 'ms',
    help: 'Least time between two reports with early reports on (default 300, 10..60000)',
  },
  {
    flag: 'tracker-url',
    kind: 'string',
    arg: 'url',
    help: 'Queue source: URL of the trackRequests() exposePath, e.g. http://127.0.0.1:3000/.well-known/loadwise/stats',
  },
  {
    flag: 'kernel-port',
    kind: 'int',
    arg: 'port',
    help: 'Queue source: read accept backlog and established connections of this port from /proc/net/tcp*',
  },
  {
    flag: 'prometheus-url',
    kind: 'string',
    arg: 'url',
    help: 'Queue source: Prometheus text endpoint',
  },
  {
    flag: 'prometheus-gauge',
    kind: 'string',
    arg: 'name',
    help: 'Gauge to read from --prometheus-url (summed over label sets)',
  },
  {
    flag: 'prometheus-field',
    kind: 'string',
    arg: 'field',
    help: 'Queue field the gauge reports: queued (default), inFlight, acceptBacklog, openConnections',
  },
  {
    flag: 'source-timeout-ms',
    kind: 'int',
    arg: 'ms',
    help: 'Timeout of a tracker or Prometheus read (default 500)',
  },
  {
    flag: 'probe-url',
    kind: 'string',
    arg: 'url',
    help: "The service's health URL; a failing probe reports the backend down",
  },
  { flag: 'probe-timeout-ms', kind: 'int', arg: 'ms', help: 'Probe timeout (default 1000)' },
  {
    flag: 'probe-expect-status',
    kind: 'list',
    arg: 'codes',
    help: 'Accepted probe statuses, comma-separated (default any 2xx/3xx)',
  },
  {
    flag: 'concurrency-limit',
    kind: 'int',
    arg: 'n',
    help: 'Requests the service serves at once (overrides what the tracker reports)',
  },
  {
    flag: 'service-pid',
    kind: 'int',
    arg: 'pid',
    help: "Watched service's PID, for its CPU and RSS",
  },
  {
    flag: 'service-pid-file',
    kind: 'string',
    arg: 'file',
    help: "Watched service's PID file (re-read every sample)",
  },
  {
    flag: 'cpu-threshold',
    kind: 'number',
    arg: '0..1',
    help: 'Host/cgroup CPU utilization reported as degraded (default 0.9)',
  },
  {
    flag: 'memory-threshold',
    kind: 'number',
    arg: '0..1',
    help: 'Host/cgroup memory utilization reported as degraded (default 0.9)',
  },
  {
    flag: 'host-source',
    kind: 'string',
    arg: 'src',
    help: 'Host CPU/memory reader: proc (default, reads /proc) or systeminformation',
  },
  {
    flag: 'cgroup-root',
    kind: 'string',
    arg: 'dir',
    help: 'cgroup mount (default /sys/fs/cgroup)',
  },
  { flag: 'no-cgroup', kind: 'boolean', help: 'Do not read cgroup limits' },
  { flag: 'proc-root', kind: 'string', arg: 'dir', help: 'procfs mount (default /proc)' },
  {
    flag: 'client-id',
    kind: 'string',
    arg: 'id',
    help: 'MQTT client id (default lw-agent-<backend-id>-<random>; must be unique)',
  },
  { flag: 'username', kind: 'string', arg: 'user', help: 'MQTT username' },
  {
    flag: 'password',
    kind: 'string',
    arg: 'pass',
    help: 'MQTT password (prefer LOADWISE_PASSWORD: flags show in ps)',
  },
  { flag: 'password-file', kind: 'string', arg: 'file', help: 'File holding the MQTT password' },
  { flag: 'tls-ca', kind: 'string', arg: 'file', help: 'PEM CA bundle for mqtts:// / wss://' },
  { flag: 'tls-cert', kind: 'string', arg: 'file', help: 'PEM client certificate (mutual TLS)' },
  { flag: 'tls-key', kind: 'string', arg: 'file', help: 'PEM client key (mutual TLS)' },
  {
    flag: 'tls-insecure',
    kind: 'boolean',
    help: 'Do not verify the broker certificate (testing only)',
  },
  {
    flag: 'reconnect-ms',
    kind: 'int',
    arg: 'ms',
    help: 'Wait between broker reconnect attempts (default 1000)',
  },
  {
    flag: 'keepalive-s',
    kind: 'int',
    arg: 's',
    help: 'MQTT keepalive; the Last Will fires after 1.5x this (default 10)',
  },
  {
    flag: 'key-file',
    kind: 'string',
    arg: 'file',
    help: 'Signing key file ("<keyId> <base64 secret>" per line); signs every message',
  },
  {
    flag: 'key-id',
    kind: 'string',
    arg: 'id',
    help: 'Which key of --key-file signs (default the first)',
  },
  {
    flag: 'drain-grace-ms',
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
  { flag: 'help', kind: 'boolean', help: 'Show this help' },
  { flag: 'version', kind: 'boolean', help: 'Show the version' },
];

/**
 * Whether a flag can also come from its LOADWISE_* variable: every one except
 * --help and --version, which a daemon's environment must not turn on.
 */
export function fromEnvironment(flag: string): boolean {
  return flag !== 'help' && flag !== 'version';
}

export function camel(flag: string): string {
  return flag.replace(/-([a-z])/g, (_, c: string) => c.toUpperCase());
}
export function envName(flag: string): string {
  return `LOADWISE_${flag.replace(/-/g, '_').toUpperCase()}`;
}

export type RawConfig = Record<string, string | number | boolean | string[] | number[] | undefined>;

function describe(spec: OptionSpec): string {
  return `--${spec.flag}`;
}

function coerce(spec: OptionSpec, value: unknown, origin: string): RawConfig[string] {
  const bad = (why: string): never => {
    throw invalidOption(describe(spec), `${why} (from ${origin}, got ${JSON.stringify(value)})`);
  };
  switch (spec.kind) {
    case 'boolean':
      if (typeof value === 'boolean') return value;
      if (value === 'true' || value === '1' || value === '') return true;
      if (value === 'false' || value === '0') return false;
      return bad('must be true or false');
    case 'int': {
      const n =
        typeof value === 'number'
          ? value
          : typeof value === 'string' && /^-?\d+$/.test(value.trim())
            ? Number(value)
            : NaN;
      return Number.isSafeInteger(n) ? n : bad('must be an integer');
    }
    case 'number': {
      const n =
        typeof value === 'number'
          ? value
          : typeof value === 'string' && value.trim() !== ''
            ? Number(value)
            : NaN;
      return Number.isFinite(n) ? n : bad('must be a number');
    }
    case 'list': {
      const items = Array.isArray(value)
        ? value
        : typeof value === 'string'
          ? value.split(',')
          : bad('must be a list');
      const nums = items.map((x) => Number(String(x).trim()));
      return nums.every((n) => Number.isSafeInteger(n))
        ? nums
        : bad('must be comma-separated integers');
    }
    default:
      return typeof value === 'string' && value !== '' ? value : bad('must be a non-empty string');
  }
}

/** Merges config file, environment and flags (highest) into one raw record keyed by camelCase name. */
export function mergeSources(flags: Record<string, unknown>, env: NodeJS.ProcessEnv): RawConfig {
  const out: RawConfig = {};
  const configPath = (flags['config'] as string | undefined) ?? env[envName('config')];
  if (configPath) {
    let doc: unknown;
    try {
      doc = JSON.parse(readFileSync(configPath, 'utf8'));
    } catch (err) {
      throw new AgentError('LW_AGENT_CONFIG_FILE', `${configPath}: ${(err as Error).message}`);
    }
    if (!doc || typeof doc !== 'object' || Array.isArray(doc)) {
      throw new AgentError('LW_AGENT_CONFIG_FILE', `${configPath}: must hold a JSON object`);
    }
    const byCamel = new Map(CLI_OPTIONS.map((s) => [camel(s.flag), s]));
    for (const [key, value] of Object.entries(doc as Record<string, unknown>)) {
      const spec = byCamel.get(key);
      if (!spec || ['config', 'help', 'version', 'once'].includes(spec.flag)) {
        throw new AgentError(
          'LW_AGENT_CONFIG_FILE',
          `${configPath}: unknown key ${JSON.stringify(key)}`,
        );
      }
      out[key] = coerce(spec, value, configPath);
    }
  }
  for (const spec of CLI_OPTIONS) {
    if (!fromEnvironment(spec.flag)) continue;
    const v = env[envName(spec.flag)];
    if (v !== undefined && spec.flag !== 'config')
      out[camel(spec.flag)] = coerce(spec, v, envName(spec.flag));
  }
  for (const spec of CLI_OPTIONS) {
    const v = flags[spec.flag];
    if (v !== undefined && spec.flag !== 'config')
      out[camel(spec.flag)] = coerce(spec, v, describe(spec));
  }
  return out;
}

function readFileOption(flag: string, path: string): Buffer {
  try {
    return readFileSync(path);
  } catch (err) {
    throw new AgentError(
      'LW_AGENT_KEY_FILE',
      `--${flag} ${path}: ${(err as NodeJS.ErrnoException).code ?? String(err)}`,
    );
  }
}

/** Turns the merged raw config into library options (file reads happen here, so errors name the flag). */
export function toAgentOptions(c: RawConfig, opts: { requireBroker: boolean }): AgentOptions {
  const s = (k: string): string | undefined => c[k] as string | undefined;
  const n = (k: string): number | undefined => c[k] as number | undefined;
  const backendId = s('backendId');
  if (!backendId)
    throw invalidOption(
      '--backend-id',
      'is required (or LOADWISE_BACKEND_ID, or backendId in --config)',
    );
  const o: AgentOptions = { backendId };
  if (s('prefix')) o.prefix = s('prefix');
  if (s('serviceName')) o.serviceName = s('serviceName');
  if (n('intervalMs') !== undefined) o.intervalMs = n('intervalMs');
  if (s('cron')) o.cron = s('cron');
  if (n('jitterMs') !== undefined) o.jitterMs = n('jitterMs');
  if (n('earlyRise') !== undefined) o.earlyRise = n('earlyRise');
  if (n('earlyMinGapMs') !== undefined) o.earlyMinGapMs = n('earlyMinGapMs');

  const brokerUrl = s('broker');
  if (brokerUrl) {
    let password = s('password');
    if (s('passwordFile'))
      password = readFileOption('password-file', s('passwordFile')!).toString('utf8').trim();
    o.broker = {
      url: brokerUrl,
      ...(s('clientId') ? { clientId: s('clientId') } : {}),
      ...(s('username') ? { username: s('username') } : {}),
      ...(password !== undefined ? { password } : {}),
      ...(s('tlsCa') ? { ca: readFileOption('tls-ca', s('tlsCa')!) } : {}),
      ...(s('tlsCert') ? { cert: readFileOption('tls-cert', s('tlsCert')!) } : {}),
      ...(s('tlsKey') ? { key: readFileOption('tls-key', s('tlsKey')!) } : {}),
      ...(c['tlsInsecure'] ? { rejectUnauthorized: false } : {}),
      ...(n('reconnectMs') !== undefined ? { reconnectPeriodMs: n('reconnectMs') } : {}),
      ...(n('keepaliveS') !== undefined ? { keepaliveS: n('keepaliveS') } : {}),
    };
  } else if (opts.requireBroker) {
    throw invalidOption(
      '--broker',
      'is required (or LOADWISE_BROKER); use --once to sample without one',
    );
  }

  if (s('keyFile')) {
    const text = readFileOption('key-file', s('keyFile')!).toString('utf8');
    let keys;
    try {
      keys = parseKeyFile(text);
    } catch (err) {
      throw new AgentError(
        'LW_AGENT_KEY_FILE',
        `--key-file ${s('keyFile')}: ${(err as Error).message.replace(/^LW_PROTO_\w+: /, '')}`,
      );
    }
    const wanted = s('keyId');
    const key = wanted ? keys.find((k) => k.keyId === wanted) : keys[0];
    if (!key) throw invalidOption('--key-id', `${wanted} is not in ${s('keyFile')}`);
    o.signingKey = key;
  } else if (s('keyId')) {
    throw invalidOption('--key-id', 'needs --key-file');
  }

  const sources = [
    s('trackerUrl') && 'tracker-url',
    n('kernelPort') !== undefined && 'kernel-port',
    s('prometheusUrl') && 'prometheus-url',
  ].filter(Boolean);
  if (sources.length > 1)
    throw invalidOption(`--${sources[1]}`, `choose one queue source (also given: --${sources[0]})`);
  const timeoutMs = n('sourceTimeoutMs');
  if (s('trackerUrl'))
    o.queue = { source: 'tracker', url: s('trackerUrl')!, ...(timeoutMs ? { timeoutMs } : {}) };
  if (n('kernelPort') !== undefined) o.queue = { source: 'kernel', port: n('kernelPort')! };
  if (s('prometheusUrl')) {
    if (!s('prometheusGauge'))
      throw invalidOption('--prometheus-gauge', 'is required with --prometheus-url');
    o.queue = {
      source: 'prometheus',
      url: s('prometheusUrl')!,
      gauge: s('prometheusGauge')!,
      ...(s('prometheusField') ? { field: s('prometheusField') as QueueField } : {}),
      ...(timeoutMs ? { timeoutMs } : {}),
    };
  } else if (s('prometheusGauge')) {
    throw invalidOption('--prometheus-gauge', 'needs --prometheus-url');
  }

  if (s('probeUrl')) {
    o.probe = { url: s('probeUrl')! };
    if (n('probeTimeoutMs') !== undefined) o.probe.timeoutMs = n('probeTimeoutMs');
    if (c['probeExpectStatus']) o.probe.expectStatus = c['probeExpectStatus'] as number[];
  }
  if (n('concurrencyLimit') !== undefined) o.concurrencyLimit = n('concurrencyLimit');
  if (n('servicePid') !== undefined || s('servicePidFile')) {
    o.service = {};
    if (n('servicePid') !== undefined) o.service.pid = n('servicePid');
    if (s('servicePidFile')) o.service.pidFile = s('servicePidFile');
  }
  if (n('cpuThreshold') !== undefined || n('memoryThreshold') !== undefined) {
    o.thresholds = {};
    if (n('cpuThreshold') !== undefined) o.thresholds.cpuUtilization = n('cpuThreshold');
    if (n('memoryThreshold') !== undefined) o.thresholds.memoryUtilization = n('memoryThreshold');
  }
  if (s('hostSource')) o.hostSource = s('hostSource') as HostSource;
  if (c['noCgroup']) o.cgroup = false;
  else if (s('cgroupRoot')) o.cgroup = { root: s('cgroupRoot')! };
  if (s('procRoot')) o.procRoot = s('procRoot');
  if (n('drainGraceMs') !== undefined) o.drainGraceMs = n('drainGraceMs');
  return o;
}

/** Library option names in errors become the flag a CLI user typed. */
export const LIBRARY_TO_FLAG: Record<string, string> = {
  backendId: 'backend-id',
  prefix: 'prefix',
  serviceName: 'service-name',
  broker: 'broker',
  clientId: 'client-id',
  reconnectPeriodMs: 'reconnect-ms',
  keepaliveS: 'keepalive-s',
  cert: 'tls-cert',
  cron: 'cron',
  intervalMs: 'interval-ms',
  jitterMs: 'jitter-ms',
  earlyRise: 'early-rise',
  earlyMinGapMs: 'early-min-gap-ms',
  signingKey: 'key-file',
  servicePid: 'service-pid',
  trackerUrl: 'tracker-url',
  trackerTimeoutMs: 'source-timeout-ms',
  prometheusTimeoutMs: 'source-timeout-ms',
  kernelPort: 'kernel-port',
  prometheusGauge: 'prometheus-gauge',
  prometheusField: 'prometheus-field',
  prometheusUrl: 'prometheus-url',
  probeUrl: 'probe-url',
  probeTimeoutMs: 'probe-timeout-ms',
  probeExpectStatus: 'probe-expect-status',
  cpuThreshold: 'cpu-threshold',
  memoryThreshold: 'memory-threshold',
  hostSource: 'host-source',
  concurrencyLimit: 'concurrency-limit',
  drainGraceMs: 'drain-grace-ms',
};
