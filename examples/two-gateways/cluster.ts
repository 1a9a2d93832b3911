/**
 * Two gateways sharing one broker behind a round-robin TCP front: backends
 * (examples/dist/backend.js), one agent each (the loadwise-agent CLI), two
 * gateway processes (examples/dist/gateway-server.js, same backends, same
 * broker and topic prefix) and the front (front.ts) in this process. Every
 * agent publishes once; both gateways hear every report and route on it.
 */
import { createRunKey } from '../lib/run-key';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import {
  DEFAULT_START_TIMEOUT_MS,
  ManagedChild,
  repoRoot,
  startAgentProcess,
  startBackendProcess,
  waitForListening,
  type StartedBackend,
} from '../lib/processes';
import { startRoundRobinFront, type RoundRobinFront } from './front';

export interface ClusterOptions {
  /** The broker every agent and both gateways use. */
  brokerUrl: string;
  /** Topic prefix (default 'loadwise'). */
  prefix?: string;
  /** Port of the TCP front (default 0: any free port). */
  frontPort?: number;
  /** Backends (default three of 8 slots, 10 ms). */
  backends?: { id: string; slots: number; serviceMs: number }[];
  /** How often agents report, ms (default 500). */
  intervalMs?: number;
  /** Gateway names (default gw-1, gw-2). */
  gatewayIds?: string[];
  /**
   * Stops the start-up between steps (Ctrl-C while it starts): whatever was started
   * is stopped, its files removed, and startCluster rejects with the signal's reason.
   */
  signal?: AbortSignal;
}

export interface RunningGateway {
  id: string;
  port: number;
  url: string;
  process: ManagedChild;
}

export interface Cluster {
  /** http://127.0.0.1:<front port>: where clients send requests. */
  url: string;
  front: RoundRobinFront;
  gateways: RunningGateway[];
  backends: StartedBackend[];
  /** Agent process per backend id. */
  agents: Map<string, ManagedChild>;
  close(): Promise<void>;
}

export const DEFAULT_BACKENDS = [
  { id: 'b1', slots: 8, serviceMs: 10 },
  { id: 'b2', slots: 8, serviceMs: 10 },
  { id: 'b3', slots: 8, serviceMs: 10 },
];

/** Starts examples/dist/gateway-server.js with `env` (LOADWISE_GW_*) and waits until it listens. */
export async function startGatewayServer(
  id: string,
  env: NodeJS.ProcessEnv,
  /** Stops the wait for its port (and the process) when aborted: a Ctrl-C while it starts. */
  signal?: AbortSignal,
): Promise<RunningGateway> {
  const script = path.join(repoRoot(), 'examples', 'dist', 'gateway-server.js');
  const proc = new ManagedChild(`gateway ${id}`, process.execPath, [script, '--exit-with-parent'], {
    PATH: process.env.PATH,
    LOADWISE_GW_ID: id,
    LOADWISE_GW_HOST: '127.0.0.1',
    LOADWISE_GW_PORT: '0',
    ...env,
  });
  const listening = waitForListening(proc, DEFAULT_START_TIMEOUT_MS);
  let onAbort: (() => void) | undefined;
  const aborted = new Promise<never>((_resolve, reject) => {
    onAbort = () => reject(signal?.reason);
    signal?.addEventListener('abort', onAbort, { once: true });
  });
  try {
    // Waiting for its port waits for its ready(): 10 s with the broker out of reach, and
    // a Ctrl-C meanwhile took that long to be heard.
    const port = await Promise.race([listening, aborted]);
    return { id, port, url: `http://127.0.0.1:${port}`, process: proc };
  } catch (err) {
    listening.catch(() => undefined);
    await proc.stop('SIGTERM');
    throw err;
  } finally {
    if (onAbort) signal?.removeEventListener('abort', onAbort);
  }
}

export async function startCluster(opts: ClusterOptions): Promise<Cluster> {
  const prefix = opts.prefix ?? 'loadwise';
  const dir = mkdtempSync(path.join(tmpdir(), 'lw-two-gw-'));
  // The gateways refuse unsigned reports by default: agents sign with a run's key.
  const runKey = createRunKey('two-gateways');
  const backends: StartedBackend[] = [];
  const agents = new Map<string, ManagedChild>();
  const gateways: RunningGateway[] = [];
  let front: RoundRobinFront | undefined;
  const close = async (): Promise<void> => {
    await front?.close();
    await Promise.all(gateways.map((g) => g.process.stop('SIGTERM')));
    await Promise.all([...agents.values()].map((a) => a.stop('SIGTERM')));
    await Promise.all(backends.map((b) => b.process.stop('SIGTERM')));
    rmSync(dir, { recursive: true, force: true });
    runKey.remove();
  };
  try {
    for (const spec of opts.backends ?? DEFAULT_BACKENDS) {
      opts.signal?.throwIfAborted();
      const pidFile = path.join(dir, `${spec.id}.pid`);
      const b = await startBackendProcess({ ...spec, pidFile });
      backends.push(b);
      agents.set(
        spec.id,
        startAgentProcess({
          backendId: spec.id,
          brokerUrl: opts.brokerUrl,
          prefix,
          backendPort: b.port,
          servicePidFile: pidFile,
          intervalMs: opts.intervalMs ?? 500,
          drainGraceMs: 200,
          extraArgs: ['--key-file', runKey.file],
          // Killed outright, it takes its agents with it (the quick start's rule).
          exitWithParent: true,
        }),
      );
    }
    const env = {
      LOADWISE_GW_BACKENDS: backends.map((b) => `${b.id}=${b.url}`).join(','),
      LOADWISE_GW_BROKER: opts.brokerUrl,
      LOADWISE_GW_PREFIX: prefix,
      LOADWISE_GW_KEY_FILE: runKey.file,
    };
    for (const id of opts.gatewayIds ?? ['gw-1', 'gw-2']) {
      opts.signal?.throwIfAborted();
      gateways.push(await startGatewayServer(id, env, opts.signal));
    }
    opts.signal?.throwIfAborted();
    front = await startRoundRobinFront(
      gateways.map((g) => ({ host: '127.0.0.1', port: g.port })),
      { port: opts.frontPort ?? 0 },
    );
  } catch (err) {
    await close();
    throw err;
  }
  return { url: `http://127.0.0.1:${front.port}`, front, gateways, backends, agents, close };
}
