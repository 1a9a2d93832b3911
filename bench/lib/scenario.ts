import type { LoadgenConfig } from '../procs/loadgen';
import type { BalancerContext, BalancerDef } from './balancers';
import type { BackendSpec } from './cluster';
import type { Proc } from './procs';

export type LoadSpec = Omit<LoadgenConfig, 'targets'>;

/** One measured condition of a scenario (a sweep has one per rate). */
export interface ScenarioCase {
  label: string;
  load: LoadSpec;
  /** Traffic straight to one backend, past the gateway: only its agent sees it. */
  hiddenLoad?: { backendId: string; rate: number };
  /** Service-time changes, ms after the end of warm-up (scenario 3). */
  events?: Array<{ atMs: number; backendId: string; serviceMs: number }>;
  /**
   * The gateway is started, then left idle this long (agents reporting, no
   * traffic) before the load starts: the cold-start scenario.
   */
  idleBeforeMs?: number;
  /**
   * Restart under load: this long after the measured load starts, the
   * balancer's process is killed (SIGKILL) and started again on the same port
   * while the load goes on (RunningBalancer.restart).
   */
  restartAtMs?: number;
  /** Gateway processes for this case (default: the scenario's `gatewayInstances`). */
  gatewayInstances?: number;
  /**
   * A noisy neighbour: a busy-loop process that joins this backend's CPU
   * cgroup (BackendSpec.cgroup) when the warm-up starts and leaves with the
   * run, taking part of the group's quota under CFS fair share.
   */
  neighbour?: { backendId: string };
  /** Extra processes for the run (scenario 7's simulated agents). */
  side?: (ctx: BalancerContext) => Promise<Proc[]>;
}

export interface Scenario {
  name: string;
  title: string;
  /** What it shows and how, for the results page. */
  description: string;
  backends: BackendSpec[];
  maxQueue: number;
  agents: boolean;
  gatewayInstances?: number;
  cases: ScenarioCase[];
  balancers: BalancerDef[];
  /** Only run when named (the smoke test's scenario). */
  onlyWhenNamed?: boolean;
  /**
   * The rows the CPU-bound scenario's targets compare (report.ts
   * cpuBoundSection): loadwise, and loadwise with agents without the cgroup
   * signal, against the best least-connections peer of the same run.
   */
  cpuTargets?: { loadwise: string; withoutSignal: string };
}
