/**
 * Every balancer a scenario can compare, by name. Each starts in its own
 * process(es) on a loopback port in front of the same running backends.
 */
import { join, resolve } from 'node:path';
import type { GatewayDiag } from '../procs/gateway-diag';
import type { AgentArgsTransform, RunningBackend } from './cluster';
import { waitForHttp } from './http-get';
import { freePort, startHaproxy, startNginx, type HaproxyPolicy, type NginxPolicy } from './peers';
import { forkProc, type Proc } from './procs';

export type BalancerFamily =
  | 'loadwise'
  | 'express-hpm'
  | 'express-hpm-keepalive'
  | 'express-hpm-classes'
  | 'express-undici'
  | 'nginx'
  | 'haproxy';

export interface BalancerContext {
  backends: RunningBackend[];
  tmpDir: string;
  brokerUrl: string;
  prefix: string;
  /** Key file the agents sign with; the loadwise gateway verifies with it. */
  keyFile: string;
}

export interface RunningBalancer {
  url: string;
  /** Processes whose CPU counts as the balancer's. */
  procs: Proc[];
  /** Further pids whose CPU counts as the balancer's (workers the gateway process forked). */
  extraPids?: number[];
  resetDiag(): void;
  /** Event-loop delay and GC figures (Node gateways only). */
  diag(): Promise<GatewayDiag | undefined>;
  stop(): Promise<void>;
  /**
   * SIGKILL the balancer's process and start it again on the same port;
   * resolves once the new one is ready (the restart variant of the cold-start
   * scenario). `procs` keeps the first process: CPU is not measured across it.
   * Resolves with what to say of the new process and, when it took connections
   * before it was ready (`listenBeforeReady`), the epoch ms it began to.
   */
  restart?(): Promise<string | { detail: string; backAtMs: number } | undefined>;
}

export interface BalancerDef {
  name: string;
  family: BalancerFamily;
  start(ctx: BalancerContext, instance: number): Promise<RunningBalancer>;
  /**
   * This balancer's runs need the agents started with other flags (e.g.
   * cluster.ts withoutCgroup); the engine restarts them before its run, and
   * back before the next balancer's.
   */
  agentArgs?: AgentArgsTransform;
}

/** SIGKILL, and resolves once the process has exited. */
async function kill(proc: Proc): Promise<void> {
  const child = proc.child;
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise((resolve) => child.once('exit', resolve));
  child.kill('SIGKILL');
  await exited;
}

async function nodeGateway(
  name: string,
  script: string,
  config: Record<string, unknown>,
): Promise<RunningBalancer> {
  // `nodeArgs`: flags for the gateway's node (a CPU profile of one run, say).
  const { nodeArgs, ...rest } = config as { nodeArgs?: string[] };
  let proc = forkProc(name, script, rest, nodeArgs ?? []);
  try {
    // Ready includes `await lb.ready()`: the broker and the warm-up (up to 5 s on a slow host).
    const { port, workerPids } = await proc.waitFor<{ port: number; workerPids?: number[] }>(
      'ready',
      30_000,
    );
    const url = `http://127.0.0.1:${port}`;
    await waitForHttp(url + '/healthz');
    let restarts = 0;
    return {
      url,
      procs: [proc],
      extraPids: workerPids,
      resetDiag: () => proc.send({ type: 'diag-reset' }),
      diag: async () => {
        proc.send({ type: 'diag' });
        return (await proc.waitFor<{ diag: GatewayDiag }>('diag', 5_000)).diag;
      },
      stop: () => proc.stop(),
      restart: async () => {
        if (workerPids) {
          // A worker pool restarts as an operator restarts it: SIGHUP to the
          // primary, a rolling reload (runWorkers reload()), nothing killed.
          const reloaded = proc.waitFor<{ ms?: number; replaced?: number; error?: string }>(
            'reloaded',
            60_000,
          );
          proc.child.kill('SIGHUP');
          const r = await reloaded;
          if (r.error) throw new Error(`${name}: reload failed: ${r.error}`);
          return `SIGHUP: ${r.replaced} worker(s) replaced one at a time in ${r.ms} ms`;
        }
        await kill(proc);
        // Ready (the gateway's own `await lb.ready()`, then listen): no probe request of ours.
        proc = forkProc(`${name}-restart${++restarts}`, script, { ...rest, port }, nodeArgs ?? []);
        // A gateway that listens before lb.ready() says so at once: it is back from then.
        const listening = (rest as { listenBeforeReady?: boolean }).listenBeforeReady
          ? proc.waitFor('listening', 30_000).then(() => Date.now())
          : undefined;
        listening?.catch(() => undefined);
        const r = await proc.waitFor<{
          readyMs?: number;
          uptimeMs?: number;
          listenedFirst?: boolean;
        }>('ready', 30_000);
        if (!r.listenedFirst || !listening) {
          return `listening at ${r.uptimeMs ?? '?'} ms of its life, after ${r.readyMs ?? '?'} ms of lb.ready()`;
        }
        return {
          detail: `listening at ${r.uptimeMs ?? '?'} ms of its life, then ${r.readyMs ?? '?'} ms of lb.ready() while serving`,
          backAtMs: await listening,
        };
      },
    };
  } catch (err) {
    await proc.stop();
    throw err;
  }
}

/**
 * `start` runs the native program on `port`; called again by restart().
 * `reloadOnRestart`: restart() sends SIGHUP instead (nginx's graceful reload:
 * new workers with the configuration read again, old ones finish their
 * requests), and resolves at once.
 */
async function nativeGateway(
  start: () => Proc,
  port: number,
  reloadOnRestart = false,
): Promise<RunningBalancer> {
  const url = `http://127.0.0.1:${port}`;
  let proc = start();
  try {
    await waitForHttp(url + '/healthz');
  } catch (err) {
    await proc.stop();
    throw new Error(`${proc.name}: ${(err as Error).message}\n${proc.stderrTail()}`);
  }
  return {
    url,
    procs: [proc],
    resetDiag: () => undefined,
    diag: async () => undefined,
    stop: () => proc.stop(),
    restart: async () => {
      if (reloadOnRestart) {
        proc.child.kill('SIGHUP');
        return 'SIGHUP (graceful reload)';
      }
      await kill(proc);
      proc = start();
      // Serving again: the first GET through it that answers (polled every 10 ms).
      await waitForHttp(url + '/healthz', 10_000, 10);
      return undefined;
    },
  };
}

function loadwiseOptions(
  ctx: BalancerContext,
  strategy: string,
  extra: Record<string, unknown>,
): Record<string, unknown> {
  return {
    backends: ctx.backends.map((b) => ({ id: b.id, url: b.url })),
    broker: ctx.brokerUrl,
    topicPrefix: ctx.prefix,
    strategy,
    // One load generator process stands for a population of clients.
    maxInFlightPerClient: false,
    ...extra,
  };
}

export function loadwise(
  spec: string,
  extra: Record<string, unknown> = {},
  /** Top-level settings of bench/procs/gateway-loadwise.ts (traceEveryMs). */
  config: Record<string, unknown> = {},
  /** Appended to the row's name (`loadwise <spec><suffix>`): a variant of the same strategy. */
  suffix = '',
): BalancerDef {
  const { strategy, strategyOptions } = parseStrategySpec(spec);
  const options = strategyOptions ? { strategyOptions, ...extra } : extra;
  return {
    name: `loadwise ${spec}${suffix}`,
    family: 'loadwise',
    start: (ctx, instance) =>
      nodeGateway(`loadwise-${strategy}-${instance}`, 'gateway-loadwise.js', {
        ...config,
        keyFile: ctx.keyFile,
        options: loadwiseOptions(ctx, strategy, options),
      }),
  };
}

/**
 * `--strategies` entries: a strategy name, or a name with strategy options
 * (`load-aware/choices=3/tieTolerance=0.1`, numbers), a variant measured
 * beside the default in the same run.
 */
export function parseStrategySpec(spec: string): {
  strategy: string;
  strategyOptions?: Record<string, number>;
} {
  const [strategy = spec, ...pairs] = spec.split('/');
  if (pairs.length === 0) return { strategy };
  const strategyOptions: Record<string, number> = {};
  for (const pair of pairs) {
    const [key, value] = pair.split('=');
    const n = Number(value);
    if (!key || value === undefined || !Number.isFinite(n)) {
      throw new Error(`strategy variant ${spec}: expected name/key=number, got ${pair}`);
    }
    strategyOptions[key] = n;
  }
  return { strategy, strategyOptions };
}

/**
 * The default gateway of another checkout (`root`, built with `npx tsc -b`):
 * its bench/dist/procs/gateway-loadwise.js, which loads that checkout's
 * packages. A before/after comparison in one run (bench:overhead-ab --baseline).
 */
export function loadwiseAt(root: string, label: string, strategy = 'load-aware'): BalancerDef {
  return {
    name: `loadwise ${strategy} (${label})`,
    family: 'loadwise',
    start: (ctx, instance) =>
      nodeGateway(
        `loadwise-${label}-${instance}`,
        join(resolve(root), 'bench', 'dist', 'procs', 'gateway-loadwise.js'),
        { keyFile: ctx.keyFile, options: loadwiseOptions(ctx, strategy, {}) },
      ),
  };
}

/**
 * The default gateway as `workers` processes on one port (runWorkers,
 * node:cluster). The restart variant reloads the pool (SIGHUP to the primary).
 */
export function loadwiseWorkers(
  strategy: string,
  workers: number,
  /** A replaced worker's closeListener drainMs (default 0: every answer closes at once). */
  drainMs?: number,
): BalancerDef {
  return {
    name: `loadwise ${strategy}, ${workers} worker${workers === 1 ? '' : 's'}`,
    family: 'loadwise',
    start: (ctx, instance) =>
      nodeGateway(`loadwise-${strategy}-w${workers}-${instance}`, 'gateway-loadwise.js', {
        keyFile: ctx.keyFile,
        workers,
        ...(drainMs === undefined ? {} : { drainMs }),
        options: loadwiseOptions(ctx, strategy, {}),
      }),
  };
}

export const expressHpm: BalancerDef = {
  name: 'express+hpm round robin',
  family: 'express-hpm',
  start: (ctx, instance) =>
    nodeGateway(`hpm-${instance}`, 'gateway-hpm.js', {
      backends: ctx.backends.map((b) => ({ id: b.id, url: b.url })),
    }),
};

/**
 * Scenario 8's diagnosis: the same gateway with a keep-alive agent to the backends.
 * `config`: further settings of bench/procs/gateway-hpm.ts, or `nodeArgs`.
 */
export function expressHpmKeepAliveWith(config: Record<string, unknown> = {}): BalancerDef {
  return {
    name: 'express+hpm round robin, keep-alive agent',
    family: 'express-hpm-keepalive',
    start: (ctx, instance) =>
      nodeGateway(`hpm-ka-${instance}`, 'gateway-hpm.js', {
        ...config,
        backends: ctx.backends.map((b) => ({ id: b.id, url: b.url })),
        keepAlive: true,
      }),
  };
}

export const expressHpmKeepAlive: BalancerDef = expressHpmKeepAliveWith();

/**
 * The server-classes comparison (docs/gateway.md, "The gateway's server"): the
 * loadwise gateway on Node's own request and response classes (`app.listen`),
 * and the keep-alive peer on loadwise's gatewayServerOptions(), which any
 * Express server can use. `config`: further gateway settings (`nodeArgs`).
 */
export function serverClassVariants(config: Record<string, unknown> = {}): BalancerDef[] {
  const peer = expressHpmKeepAliveWith({ ...config, gatewayServerClasses: true });
  return [
    loadwise('load-aware', {}, { ...config, nodeServerClasses: true }, " on Node's server classes"),
    { ...peer, name: `${peer.name}, gateway server classes`, family: 'express-hpm-classes' },
  ];
}

/**
 * Express proxying with undici (bench/procs/gateway-undici.ts): a keep-alive
 * Pool per backend, round robin. Beside the keep-alive HPM peer it shows what
 * Node's http client costs a Node proxy.
 */
export const expressUndici: BalancerDef = {
  name: 'express+undici round robin, keep-alive pool',
  family: 'express-undici',
  start: (ctx, instance) =>
    nodeGateway(`undici-${instance}`, 'gateway-undici.js', {
      backends: ctx.backends.map((b) => ({ id: b.id, url: b.url })),
    }),
};

/** `reload`: the restart variant reloads it (SIGHUP) instead of killing it. */
export function nginx(policy: NginxPolicy, opts: { reload?: boolean } = {}): BalancerDef {
  const slug = policy.replace(/ /g, '-');
  return {
    name: `nginx ${policy}${opts.reload ? ', reload' : ''}`,
    family: 'nginx',
    start: async (ctx, instance) => {
      const port = await freePort();
      return nativeGateway(
        () => startNginx(ctx.tmpDir, `nginx-${slug}-${instance}`, port, policy, ctx.backends),
        port,
        opts.reload,
      );
    },
  };
}

export function haproxy(policy: HaproxyPolicy): BalancerDef {
  return {
    name: `haproxy ${policy}`,
    family: 'haproxy',
    start: async (ctx, instance) => {
      const port = await freePort();
      return nativeGateway(
        () => startHaproxy(ctx.tmpDir, `haproxy-${policy}-${instance}`, port, policy, ctx.backends),
        port,
      );
    },
  };
}

/** All peers the issue names. */
export const PEERS: BalancerDef[] = [
  nginx('round-robin'),
  nginx('least_conn'),
  nginx('random two least_conn'),
  haproxy('roundrobin'),
  haproxy('leastconn'),
  haproxy('agent-check'),
  expressHpm,
];
