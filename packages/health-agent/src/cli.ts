#!/usr/bin/env node
import { readFileSync, statSync, unlinkSync, writeFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { describeBrokerError, type HealthReport, type HealthVerdict } from '@loadwise/protocol';
import { createAgent, type Agent } from './agent';
import { AgentError } from './errors';
import {
  CLI_OPTIONS,
  configKey,
  envName,
  flagFor,
  fromEnvironment,
  configFileWithSecret,
  mergeSources,
  repeatedFlag,
  toAgentOptions,
  unknownFlag,
  unknownVariables,
  type RawConfig,
} from './config';
import { parsePid, readPidFile } from './samplers/process';
import { withoutPassword } from './without-password';

/**
 * loadwise-agent: exit codes 0 (clean stop, --once printed, drain/undrain sent),
 * 2 (invalid configuration; one line on stderr naming the option),
 * 1 (anything unexpected).
 */
const NAME = 'loadwise-agent';
const LEVELS = ['error', 'warn', 'info', 'debug'] as const;
type Level = (typeof LEVELS)[number];
/**
 * Warnings about secrets, once at start: no signing key (every gateway refuses the reports
 * unless it sets allowUnsigned), and secret files that others on the host can read (whoever
 * reads a signing key signs for every backend, SECURITY.md).
 */
export function secretWarnings(raw: RawConfig, signed: boolean): string[] {
  const out: string[] = [];
  if (!signed) {
    out.push(
      'no --key-file: reports are unsigned, and gateways refuse them unless they set allowUnsigned',
    );
  }
  if (raw['tlsInsecure'] === true) {
    out.push(
      "--tls-insecure: the broker's certificate is not checked, so anyone on the path can pose as it and read the password and reports",
    );
  }
  const files: Array<[string, unknown]> = [
    ['key-file', raw['keyFile']],
    ['password-file', raw['passwordFile']],
    ['tls-key', raw['tlsKey']],
    // A config file may hold the password too (docs/agent.md), and went unchecked.
    ['config', configFileWithSecret(raw)],
  ];
  for (const [flag, file] of files) {
    if (typeof file !== 'string') continue;
    let mode: number;
    try {
      mode = statSync(file).mode;
    } catch {
      continue; // reading it has already failed or will, with its own error
    }
    if ((mode & 0o077) !== 0) {
      out.push(
        `--${flag} ${file} can be read by other users (mode ${(mode & 0o777).toString(8)}): chmod 600 it`,
      );
    }
  }
  return out;
}

/** The same warning (e.g. "tracker unreachable") is repeated at most this often. */
const WARN_REPEAT_MS = 60_000;
/** A connection lost this soon after it was made counts as taken over... */
const QUICK_DROP_MS = 5_000;
/** ...and this many in a row name the likely cause (a shared --client-id). */
const QUICK_DROPS = 3;

/**
 * Whether a warning is logged now: the same warning at most once a minute. "The same"
 * ignores its figures: `gauge q is -1 at ...`, then `-2`, `-3` (a gauge drifting
 * negative) were each new text and logged every sample (20 lines in 4 s at
 * --interval-ms 200). The first text of a minute is the one shown.
 */
export function warningLimiter(now: () => number): (msg: string) => boolean {
  const lastWarned = new Map<string, number>();
  return (msg) => {
    // Nor a quoted value: a gauge's unreadable one (`"va"`, `"vb"`, ...) changing each scrape
    // was a new warning every sample.
    const key = msg.replace(/"(?:[^"\\]|\\.)*"/g, '"…"').replace(/\d+/g, '#');
    const t = now();
    if ((lastWarned.get(key) ?? -Infinity) + WARN_REPEAT_MS > t) return false;
    if (lastWarned.size > 1000) lastWarned.clear(); // bounded, whatever the messages
    lastWarned.set(key, t);
    return true;
  };
}

/**
 * The log lines of the health verdict's changes, from each report's verdict: `health up →
 * down: probe answered 503`, `health down → up`. A probe that failed, a watched process
 * that went away and came back were never logged, only published. Each change (from →
 * to) is logged at most once a minute, as warnings are, but never left stale: a change
 * held back is logged (with the count of changes not shown) from the first report after
 * the minute whose verdict still differs from the last one logged. undefined: no line.
 */
export function verdictLogger(
  now: () => number,
): (health: HealthReport) => { level: 'warn' | 'info'; line: string } | undefined {
  let shown: HealthVerdict = 'up'; // the verdict the log last said (a start says nothing of up)
  let last: HealthVerdict = 'up';
  let hidden = 0;
  const loggedAt = new Map<string, number>();
  return (health) => {
    const verdict = health.verdict;
    if (verdict !== last) {
      hidden++;
      last = verdict;
    }
    if (verdict === shown) return undefined;
    const change = `${shown} → ${verdict}`;
    const t = now();
    if ((loggedAt.get(change) ?? -Infinity) + WARN_REPEAT_MS > t) return undefined;
    loggedAt.set(change, t);
    const notShown = hidden > 1 ? ` (${hidden - 1} changes not shown)` : '';
    shown = verdict;
    hidden = 0;
    const reason = health.reason === undefined ? '' : `: ${health.reason}`;
    return {
      level: verdict === 'up' ? 'info' : 'warn',
      line: `health ${change}${reason}${notShown}`,
    };
  };
}

function version(): string {
  try {
    return (JSON.parse(readFileSync(`${__dirname}/../package.json`, 'utf8')) as { version: string })
      .version;
  } catch {
    return 'unknown';
  }
}

export function helpText(): string {
  const rows = CLI_OPTIONS.map((s) => {
    const left = `  --${s.flag}${s.arg ? ` <${s.arg}>` : ''}`;
    const key = configKey(s);
    const sources = [
      fromEnvironment(s.flag) ? `env ${envName(s.flag)}` : '',
      key ? `config key "${key}"` : '',
      s.option
        ? `createAgent() ${[s.option, ...Object.entries(s.implies ?? {}).map(([k, v]) => `${k}: '${v}'`)].join(' + ')}`
        : '',
    ].filter(Boolean);
    return `${left.padEnd(34)} ${s.help}${sources.length > 0 ? `\n${''.padEnd(35)}${sources.join(', ')}` : ''}`;
  });
  return [
    `Usage: ${NAME} [options]`,
    `       ${NAME} drain (--pid-file <agent pid file> | --pid <pid>)`,
    `       ${NAME} undrain (--pid-file <agent pid file> | --pid <pid>)`,
    '',
    'Samples CPU, memory, cgroup limits, the request queue and a local health probe beside',
    'one backend and publishes them over MQTT for loadwise gateways.',
    '',
    'Options (flag > environment > config file > default):',
    ...rows,
    '',
    'Signals: SIGTERM/SIGINT publish draining, wait --drain-grace-ms, publish offline and exit 0;',
    '         SIGUSR2 (or `loadwise-agent drain`) switches to draining for planned maintenance;',
    '         SIGHUP (or `loadwise-agent undrain`) ends it: online again, no restart.',
    'Exit codes: 0 ok, 2 invalid configuration, 1 unexpected failure.',
    '',
  ].join('\n');
}

function flagsForParseArgs(): Record<string, { type: 'string' | 'boolean'; short?: string }> {
  const o: Record<string, { type: 'string' | 'boolean'; short?: string }> = {};
  for (const s of CLI_OPTIONS) o[s.flag] = { type: s.kind === 'boolean' ? 'boolean' : 'string' };
  o['help']!.short = 'h';
  return o;
}

function fail(message: string, code = 2): never {
  process.stderr.write(`${NAME}: ${message}\n`);
  process.exit(code);
}

/** A library error names `queue.port`; the CLI user typed --kernel-port. */
function describeError(err: AgentError, raw: RawConfig): string {
  const flag = err.option && !err.option.startsWith('-') ? flagFor(err.option, raw) : undefined;
  return flag ? err.message.replace(`: ${err.option}: `, `: ${flag}: `) : err.message;
}

/**
 * The control commands signal a running agent: SIGUSR2 drains, SIGHUP ends the
 * drain. SIGUSR1 is not usable: Node reserves it to start the inspector
 * (nodejs.org/api/process.html#signal-events).
 */
const CONTROL_SIGNALS = { drain: 'SIGUSR2', undrain: 'SIGHUP' } as const;

/**
 * What a running agent calls itself (process.title, set when it starts): `ps`
 * shows it, and the control commands check it in /proc/<pid>/cmdline before
 * they signal. SIGUSR2's default action ends a process, and SIGHUP reloads a
 * runWorkers pool: a wrong --pid (the backend's, printed beside the agent's)
 * or a stale pid file whose pid was reused would otherwise hit another process.
 */
const AGENT_PROCESS_TITLE = 'loadwise-agent';

/**
 * The shortest start of AGENT_PROCESS_TITLE taken for it. Node writes the title over the
 * process's argument area and cuts it to fit: an agent started as `node cli.js` (a
 * container's `CMD ["node","cli.js"]`, 12 bytes) shows `loadwise-ag`, and was refused.
 * No shorter than `loadwise-a`: `loadwise` alone would also be the gateway's command.
 */
const MIN_AGENT_TITLE = 'loadwise-a';

/** Whether a command line (commandLineOf) is an agent's: its title, whole or cut to fit. */
export function isAgentCommandLine(cmd: string): boolean {
  return (
    cmd.startsWith(AGENT_PROCESS_TITLE) ||
    (cmd.length >= MIN_AGENT_TITLE.length && AGENT_PROCESS_TITLE.startsWith(cmd))
  );
}

/**
 * What `pid` runs, its arguments joined by spaces, where /proc tells; undefined
 * where it cannot (no /proc: not Linux; or no such process, which process.kill
 * then reports).
 */
function commandLineOf(pid: number): string | undefined {
  try {
    return readFileSync(`/proc/${pid}/cmdline`, 'latin1').replace(/\0+/g, ' ').trim();
  } catch {
    return undefined;
  }
}

async function controlCommand(name: keyof typeof CONTROL_SIGNALS, argv: string[]): Promise<void> {
  let values;
  try {
    ({ values } = parseArgs({
      args: argv,
      options: {
        'pid-file': { type: 'string' },
        pid: { type: 'string' },
        help: { type: 'boolean', short: 'h' },
      },
      strict: true,
    }));
  } catch (err) {
    fail(`LW_AGENT_INVALID_OPTION: ${name}: ${(err as Error).message}`);
  }
  // A subcommand's own help (it was refused as an unknown option, exit 2).
  if (values.help === true) {
    process.stdout.write(
      `usage: ${NAME} ${name} (--pid-file <agent pid file> | --pid <pid>)\n` +
        `sends ${CONTROL_SIGNALS[name]} to a running agent: ${
          name === 'drain'
            ? 'it publishes draining (gateways stop sending it new requests) until undrain'
            : 'it publishes online again after a drain'
        }\n`,
    );
    return;
  }
  let pid: number;
  if (values['pid'] !== undefined) {
    pid = parsePid(values['pid']) ?? fail('LW_AGENT_INVALID_OPTION: --pid: must be a process id');
  } else if (values['pid-file']) {
    try {
      pid = await readPidFile(values['pid-file']);
    } catch (err) {
      fail((err as Error).message);
    }
  } else {
    fail(`LW_AGENT_INVALID_OPTION: ${name}: give --pid-file <agent pid file> or --pid <pid>`);
  }
  const signal = CONTROL_SIGNALS[name];
  const cmd = commandLineOf(pid);
  if (cmd !== undefined && !isAgentCommandLine(cmd)) {
    fail(
      `LW_AGENT_SIGNAL: process ${pid} is not a loadwise agent (it runs ${JSON.stringify(cmd.slice(0, 120))}); ${signal} not sent`,
      1,
    );
  }
  try {
    process.kill(pid, signal);
  } catch (err) {
    fail(
      `LW_AGENT_SIGNAL: cannot signal process ${pid}: ${(err as NodeJS.ErrnoException).code}`,
      1,
    );
  }
  process.stdout.write(`sent ${signal} (${name}) to ${pid}\n`);
}

async function main(argv: string[]): Promise<void> {
  if (argv[0] === 'drain' || argv[0] === 'undrain') return controlCommand(argv[0], argv.slice(1));
  let values: Record<string, unknown>;
  // Unknown flags first, with the nearest known one (parseArgs names only the unknown).
  // With the options, so a string option takes the next argument as its value (`--interval-ms
  // -5`), as the strict pass does, instead of reading `-5` as an unknown flag.
  const options = flagsForParseArgs();
  const given: string[] = [];
  for (const t of parseArgs({ args: argv, options, strict: false, tokens: true }).tokens) {
    const unknown = t.kind === 'option' ? unknownFlag(t.name) : undefined;
    if (unknown) fail(`LW_AGENT_INVALID_OPTION: ${unknown} (see --help)`);
    if (t.kind === 'option') given.push(t.name);
  }
  const repeated = repeatedFlag(given);
  if (repeated) fail(`LW_AGENT_INVALID_OPTION: ${repeated}`);
  try {
    ({ values } = parseArgs({
      args: argv,
      options,
      strict: true,
      allowPositionals: false,
    }));
  } catch (err) {
    // One line: parseArgs words some refusals over three (an option value starting with '-').
    const message = (err as Error).message.replace(/\s*\n\s*/g, ' ');
    fail(`LW_AGENT_INVALID_OPTION: ${message} (see --help)`);
  }
  if (values['help']) {
    process.stdout.write(helpText());
    return;
  }
  if (values['version']) {
    process.stdout.write(`${version()}\n`);
    return;
  }
  // Named for ps and for `loadwise-agent drain --pid`, which checks it (AGENT_PROCESS_TITLE).
  process.title = AGENT_PROCESS_TITLE;
  let once = values['once'] === true;
  let agent: Agent;
  let logLevel: Level = 'info';
  let agentPidFile: string | undefined;
  let raw: RawConfig = {};
  const log = (level: Level, msg: string): void => {
    if (LEVELS.indexOf(level) <= LEVELS.indexOf(logLevel))
      process.stderr.write(`${new Date().toISOString()} ${level} ${msg}\n`);
  };
  try {
    raw = mergeSources(values, process.env);
    // --once or LOADWISE_ONCE (mergeSources read both).
    once = raw['once'] === true;
    if (raw['logLevel'] !== undefined) {
      if (!LEVELS.includes(raw['logLevel'] as Level))
        fail(`LW_AGENT_INVALID_OPTION: --log-level: must be one of ${LEVELS.join(', ')}`);
      logLevel = raw['logLevel'] as Level;
    }
    // Once, at start, and before a refusal the misspelt name may explain (--backend-id is
    // required): a start it does not stop.
    for (const line of unknownVariables(process.env)) log('warn', line);
    agentPidFile = raw['agentPidFile'] as string | undefined;
    const options = toAgentOptions(raw, { requireBroker: !once });
    if (once) delete options.broker;
    agent = createAgent(options);
  } catch (err) {
    if (err instanceof AgentError) fail(describeError(err, raw));
    throw err;
  }

  // performance.now(): monotonic, so a wall clock stepped back does not mute warnings.
  const warnSays = warningLimiter(() => performance.now());
  const warnOnce = (msg: string): void => {
    if (warnSays(msg)) log('warn', msg);
  };
  // Before --once too: its report left out the queue block of a failing source (an
  // unreachable tracker, a gauge out of range) and said nothing why.
  agent.on('warning', warnOnce);

  if (once) {
    // Two samples: the first only primes CPU counters, so the printed one
    // covers a real interval instead of a zero-length delta.
    await agent.sample();
    await new Promise((r) => setTimeout(r, Math.min(agent.options.intervalMs, 500)));
    const report = await agent.sampleReport();
    process.stdout.write(`${JSON.stringify(report, null, 2)}\n`);
    return;
  }

  // Reconnect attempts fail every --reconnect-ms while the broker is down: log each error once a minute.
  // With its code, as the gateway logs it (SELF_SIGNED_CERT_IN_CHAIN: ...).
  agent.on('error', (err) => warnOnce(`broker: ${describeBrokerError(err)}`));
  // A broker drops the older of two clients with one id [MQTT-3.1.4-2], and MQTT 3.1.1
  // says nothing why: two agents given the same --client-id (a config file copied across
  // a fleet) took the session from each other every reconnect, each publishing its Last
  // Will, and said only "connection lost". A run of connections dropped within seconds
  // is named once.
  const clientId = agent.options.broker?.clientId;
  let connectedAt: number | undefined;
  let quickDrops = 0;
  let namedTakeover = false;
  let everConnected = false;
  agent.on('connect', () => {
    connectedAt = Date.now();
    everConnected = true;
    log(
      'info',
      `connected to ${withoutPassword(agent.options.broker?.url ?? '')} as ${agent.backendId} (state ${agent.state})`,
    );
  });
  agent.on('offline', () => {
    const quick = connectedAt !== undefined && Date.now() - connectedAt < QUICK_DROP_MS;
    quickDrops = quick ? quickDrops + 1 : 0;
    // Never connected (a first attempt failed): nothing was lost, and the line before or
    // after says why (the error, or a close before the broker's CONNACK).
    connectedAt = undefined;
    log(
      'warn',
      everConnected
        ? 'broker connection lost; metrics are dropped until it is back'
        : 'no broker connection yet; metrics are dropped until there is one',
    );
    if (clientId !== undefined && quickDrops >= QUICK_DROPS && !namedTakeover) {
      namedTakeover = true;
      log(
        'error',
        `the broker dropped the connection ${quickDrops} times within ${QUICK_DROP_MS / 1000} s of connecting: another client is probably using --client-id ${clientId} (a broker drops the older of two clients with one id); give every agent its own, or leave --client-id unset`,
      );
    }
  });
  agent.on('state', (state) => log('info', `state ${state}`));
  // Once a minute, as docs/agent.md says of every repeated warning.
  agent.on('overlap', () => warnOnce('a sample took longer than the interval; tick skipped'));
  for (const line of secretWarnings(raw, agent.options.signingKey !== undefined)) log('warn', line);
  const verdictLine = verdictLogger(() => performance.now());
  agent.on('sample', (r) => {
    const said = verdictLine(r.health);
    if (said) log(said.level, said.line);
  });
  agent.on('sample', (r, { published }) =>
    log('debug', `seq ${r.seq} ${published ? 'published' : 'dropped'} verdict ${r.health.verdict}`),
  );

  // Every timer of the agent is unref'd (library rule); the daemon itself
  // stays up until a signal, even while the broker is unreachable.
  const keepAlive = setInterval(() => undefined, 1 << 30);

  let stopping = false;
  const shutdown = (signal: string): void => {
    if (stopping) {
      log('warn', `${signal} again: exiting without waiting`);
      process.exit(1);
    }
    stopping = true;
    log('info', `${signal}: draining for ${agent.options.drainGraceMs} ms, then offline`);
    agent
      .stop()
      .then(() => {
        clearInterval(keepAlive);
        if (agentPidFile) {
          try {
            unlinkSync(agentPidFile);
          } catch {
            // already gone
          }
        }
        log('info', 'stopped');
        process.exit(0);
      })
      .catch((err: Error) => {
        log('error', `stop failed: ${err.message}`);
        process.exit(1);
      });
  };
  process.on('SIGTERM', () => shutdown('SIGTERM'));
  process.on('SIGINT', () => shutdown('SIGINT'));
  process.on('SIGUSR2', () => {
    log('info', 'SIGUSR2: draining (planned maintenance)');
    void agent.drain('drain requested');
  });
  // Under a supervisor nothing else sends SIGHUP. A foreground agent whose
  // terminal closes gets it too; before, that killed the agent, and the Last
  // Will put the backend back in rotation just the same.
  process.on('SIGHUP', () => {
    if (stopping || agent.state !== 'draining') {
      log('info', `SIGHUP: not in planned maintenance (state ${agent.state}); ignored`);
      return;
    }
    log('info', 'SIGHUP: drain ended, back online');
    void agent.undrain();
  });
  // Written once the signal handlers are in place: a drain sent as soon as the
  // file appears must not meet SIGUSR2's default action (terminate).
  if (agentPidFile) {
    try {
      writeFileSync(agentPidFile, `${process.pid}\n`);
    } catch (err) {
      fail(
        `LW_AGENT_PID_FILE: cannot write --agent-pid-file ${agentPidFile}: ${(err as NodeJS.ErrnoException).code}`,
      );
    }
  }
  await agent.start();
  log(
    'info',
    `started: ${agent.backendId} every ${agent.options.intervalMs} ms${agent.options.cron ? ` (cron ${agent.options.cron})` : ''}, offset ${agent.options.offsetMs} ms, queue source ${agent.options.queue?.source ?? 'none'}`,
  );
}

/**
 * A stdout or stderr that fails stops the log, never the agent. Run as
 * `loadwise-agent ... 2>&1 | head -n 3`, the next warning after `head` quit
 * was an uncaught `write EPIPE`: exit 1, and no more reports. Whatever the
 * error (EPIPE, or another on a terminal or pipe that went away), the stream
 * is left destroyed and later writes to it are dropped; reporting goes on.
 */
function keepRunningWithoutOutput(): void {
  for (const stream of [process.stdout, process.stderr]) stream.on('error', () => undefined);
}

/** Runs the CLI with `argv` (without node and script); the bin shim calls this. */
export function run(argv: string[]): void {
  keepRunningWithoutOutput();
  main(argv).catch((err: unknown) => {
    process.stderr.write(`${NAME}: ${(err as Error)?.stack ?? String(err)}\n`);
    process.exit(1);
  });
}

if (require.main === module) run(process.argv.slice(2));
