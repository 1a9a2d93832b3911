/**
 * A standalone loadwise gateway configured by environment variables: an
 * Express app with `app.use(loadBalance(opts))` and the status and metrics
 * endpoints. The systemd unit (examples/systemd/loadwise-gateway.service),
 * the Docker Compose file (examples/compose/) and the two-gateway example
 * (examples/two-gateways/) all run this program.
 *
 *   LOADWISE_GW_BACKENDS=api-1=http://10.0.0.11:3000,api-2=http://10.0.0.12:3000 \
 *   LOADWISE_GW_BROKER=mqtt://broker.internal:1883 node examples/dist/gateway-server.js
 *
 * Listens once `lb.ready()` resolves, then prints one JSON line on stdout:
 * {"event":"listening","id","port","pid"}. Exit 1: not ready (requireBroker
 * with the broker out of reach).
 * SIGTERM/SIGINT/SIGHUP: stop accepting, let in-flight requests finish (at most
 * LOADWISE_GW_STOP_GRACE_MS), answer what is cut, exit 0. With
 * --exit-with-parent it also stops when its stdin closes (the parent died).
 * Exit 2: invalid configuration (one line on stderr naming the variable or flag).
 */
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import express from 'express';
import {
  GatewayError,
  gatewayServerOptions,
  loadBalance,
  multiAccept,
  type BackendConfig,
  type BrokerUrlOptions,
  type LoadBalanceOptions,
} from '@loadwise/gateway-plugin';
import {
  brokerUrlNamesUser,
  didYouMean,
  GATEWAY_ENV_PREFIX,
  parseKeyFile,
} from '@loadwise/protocol';
import { parseFlags } from './lib/args';
import { onLostOutput } from './lib/output';
import { readStartFile } from './lib/read-file';

/**
 * Every variable this program reads, with what it means (printed by --help; the Compose test
 * checks against it). All under GATEWAY_ENV_PREFIX (@loadwise/protocol), which loadwise-agent
 * leaves to this program: one env file may serve both.
 */
export const GATEWAY_ENV: Readonly<Record<string, string>> = {
  LOADWISE_GW_BACKENDS: 'required: id=url pairs, comma-separated (the allow-list)',
  LOADWISE_GW_BROKER:
    'broker URL (mqtt://, mqtts://, ws://, wss://); without it agents are not heard',
  LOADWISE_GW_PREFIX: 'topic prefix shared with the agents (default loadwise)',
  LOADWISE_GW_TLS_CA: 'PEM CA bundle of the broker',
  LOADWISE_GW_TLS_CERT: 'PEM client certificate (mutual TLS)',
  LOADWISE_GW_TLS_KEY: 'PEM client key',
  LOADWISE_GW_USERNAME: 'MQTT username',
  LOADWISE_GW_PASSWORD_FILE: 'file holding the MQTT password',
  LOADWISE_GW_KEY_FILE:
    'verification keys ("<keyId> <secret> [<backends>]" per line); without it or LOADWISE_GW_ALLOW_UNSIGNED no report counts',
  LOADWISE_GW_ALLOW_UNSIGNED:
    '1: count unsigned reports too (they can only make a backend look busier; for a trial, not production)',
  LOADWISE_GW_HOST: 'address to listen on (default 127.0.0.1)',
  LOADWISE_GW_PORT: 'port to listen on (default 8080; 0 picks a free one)',
  LOADWISE_GW_STATUS_TOKEN:
    'token /_lb/status and /_lb/metrics require (X-Loadwise-Token, or Authorization: Bearer), 8+ visible ASCII characters; off: open on purpose (unset: open, with a warning)',
  LOADWISE_GW_ID: 'name of this gateway, sent back in an x-loadwise-gateway response header',
  LOADWISE_GW_ACCEPT_HANDLES:
    'connections accepted per event-loop turn, 1..64 (default 1; multiAccept, docs/gateway.md)',
  LOADWISE_GW_STOP_GRACE_MS:
    'on SIGTERM, how long in-flight requests get to finish, ms (default 10000; below the stop timeout)',
  LOADWISE_GW_READY_TIMEOUT_MS:
    'at start, how long to wait for the broker before listening on local signals, ms (default 10000)',
  LOADWISE_GW_MAX_IN_FLIGHT_PER_CLIENT:
    'requests one client address may have in the gateway at once, 1..1000000, or off (default 64; maxInFlightPerClient)',
  LOADWISE_GW_WS_MAX_PER_CLIENT:
    'WebSockets one client address may hold open at once, 1..1000000, or off (default 256; webSockets.maxPerClient)',
  LOADWISE_GW_TRUST_FORWARDED:
    'proxies of yours in front that append to X-Forwarded-For, 0..32 (true: 1; default 0; trustForwarded)',
};

/** A per-client-address bound from `name`: 1..1 000 000, or off/false (none); undefined: unset. */
function perClientBound(env: NodeJS.ProcessEnv, name: string): number | false | undefined {
  const raw = env[name];
  if (!raw) return undefined;
  if (raw === 'off' || raw === 'false') return false;
  const n = Number(raw);
  if (/^\d+$/.test(raw) && n >= 1 && n <= 1_000_000) return n;
  throw new ConfigError(`${name}: not an integer 1..1000000 or off (got ${JSON.stringify(raw)})`);
}

export const STATUS_PATH = '/_lb/status';
/**
 * On SIGTERM, in-flight requests get this long to finish by default
 * (systemd's TimeoutStopSec must exceed it by a few seconds: after the grace
 * the cut requests are answered and the broker connection closes).
 */
export const STOP_GRACE_MS = 10_000;
/**
 * At start, how long ready() waits for the broker by default before the gateway listens
 * and routes on local signals: connections are refused that long when a restart meets a
 * broker outage (LOADWISE_GW_READY_TIMEOUT_MS shortens it).
 */
export const READY_TIMEOUT_MS = 10_000;
/**
 * The listen backlog, told to the accept-queue guard too. Node accepts one
 * connection per event-loop turn, so a burst waits in the kernel's queue, and
 * beyond Node's default of 511 the kernel drops it (docs/gateway.md, "Accept
 * queue"); the kernel caps it at net.core.somaxconn.
 */
export const LISTEN_BACKLOG = 4096;
export const METRICS_PATH = '/_lb/metrics';
/** LOADWISE_GW_TRUST_FORWARDED's highest value: trustForwarded's (options-validate.ts). */
const MAX_TRUSTED_HOPS = 32;

class ConfigError extends Error {}

/** A file a variable names: a regular file of at most 1 MiB (readStartFile), else one line naming it. */
function file(name: string, env: NodeJS.ProcessEnv): Buffer | undefined {
  const p = env[name];
  if (!p) return undefined;
  const r = readStartFile(p);
  if ('error' in r) throw new ConfigError(`${name}: cannot read ${p}: ${r.error}`);
  return r.bytes;
}

/**
 * The broker's settings: without LOADWISE_GW_BROKER there is no broker connection (no
 * embedded one either) for them to apply to. They were ignored without a word, so a
 * broker line lost from an env file left a gateway that hears no agent and said nothing.
 */
const BROKER_SETTINGS = [
  'LOADWISE_GW_TLS_CA',
  'LOADWISE_GW_TLS_CERT',
  'LOADWISE_GW_TLS_KEY',
  'LOADWISE_GW_USERNAME',
  'LOADWISE_GW_PASSWORD_FILE',
] as const;

/** Parses `id=url,id=url`. */
export function parseBackends(text: string | undefined): BackendConfig[] {
  if (!text) throw new ConfigError('LOADWISE_GW_BACKENDS: is required (id=url,id=url)');
  return text
    .split(',')
    .map((s) => s.trim())
    .filter(Boolean)
    .map((pair) => {
      const eq = pair.indexOf('=');
      if (eq < 1) throw new ConfigError(`LOADWISE_GW_BACKENDS: "${pair}" is not id=url`);
      return { id: pair.slice(0, eq), url: pair.slice(eq + 1) };
    });
}

/** The loadBalance() options and listen address the environment describes. */
export function configFromEnv(env: NodeJS.ProcessEnv): {
  options: LoadBalanceOptions;
  host: string;
  port: number;
  /** Listen handles accepting connections (multiAccept); 1 is the server's own alone. */
  acceptHandles: number;
  /** On SIGTERM, how long in-flight requests get to finish. */
  stopGraceMs: number;
  /** At start, how long ready() waits for the broker. */
  readyTimeoutMs: number;
  id: string | undefined;
} {
  for (const name of Object.keys(env)) {
    if (name.startsWith(GATEWAY_ENV_PREFIX) && !(name in GATEWAY_ENV)) {
      const near = didYouMean(name, Object.keys(GATEWAY_ENV));
      throw new ConfigError(
        `${name}: unknown variable ${near ? `(did you mean ${near}?)` : '(see --help)'}`,
      );
    }
  }
  const options: LoadBalanceOptions = {
    backends: parseBackends(env['LOADWISE_GW_BACKENDS']),
    statusPath: STATUS_PATH,
    metricsPath: METRICS_PATH,
  };
  if (env['LOADWISE_GW_BROKER']) {
    const broker: BrokerUrlOptions = { url: env['LOADWISE_GW_BROKER'] };
    const ca = file('LOADWISE_GW_TLS_CA', env);
    const cert = file('LOADWISE_GW_TLS_CERT', env);
    const key = file('LOADWISE_GW_TLS_KEY', env);
    const password = file('LOADWISE_GW_PASSWORD_FILE', env);
    if (ca) broker.ca = ca;
    if (cert) broker.cert = cert;
    if (key) broker.key = key;
    if (env['LOADWISE_GW_USERNAME']) broker.username = env['LOADWISE_GW_USERNAME'];
    else if (password && !brokerUrlNamesUser(broker.url))
      throw new ConfigError(
        'LOADWISE_GW_PASSWORD_FILE: needs LOADWISE_GW_USERNAME (or a user in LOADWISE_GW_BROKER)',
      );
    if (password) broker.password = password.toString('utf8').trim();
    options.broker = broker;
  } else {
    const orphan = BROKER_SETTINGS.find((name) => env[name]);
    if (orphan)
      throw new ConfigError(
        `${orphan}: needs LOADWISE_GW_BROKER (without a broker there is no connection for it to apply to)`,
      );
  }
  if (env['LOADWISE_GW_PREFIX']) options.topicPrefix = env['LOADWISE_GW_PREFIX'];
  const keys = file('LOADWISE_GW_KEY_FILE', env);
  if (keys) {
    try {
      options.keys = parseKeyFile(keys.toString('utf8'));
    } catch (err) {
      throw new ConfigError(`LOADWISE_GW_KEY_FILE: ${(err as Error).message}`);
    }
  }
  const allowUnsigned = env['LOADWISE_GW_ALLOW_UNSIGNED'];
  if (allowUnsigned !== undefined && allowUnsigned !== '' && !/^[01]$/.test(allowUnsigned))
    throw new ConfigError(
      `LOADWISE_GW_ALLOW_UNSIGNED: 0 or 1 (got ${JSON.stringify(allowUnsigned)})`,
    );
  if (allowUnsigned === '1') options.allowUnsigned = true;
  const statusToken = env['LOADWISE_GW_STATUS_TOKEN'];
  // off (or false): open on purpose (a listener only the operator reaches), not warned of.
  if (statusToken && /^(off|false)$/i.test(statusToken)) options.statusToken = false;
  else if (statusToken && !/^[\x21-\x7e]{8,}$/.test(statusToken))
    throw new ConfigError(
      'LOADWISE_GW_STATUS_TOKEN: at least 8 visible ASCII characters, or off (got a value that is not)',
    );
  else if (statusToken) options.statusToken = statusToken;
  // Empty counts as unset, for every variable (docs/operations.md): a Compose `${PORT}` that
  // came out empty was refused as "not a port" (`??` keeps '').
  const rawPort = env['LOADWISE_GW_PORT'] || '8080';
  const port = Number(rawPort);
  if (!/^\d+$/.test(rawPort) || port > 65535)
    throw new ConfigError(`LOADWISE_GW_PORT: not a port (got ${JSON.stringify(rawPort)})`);
  const rawHandles = env['LOADWISE_GW_ACCEPT_HANDLES'] || '1';
  const acceptHandles = Number(rawHandles);
  if (!/^\d+$/.test(rawHandles) || acceptHandles < 1 || acceptHandles > 64) {
    throw new ConfigError(
      `LOADWISE_GW_ACCEPT_HANDLES: not an integer 1..64 (got ${JSON.stringify(rawHandles)})`,
    );
  }
  const rawGrace = env['LOADWISE_GW_STOP_GRACE_MS'] || String(STOP_GRACE_MS);
  const stopGraceMs = Number(rawGrace);
  if (!/^\d+$/.test(rawGrace) || stopGraceMs > 600_000) {
    throw new ConfigError(
      `LOADWISE_GW_STOP_GRACE_MS: not an integer 0..600000 (got ${JSON.stringify(rawGrace)})`,
    );
  }
  const rawReady = env['LOADWISE_GW_READY_TIMEOUT_MS'] || String(READY_TIMEOUT_MS);
  const readyTimeoutMs = Number(rawReady);
  if (!/^\d+$/.test(rawReady) || readyTimeoutMs > 600_000) {
    throw new ConfigError(
      `LOADWISE_GW_READY_TIMEOUT_MS: not an integer 0..600000 (got ${JSON.stringify(rawReady)})`,
    );
  }
  // Behind a front every client comes from the front's address, and the per-client bound
  // became one bound for all of them (130 slow uploads from one client got every other
  // client 429 LW_GW_CLIENT_LIMIT): these two had no variable (docs/operations.md,
  // "Several gateways on one broker").
  const perClient = perClientBound(env, 'LOADWISE_GW_MAX_IN_FLIGHT_PER_CLIENT');
  if (perClient !== undefined) options.maxInFlightPerClient = perClient;
  // WebSockets have a per-address bound of their own (256), which the front shares too.
  const wsPerClient = perClientBound(env, 'LOADWISE_GW_WS_MAX_PER_CLIENT');
  if (wsPerClient !== undefined) options.webSockets = { maxPerClient: wsPerClient };
  const rawTrust = env['LOADWISE_GW_TRUST_FORWARDED'];
  if (rawTrust) {
    // trustForwarded's own forms: a number of proxies, true (1) or false (0).
    const hops = rawTrust === 'true' ? 1 : rawTrust === 'false' ? 0 : Number(rawTrust);
    if (!/^(\d+|true|false)$/.test(rawTrust) || hops > MAX_TRUSTED_HOPS)
      throw new ConfigError(
        `LOADWISE_GW_TRUST_FORWARDED: not an integer 0..${MAX_TRUSTED_HOPS}, true or false (got ${JSON.stringify(rawTrust)})`,
      );
    options.trustForwarded = hops;
  }
  // Empty counts as unset (as for every variable): listen(port, '') binds every interface.
  const host = env['LOADWISE_GW_HOST'] || '127.0.0.1';
  return {
    options,
    host,
    port,
    acceptHandles,
    stopGraceMs,
    readyTimeoutMs,
    id: env['LOADWISE_GW_ID'] || undefined,
  };
}

/** Logs go to stderr (the journal under systemd); stdout carries only the listening line. */
const stderrLogger = {
  info: (msg: string) => process.stderr.write(`info ${msg}\n`),
  warn: (msg: string) => process.stderr.write(`warn ${msg}\n`),
  error: (msg: string) => process.stderr.write(`error ${msg}\n`),
};

const NAME_WIDTH = Math.max(...Object.keys(GATEWAY_ENV).map((k) => k.length));

function help(): string {
  return [
    'Usage: node examples/dist/gateway-server.js [--exit-with-parent]   (configured by environment)',
    '',
    ...Object.entries(GATEWAY_ENV).map(([k, v]) => `  ${k.padEnd(NAME_WIDTH)} ${v}`),
    '',
    `Serves the balancer on every path except ${STATUS_PATH} and ${METRICS_PATH}.`,
    '',
  ].join('\n');
}

/**
 * Its flags, parsed strictly: an unknown one (`--exit-with-parnt`) or a stray argument is one
 * line and exit 2. argv.includes() ignored them, and the misspelt flag's gateway started
 * without it.
 */
const FLAGS = {
  help: { type: 'boolean', short: 'h' },
  'exit-with-parent': { type: 'boolean' },
} as const;

async function main(): Promise<void> {
  // A server goes on without its output: a closed terminal (SIGHUP) made the stop's own
  // log line an uncaught write error, and the requests in flight were cut after all.
  onLostOutput(() => undefined);
  const { values: flags } = parseFlags(
    'gateway-server',
    FLAGS,
    '--help lists the flag and the variables',
  );
  if (flags.help) {
    process.stdout.write(help());
    return;
  }
  let config: ReturnType<typeof configFromEnv>;
  let lb: ReturnType<typeof loadBalance>;
  try {
    config = configFromEnv(process.env);
    lb = loadBalance({
      acceptQueue: { backlog: LISTEN_BACKLOG },
      ...config.options,
      logger: stderrLogger,
    });
  } catch (err) {
    if (err instanceof ConfigError || err instanceof GatewayError) {
      process.stderr.write(`gateway-server: ${err.message}\n`);
      process.exit(2);
    }
    throw err;
  }
  const app = express();
  if (config.id) {
    const id = config.id;
    app.use((_req, res, next) => {
      res.setHeader('x-loadwise-gateway', id);
      next();
    });
  }
  app.use(lb);
  // Checked every 2 s (Node's default 30 s), a head within 10 s and a request within 60 s
  // (docs/gateway.md, "What your http.Server must do"): with Node's 60 s and 300 s, 2,000
  // connections that each sent a head byte every 3 s were all held for as long as they went
  // on; with these, each got 408 and was closed at 10 s.
  const server = http.createServer(
    { ...gatewayServerOptions(), connectionsCheckingInterval: 2_000 },
    app,
  );
  server.headersTimeout = 10_000;
  server.requestTimeout = 60_000;
  // Idle client connections stay open longer than a front's idle timeout (60 s on an AWS
  // ALB): Node's default 5 s closes sockets a client may be reusing (docs/gateway.md).
  server.keepAliveTimeout = 65_000;
  server.on('upgrade', lb.upgrade);
  let stopping = false;
  const stop = (signal: string): void => {
    if (stopping) return;
    stopping = true;
    process.stderr.write(`gateway-server: ${signal}: finishing in-flight requests, then closing\n`);
    // The recipe of docs/gateway.md, "Shutdown": stop accepting (idle keep-alive
    // connections close now), and drain the balancer at once, so that every answer
    // from here on says `Connection: close`. One grace for both: close() waits for
    // the requests in flight and for the server's last connection, cuts what still
    // runs after the grace (502 LW_GW_CLOSED_IN_FLIGHT, 503 LW_GW_CLOSED if no backend has
    // it), and resolves once those answers are
    // out. (This used to wait for the server, then give lb.close() a grace of its
    // own: twice the grace, past systemd's stop timeout, and keep-alive clients
    // were served without `Connection: close` all along.)
    server.close();
    void lb.close({ graceMs: config.stopGraceMs, server }).then(
      () => process.exit(0),
      () => process.exit(1),
    );
  };
  process.on('SIGTERM', () => stop('SIGTERM'));
  process.on('SIGINT', () => stop('SIGINT'));
  // A closed terminal, or a `kill -HUP` meant as a reload (what it is for a runWorkers pool,
  // README): without a handler SIGHUP ended the process at once, with no log line and every
  // request in flight cut. There is no pool to reload here, so it stops as on SIGTERM, as the
  // quick start does without --workers; a service manager's restart policy (Restart=always,
  // Compose's restart:) then starts it again with its configuration read anew.
  process.on('SIGHUP', () => stop('SIGHUP'));
  if (flags['exit-with-parent']) {
    // The parent holds our stdin pipe: when it goes away (even by SIGKILL), so do we.
    process.stdin.on('end', () => stop('parent gone'));
    process.stdin.on('error', () => stop('parent gone'));
    process.stdin.resume();
  }
  // Take traffic once the balancer is ready (docs/gateway.md, "Warm-up and readiness"):
  // subscribed to the broker and warmed up, or told the broker is out of reach (within its
  // connect timeout, then routing on local signals). It listened at once before, and a
  // restart served its first requests before the subscription and the warm-up.
  // requireBroker: true makes an unreachable broker a failed start.
  try {
    await lb.ready({ timeoutMs: config.readyTimeoutMs });
  } catch (err) {
    // Stopped meanwhile (ready() rejects with LW_GW_CLOSED): stop() exits.
    if (stopping) return;
    process.stderr.write(`gateway-server: not ready: ${(err as Error).message}\n`);
    process.exit(1);
  }
  if (stopping) return;
  try {
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen({ port: config.port, host: config.host, backlog: LISTEN_BACKLOG }, resolve);
    });
  } catch (err) {
    // A host that does not resolve or is not this machine's, a port taken: the configuration,
    // said in one line as for every other variable (it was a stack trace and exit 1).
    const code = (err as NodeJS.ErrnoException).code ?? (err as Error).message;
    process.stderr.write(
      `gateway-server: LOADWISE_GW_HOST/LOADWISE_GW_PORT: cannot listen on ${config.host}:${config.port} (${code})\n`,
    );
    await lb.close({ graceMs: 0 });
    process.exit(2);
  }
  // More than one connection accepted per loop turn on Node 20 (docs/gateway.md, "Accept queue").
  await multiAccept(server, { handles: config.acceptHandles, backlog: LISTEN_BACKLOG });
  const { port } = server.address() as AddressInfo;
  process.stdout.write(
    `${JSON.stringify({ event: 'listening', id: config.id ?? null, port, pid: process.pid })}\n`,
  );
}

if (require.main === module) {
  main().catch((err: unknown) => {
    process.stderr.write(`gateway-server: ${(err as Error).stack ?? String(err)}\n`);
    process.exit(1);
  });
}
