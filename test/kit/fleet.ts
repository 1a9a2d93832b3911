/**
 * A fleet of real backends for end-to-end tests: each backend is the example
 * program (examples/dist/backend.js) in its own process, each with its own
 * health agent (the loadwise-agent CLI) in another process, publishing to a
 * real broker. Tests break them with real signals: SIGKILL (crash), SIGSTOP
 * (hang), SIGCONT, SIGTERM, and restart them on the same port.
 *
 * Needs the build (`npx tsc -b`): the children run dist/ code.
 */
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import {
  startAgentProcess,
  startBackendProcess,
  TRACKER_STATS_PATH,
  type Exit,
  type ManagedChild,
} from '../../examples/lib/processes';
import { startReportMonitor, type ReportMonitor } from '../../examples/lib/report-monitor';
import type { SigningKey } from '@loadwise/protocol';

/** Agents report often in tests so states change within a second or two. */
export const FLEET_AGENT_INTERVAL_MS = 250;

export interface FleetBackendSpec {
  id: string;
  /** Worker slots (default 8). */
  slots?: number;
  /** Service time per request, ms (default 10). */
  serviceMs?: number;
  /** Requests waiting for a slot beyond this get 503 + Retry-After (default 1024, the backend's). */
  maxQueue?: number;
  /** Start an agent beside it (default true when the fleet has a broker). */
  agent?: boolean;
}

export interface FleetOptions {
  backends: FleetBackendSpec[];
  /** Broker the agents publish to; without it no agent starts. */
  brokerUrl?: string;
  /** Topic prefix (use uniquePrefix(): retained messages persist on Mosquitto). */
  prefix?: string;
  intervalMs?: number;
  /** Extra loadwise-agent flags for every agent. */
  agentArgs?: string[];
  /**
   * Agents sign their reports with a key made for the fleet (`fleet.keys`,
   * for the gateway), as a gateway requires by default. `false`: unsigned
   * agents (a test of the unsigned posture); so does an own `--key-file` in
   * agentArgs (then `fleet.keys` is empty).
   */
  sign?: boolean;
}

export interface BackendKnobs {
  /** Service time per request, ms. */
  serviceMs?: number;
  /** Answer every request with this status; 0 turns it off. */
  failStatus?: number;
  /** Requests the backend keeps running against itself: load the gateway does not see. */
  hiddenInFlight?: number;
}

export interface TrackerStats {
  inFlight: number;
  queued: number;
  completed: number;
  rejected: number;
}

interface SharedFleetOptions {
  brokerUrl?: string;
  prefix?: string;
  intervalMs: number;
  agentArgs: string[];
  /** Temporary directory for the backends' PID files and the fleet's key file. */
  dir: string;
}

export class FleetBackend {
  /** The backend process; replaced by restart(). */
  process!: ManagedChild;
  /** The agent process, when one runs; replaced by restartAgent(). */
  agent: ManagedChild | undefined;
  readonly url: string;

  constructor(
    readonly spec: Required<FleetBackendSpec>,
    readonly port: number,
    process: ManagedChild,
    private readonly fleet: SharedFleetOptions,
  ) {
    this.process = process;
    this.url = `http://127.0.0.1:${port}`;
  }

  get id(): string {
    return this.spec.id;
  }

  /** The backend writes its PID here; the agent re-reads it, so it follows a restart. */
  get pidFile(): string {
    return pidFileOf(this.fleet.dir, this.spec.id);
  }

  /** Kills the backend process with `signal` and waits for it to exit (SIGKILL: a crash). */
  async kill(signal: NodeJS.Signals = 'SIGKILL'): Promise<Exit> {
    return this.process.stop(signal);
  }

  /** SIGSTOP: the process hangs; its sockets stay open but nothing answers. */
  pause(): void {
    this.process.signal('SIGSTOP');
  }

  /** SIGCONT after pause(). */
  resume(): void {
    this.process.signal('SIGCONT');
  }

  /** Starts the backend again on the same port (after kill()); the agent keeps running. */
  async restart(): Promise<void> {
    if (this.process.running) await this.process.stop('SIGKILL');
    const started = await startBackendProcess({
      id: this.spec.id,
      slots: this.spec.slots,
      serviceMs: this.spec.serviceMs,
      maxQueue: this.spec.maxQueue,
      port: this.port,
      pidFile: this.pidFile,
    });
    this.process = started.process;
  }

  /** Kills the agent with `signal` (SIGKILL: no goodbye, the broker sends its Last Will). */
  async killAgent(signal: NodeJS.Signals = 'SIGKILL'): Promise<Exit | undefined> {
    return this.agent?.stop(signal);
  }

  /** Starts a new agent (after killAgent()). */
  startAgent(): void {
    if (this.fleet.brokerUrl === undefined) throw new Error('fleet has no broker');
    if (this.agent?.running) throw new Error(`agent ${this.id} is still running`);
    this.agent = startAgentProcess({
      backendId: this.id,
      brokerUrl: this.fleet.brokerUrl,
      prefix: this.fleet.prefix,
      backendPort: this.port,
      servicePidFile: this.pidFile,
      intervalMs: this.fleet.intervalMs,
      drainGraceMs: 100,
      // The first report within one interval, not after a random offset of up to a second.
      extraArgs: ['--jitter-ms', '0', ...this.fleet.agentArgs],
    });
  }

  /** Changes the backend's behaviour at runtime (POST /admin/config). */
  async configure(knobs: BackendKnobs): Promise<void> {
    const res = await fetch(`${this.url}/admin/config`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify(knobs),
    });
    if (!res.ok) throw new Error(`configure ${this.id}: ${res.status} ${await res.text()}`);
  }

  /** The backend's own tracker figures. */
  async stats(): Promise<TrackerStats> {
    const res = await fetch(`${this.url}${TRACKER_STATS_PATH}`);
    return (await res.json()) as TrackerStats;
  }

  async close(): Promise<void> {
    // The agent first, so its draining/offline goodbye is not a report about a dead backend.
    await this.agent?.stop('SIGTERM');
    await this.process.stop('SIGTERM');
  }
}

export interface Fleet {
  readonly backends: FleetBackend[];
  /** The key the agents sign with (empty when they do not): pass as the gateway's `keys`. */
  readonly keys: SigningKey[];
  get(id: string): FleetBackend;
  /** Backend configuration for loadBalance({ backends }). */
  backendConfig(): { id: string; url: string }[];
  /** Reports as a gateway would see them (only when the fleet has a broker). */
  readonly monitor: ReportMonitor | undefined;
  /** Waits until every running agent has published `minReports` new reports. */
  waitForReports(minReports?: number, timeoutMs?: number): Promise<void>;
  close(): Promise<void>;
}

function pidFileOf(dir: string, id: string): string {
  return path.join(dir, `${id}.pid`);
}

export async function startFleet(opts: FleetOptions): Promise<Fleet> {
  const shared: SharedFleetOptions = {
    dir: mkdtempSync(path.join(tmpdir(), 'lw-fleet-')),
    brokerUrl: opts.brokerUrl,
    prefix: opts.prefix,
    intervalMs: opts.intervalMs ?? FLEET_AGENT_INTERVAL_MS,
    agentArgs: opts.agentArgs ?? [],
  };
  const keys: SigningKey[] = [];
  if (opts.sign !== false && !shared.agentArgs.includes('--key-file')) {
    const key = { keyId: 'fleet', secret: randomBytes(32) };
    const keyFile = path.join(shared.dir, 'keys');
    writeFileSync(keyFile, `${key.keyId} ${key.secret.toString('base64')}\n`, { mode: 0o600 });
    shared.agentArgs = [...shared.agentArgs, '--key-file', keyFile];
    keys.push(key);
  }
  const backends: FleetBackend[] = [];
  let monitor: ReportMonitor | undefined;
  const close = async (): Promise<void> => {
    await Promise.all(backends.map((b) => b.close()));
    await monitor?.close();
    rmSync(shared.dir, { recursive: true, force: true });
  };
  try {
    if (opts.brokerUrl !== undefined)
      monitor = await startReportMonitor(opts.brokerUrl, opts.prefix);
    const started = await Promise.all(
      opts.backends.map(async (spec) => {
        const full: Required<FleetBackendSpec> = {
          slots: 8,
          serviceMs: 10,
          maxQueue: 1024,
          agent: opts.brokerUrl !== undefined,
          ...spec,
        };
        const b = await startBackendProcess({ ...full, pidFile: pidFileOf(shared.dir, full.id) });
        const fb = new FleetBackend(full, b.port, b.process, shared);
        backends.push(fb);
        if (full.agent) fb.startAgent();
        return fb;
      }),
    );
    backends.sort((a, b) => started.indexOf(a) - started.indexOf(b));
  } catch (err) {
    await close();
    throw err;
  }
  return {
    backends,
    keys,
    monitor,
    get(id) {
      const b = backends.find((x) => x.id === id);
      if (!b) throw new Error(`no backend ${id} in the fleet`);
      return b;
    },
    backendConfig: () => backends.map((b) => ({ id: b.id, url: b.url })),
    async waitForReports(minReports = 1, timeoutMs = 15_000) {
      if (!monitor) throw new Error('fleet has no broker');
      const ids = backends.filter((b) => b.agent?.running).map((b) => b.id);
      await monitor.waitForReports(ids, minReports, timeoutMs);
    },
    close,
  };
}

/** Polls `check` until it returns true or `timeoutMs` passes: waits on states, never on fixed sleeps. */
export async function eventually(
  check: () => boolean | Promise<boolean>,
  timeoutMs = 10_000,
  what: string | (() => string) = 'condition',
): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) {
      // A function describes the state at the deadline, so a failure explains itself.
      const text = typeof what === 'function' ? what() : what;
      throw new Error(`${text} not met within ${timeoutMs} ms`);
    }
    await new Promise((r) => setTimeout(r, 50));
  }
}
