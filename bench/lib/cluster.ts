/**
 * The backends of a scenario: one process per backend (procs/backend.ts) and,
 * beside each, its health agent (the real CLI) reading the backend's tracker
 * over HTTP and publishing to the broker.
 */
import { dirname, join } from 'node:path';
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
}

export interface RunningBackend extends BackendSpec {
  port: number;
  agentCheckPort: number;
  url: string;
  proc: Proc;
  agent?: Proc;
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
  stop(): Promise<void>;
}

export interface ClusterOptions {
  backends: BackendSpec[];
  maxQueue: number;
  /** Start one health agent per backend (needs a broker). */
  agents?: { brokerUrl: string; prefix: string; intervalMs: number; keyFile: string };
}

export async function startCluster(opts: ClusterOptions): Promise<Cluster> {
  const backends: RunningBackend[] = [];
  const all: Proc[] = [];
  const stopAll = async (): Promise<void> => {
    await Promise.all(all.map((p) => p.stop()));
  };
  try {
    for (const spec of opts.backends) {
      const proc = forkProc(`backend-${spec.id}`, 'backend.js', {
        id: spec.id,
        slots: spec.slots,
        serviceMs: spec.serviceMs,
        maxQueue: opts.maxQueue,
        agentCheckPort: 0,
      });
      all.push(proc);
      const ready = await proc.waitFor<{ port: number; agentCheckPort: number }>('ready');
      backends.push({
        ...spec,
        port: ready.port,
        agentCheckPort: ready.agentCheckPort,
        url: `http://127.0.0.1:${ready.port}`,
        proc,
      });
    }
    if (opts.agents) {
      for (const b of backends) {
        const agent = spawnProc(`agent-${b.id}`, process.execPath, [
          AGENT_CLI,
          ...agentArgs(b, opts.agents.brokerUrl, opts.agents.prefix, opts.agents.intervalMs),
          // Signed: gateways refuse unsigned reports by default.
          '--key-file',
          opts.agents.keyFile,
        ]);
        all.push(agent);
        b.agent = agent;
      }
      // Give agents time to connect and publish a first report before load starts.
      await sleep(opts.agents.intervalMs * 2 + 500);
      for (const b of backends) {
        if (b.agent && b.agent.child.exitCode !== null) {
          throw new Error(`agent for ${b.id} exited: ${b.agent.stderrTail()}`);
        }
      }
    }
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
  return [
    '--backend-id',
    b.id,
    '--broker',
    brokerUrl,
    '--prefix',
    prefix,
    '--interval-ms',
    String(intervalMs),
    '--tracker-url',
    b.url + STATS_PATH,
    '--service-pid',
    String(b.proc.pid),
  ];
}
