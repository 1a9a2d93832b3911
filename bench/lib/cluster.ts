/**
 * The backends of a scenario: one process per backend (procs/backend.ts, or
 * procs/cpu-backend.ts for a CPU-bound one, optionally in its own CPU cgroup)
 * and, beside each, its health agent (the real CLI) reading the backend's
 * queue over HTTP (the tracker, or the CPU-bound backend's Prometheus gauge)
 * and publishing to the broker.
 */
import { dirname, join } from 'node:path';
import { METRICS_PATH, OUTSTANDING_GAUGE } from '../procs/cpu-backend';
import { cgroupProblem, createCpuGroup, sweepStaleGroups } from './cgroups';
import type { CpuGroup, CpuGroupOptions } from './cgroups';
import { forkProc, spawnProc, sleep, type Proc } from './procs';
import { httpGet } from './http-get';

export const STATS_PATH = '/.well-known/loadwise/stats';
// The real CLI, as `npx loadwise-agent` would run it (the package's bin).
const AGENT_CLI = join(
  dirname(require.resolve('@loadwise/health-agent/package.json')),
  'dist',
  'cli.js',
);

export interface BackendSpec {
  id: string;
  slots: number;
  serviceMs: number;
  /**
   * CPU-bound (procs/cpu-backend.ts): one worker, each request burns this
   * much CPU time; `slots` and `serviceMs` are then only labels (1 and cpuMs).
   */
  cpuMs?: number;
  /** Runs the backend in its own CPU cgroup with this quota (lib/cgroups.ts; needs root). */
  cgroup?: CpuGroupOptions;
}

/** Rewrites a backend's agent flags (a balancer whose agents run differently: BalancerDef.agentArgs). */
export type AgentArgsTransform = (args: string[]) => string[];

export interface RunningBackend extends BackendSpec {
  port: number;
  agentCheckPort: number;
  url: string;
  proc: Proc;
  agent?: Proc;
  /** The backend's CPU cgroup (BackendSpec.cgroup). */
  group?: CpuGroup;
  /** `--cgroup-root` for its agent, so the agent reads the backend's own group. */
  agentCgroupRoot?: string;
}

export interface Cluster {
  backends: RunningBackend[];
  /** Every process of the cluster, for CPU accounting. */
  procs(): Proc[];
  setServiceMs(id: string, serviceMs: number): void;
  /** Restores every backend's configured service time. */
  resetServiceTimes(): void;
  /** Waits until no backend has requests in flight or queued (bounded). */
  drain(timeoutMs?: number): Promise<{ drained: boolean; waitedMs: number }>;
  /**
   * Restarts the agents with their flags rewritten by `transform` (undefined:
   * as configured) unless they already run that way; true if it restarted them.
   */
  useAgentArgs(transform: AgentArgsTransform | undefined): Promise<boolean>;
  /** Stops every process, then removes the cgroups. */
  stop(): Promise<void>;
}

export interface ClusterOptions {
  backends: BackendSpec[];
  maxQueue: number;
  /** Start one health agent per backend (needs a broker). */
  agents?: { brokerUrl: string; prefix: string; intervalMs: number; keyFile: string };
  /** Where the agents' v1 cgroup views go (a directory of symlinks per backend); needed with cgroups. */
  tmpDir?: string;
}

export async function startCluster(opts: ClusterOptions): Promise<Cluster> {
  if (opts.backends.some((b) => b.cgroup)) {
    const problem = cgroupProblem();
    if (problem)
      throw new Error(
        `this scenario runs each backend in its own CPU cgroup (a CFS quota), and ${problem}; ` +
          'it does not run without them',
      );
    if (!opts.tmpDir) throw new Error('startCluster: cgroups need a tmpDir for the agents');
    sweepStaleGroups();
  }
  const backends: RunningBackend[] = [];
  const all: Proc[] = [];
  const groups: CpuGroup[] = [];
  const stopAll = async (): Promise<void> => {
    await Promise.all(all.map((p) => p.stop()));
    // Members are gone by now; remove() kills any that are not (the neighbour of a failed run).
    for (const g of groups.splice(0)) await g.remove();
  };
  let agentTransform: AgentArgsTransform | undefined;
  const startAgents = async (transform: AgentArgsTransform | undefined): Promise<void> => {
    const a = opts.agents!;
    for (const b of backends) {
      const args = agentArgs(b, a.brokerUrl, a.prefix, a.intervalMs);
      const agent = spawnProc(`agent-${b.id}`, process.execPath, [
        AGENT_CLI,
        ...(transform ? transform(args) : args),
        // Signed: gateways refuse unsigned reports by default.
        '--key-file',
        a.keyFile,
      ]);
      all.push(agent);
      b.agent = agent;
    }
    agentTransform = transform;
    // Give agents time to connect and publish a first report before load starts.
    await sleep(a.intervalMs * 2 + 500);
    for (const b of backends) {
      if (b.agent && b.agent.child.exitCode !== null) {
        throw new Error(`agent for ${b.id} exited: ${b.agent.stderrTail()}`);
      }
    }
  };
  try {
    for (const spec of opts.backends) {
      const group = spec.cgroup ? createCpuGroup(spec.id, spec.cgroup) : undefined;
      if (group) groups.push(group);
      const proc =
        spec.cpuMs !== undefined
          ? forkProc(`backend-${spec.id}`, 'cpu-backend.js', {
              id: spec.id,
              cpuMs: spec.cpuMs,
              maxQueue: opts.maxQueue,
            })
          : forkProc(`backend-${spec.id}`, 'backend.js', {
              id: spec.id,
              slots: spec.slots,
              serviceMs: spec.serviceMs,
              maxQueue: opts.maxQueue,
              agentCheckPort: 0,
            });
      all.push(proc);
      // Moved in before it serves anything (the few ms of its start run outside).
      group?.addPid(proc.pid);
      const ready = await proc.waitFor<{ port: number; agentCheckPort: number }>('ready');
      backends.push({
        ...spec,
        port: ready.port,
        agentCheckPort: ready.agentCheckPort,
        url: `http://127.0.0.1:${ready.port}`,
        proc,
        group,
        agentCgroupRoot: group?.agentRoot(opts.tmpDir!),
      });
    }
    if (opts.agents) await startAgents(undefined);
  } catch (err) {
    await stopAll();
    throw err;
  }
  return {
    backends,
    procs: () => [...all],
    setServiceMs(id, serviceMs) {
      backends.find((b) => b.id === id)?.proc.send({ type: 'set-service', serviceMs });
    },
    resetServiceTimes() {
      for (const b of backends) b.proc.send({ type: 'set-service', serviceMs: b.serviceMs });
    },
    async drain(timeoutMs = 60_000) {
      const start = Date.now();
      while (Date.now() - start < timeoutMs) {
        let busy = 0;
        for (const b of backends) {
          try {
            const s = JSON.parse((await httpGet(b.url + STATS_PATH)).body) as {
              inFlight: number;
              queued: number;
            };
            busy += s.inFlight + s.queued;
          } catch {
            busy += 1;
          }
        }
        if (busy === 0) return { drained: true, waitedMs: Date.now() - start };
        await sleep(200);
      }
      return { drained: false, waitedMs: Date.now() - start };
    },
    async useAgentArgs(transform) {
      if (!opts.agents || transform === agentTransform) return false;
      // SIGTERM: each agent publishes draining, then offline, and leaves;
      // the new one publishes online before any gateway of the next run starts.
      const old = backends.map((b) => b.agent).filter((p): p is Proc => p !== undefined);
      await Promise.all(old.map((p) => p.stop()));
      for (const p of old) if (all.includes(p)) all.splice(all.indexOf(p), 1);
      await startAgents(transform);
      return true;
    },
    stop: stopAll,
  };
}

/** Command-line flags of the health-agent CLI (packages/health-agent/src/cli.ts). */
function agentArgs(
  b: RunningBackend,
  brokerUrl: string,
  prefix: string,
  intervalMs: number,
): string[] {
  // A CPU-bound backend has no tracker: its agent reads the outstanding-requests
  // gauge (reported as `queued`, the source's default field; the gateway adds
  // every queue field into one outstanding figure) and is told the one worker.
  const queue =
    b.cpuMs !== undefined
      ? [
          '--prometheus-url',
          b.url + METRICS_PATH,
          '--prometheus-gauge',
          OUTSTANDING_GAUGE,
          '--concurrency-limit',
          '1',
        ]
      : ['--tracker-url', b.url + STATS_PATH];
  return [
    '--backend-id',
    b.id,
    '--broker',
    brokerUrl,
    '--prefix',
    prefix,
    '--interval-ms',
    String(intervalMs),
    ...queue,
    '--service-pid',
    String(b.proc.pid),
    ...(b.agentCgroupRoot ? ['--cgroup-root', b.agentCgroupRoot] : []),
  ];
}

/** The agent without the cgroup signal: `--no-cgroup` in place of `--cgroup-root`. */
export const withoutCgroup: AgentArgsTransform = (args) => [
  ...withoutFlag(args, '--cgroup-root'),
  '--no-cgroup',
];

/** `args` without `flag` and its value. */
function withoutFlag(args: string[], flag: string): string[] {
  const out: string[] = [];
  for (let i = 0; i < args.length; i++) {
    if (args[i] === flag) i++;
    else out.push(args[i]!);
  }
  return out;
}

/**
 * The agent without the service's process: no `--service-pid`, so its reports
 * carry the cgroup's (or host's) CPU but not the process's, as an agent
 * started without that flag does (the product's issue ran its agents so).
 */
export const withoutServicePid: AgentArgsTransform = (args) => withoutFlag(args, '--service-pid');

/** The agents report every `ms` instead of every second (the harness's interval). */
export function reportEvery(ms: number): AgentArgsTransform {
  return (args) => {
    const out = [...args];
    const i = out.indexOf('--interval-ms');
    if (i >= 0) out[i + 1] = String(ms);
    else out.push('--interval-ms', String(ms));
    return out;
  };
}
