/**
 * Runs one scenario: starts its backends and agents once, then for each run
 * and each balancer (interleaved, so slow drift in machine load hits all
 * balancers alike) drains the backends, starts the balancer, drives load,
 * measures CPU and stops the balancer again.
 */
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { appendFileSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { DEFAULT_TRACKER_WINDOW_MS } from '@loadwise/health-agent';
import { loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import type { LoadgenConfig, LoadgenResult } from '../procs/loadgen';
import type { GatewayDiag } from '../procs/gateway-diag';
import type { BalancerDef, RunningBalancer } from './balancers';
import { startCluster, type Cluster } from './cluster';
import { capacityFigures } from './cpu-share';
import { primeBackends } from './prime';
import { calibrateNeighbour, startNeighbour, type Neighbour } from './neighbour';
import type { NeighbourCalibration } from './neighbour';
import { CpuMeter, forkProc, gatewayStdoutFile, sleep, type Proc } from './procs';
import type { Scenario, ScenarioCase } from './scenario';
import { maxWindowShareVsFair, shiftTimes } from './series-metrics';

export interface RunRecord {
  balancer: string;
  family: string;
  caseLabel: string;
  run: number;
  /** When the run measured it: 1 for first (the order turns every run: rotated()). */
  position?: number;
  result?: LoadgenResult;
  hidden?: LoadgenResult;
  /** CPU use over the measured phase, cores (1 = one full core), per component. */
  cpu: { gateway: number; loadgen: number; backends: number; agents: number; other: number };
  diag?: GatewayDiag;
  loadAvg1m: number;
  drainWaitMs: number;
  error?: string;
  extra?: Record<string, number>;
  /**
   * TcpExtListenOverflows (`nstat -az`) over the load phase: SYNs or
   * handshakes the kernel dropped because a listen queue was full. Host-wide:
   * other processes on the machine count too.
   */
  listenOverflows?: number;
  /**
   * The restart variant (ScenarioCase.restartAtMs): when the balancer was
   * killed and when its new process was ready, ms after the measured load
   * started (the loadgen's series time base); `error` if it did not come back.
   */
  restart?: { killedAtMs: number; readyAtMs?: number; error?: string; detail?: string };
}

export interface EngineOptions {
  runs: number;
  brokerUrl: string;
  log: (s: string) => void;
  /** Short settings (--quick): the neighbour's calibration is shorter too. */
  quick?: boolean;
  /** false (`--no-prime`): the backends meet the first balancer cold, as before 2026-12-04. */
  prime?: boolean;
}

export async function runScenario(
  scenario: Scenario,
  balancers: BalancerDef[],
  opts: EngineOptions,
): Promise<RunRecord[]> {
  const prefix = `lwbench${process.pid}${scenario.name.replace(/[^a-z0-9]/gi, '')}${Date.now() % 100000}`;
  const tmpDir = mkdtempSync(join(tmpdir(), 'loadwise-bench-'));
  const keyFile = join(tmpDir, 'keys');
  writeFileSync(keyFile, `bench ${randomBytes(32).toString('base64')}\n`, { mode: 0o600 });
  const records: RunRecord[] = [];
  let cluster: Cluster | undefined;
  try {
    cluster = await startCluster({
      backends: scenario.backends,
      maxQueue: scenario.maxQueue,
      agents: scenario.agents
        ? { brokerUrl: opts.brokerUrl, prefix, intervalMs: 1000, keyFile }
        : undefined,
      tmpDir,
    });
    const ctx = { backends: cluster.backends, tmpDir, brokerUrl: opts.brokerUrl, prefix, keyFile };
    // Fresh backend processes would give their first-compile cost to whichever balancer runs
    // first (lib/prime.ts); then two agent intervals, so no report still carries that traffic.
    if (opts.prime !== false) {
      const primed = await primeBackends(
        cluster.backends.map((b) => b.url),
        opts.quick ? { requests: 100, maxMs: 1_000 } : {},
      );
      opts.log(
        `  backends primed: ${[...primed.answered.values()].join(' / ')} requests in ${primed.ms} ms` +
          (primed.failed > 0 ? `, ${primed.failed} failed` : ''),
      );
      await cluster.drain();
      if (scenario.agents) await new Promise((r) => setTimeout(r, 2_000));
    }
    for (const c of scenario.cases) {
      const calibration = c.neighbour
        ? await calibrate(cluster, c.neighbour.backendId, opts)
        : undefined;
      for (let run = 1; run <= opts.runs; run++) {
        const inRun: RunRecord[] = [];
        for (const def of rotated(balancers, run - 1)) {
          opts.log(`  ${scenario.name} ${c.label} run ${run}/${opts.runs}: ${def.name}`);
          const rec = await runOnce(scenario, c, def, run, cluster, ctx, opts, calibration);
          rec.position = inRun.length + 1;
          inRun.push(rec);
          if (rec.error) opts.log(`    error: ${rec.error}`);
          else
            opts.log(
              `    p50 ${rec.result!.latency.p50Ms} p99 ${rec.result!.latency.p99Ms} ms, ` +
                `${rec.result!.throughputRps} req/s, errors ${rec.result!.errorCount}, ` +
                `gateway cpu ${rec.cpu.gateway}, total cpu ${totalCpu(rec)}`,
            );
        }
        // The pages list a run's rows in the balancers' order, whichever order measured them.
        for (const def of balancers) records.push(...inRun.filter((r) => r.balancer === def.name));
      }
    }
  } finally {
    await cluster?.stop();
    rmSync(tmpDir, { recursive: true, force: true });
  }
  return records;
}

/**
 * The balancers in the order run `k` (from 0) measures them: the list turned
 * by k places, so that each one runs first, second, ... in turn. In a fixed
 * order the first loadwise row of a run came out behind the second in 9 of
 * 11 runs whichever configuration it was (bench/results,
 * cpu-bound-identical-no-service-pid-swapped-2026-12-02.md).
 */
export function rotated<T>(list: readonly T[], k: number): T[] {
  const n = list.length;
  if (n === 0) return [];
  const s = ((k % n) + n) % n;
  return [...list.slice(s), ...list.slice(0, s)];
}

export function totalCpu(r: RunRecord): number {
  const c = r.cpu;
  return Math.round((c.gateway + c.loadgen + c.backends + c.agents + c.other) * 100) / 100;
}

/** What the neighbour takes from a busy backend (lib/neighbour.ts), once per case. */
async function calibrate(
  cluster: Cluster,
  backendId: string,
  opts: EngineOptions,
): Promise<NeighbourCalibration> {
  const backend = cluster.backends.find((b) => b.id === backendId);
  if (!backend) throw new Error(`neighbour: no backend ${backendId}`);
  await cluster.drain();
  const cal = await calibrateNeighbour(backend, opts.quick ?? false);
  opts.log(
    `  neighbour in ${backendId}'s cgroup, ${backendId} saturated: neighbour ${cal.neighbourCores} cores, ` +
      `${backendId} ${cal.backendCores} cores, ${cal.backendRps} req/s`,
  );
  return cal;
}

async function runOnce(
  scenario: Scenario,
  c: ScenarioCase,
  def: BalancerDef,
  run: number,
  cluster: Cluster,
  ctx: Parameters<BalancerDef['start']>[0],
  opts: EngineOptions,
  calibration?: NeighbourCalibration,
): Promise<RunRecord> {
  const rec: RunRecord = {
    balancer: def.name,
    family: def.family,
    caseLabel: c.label,
    run,
    cpu: { gateway: 0, loadgen: 0, backends: 0, agents: 0, other: 0 },
    loadAvg1m: Math.round(loadavg()[0]! * 100) / 100,
    drainWaitMs: 0,
  };
  cluster.resetServiceTimes();
  // The agents as this balancer needs them (restarted only when that changes).
  if (await cluster.useAgentArgs(def.agentArgs))
    opts.log(
      `    agents restarted: ${cluster.backends[0]?.agent?.child.spawnargs.slice(2).join(' ')}`,
    );
  // One run's backlog must not poison the next: wait for empty queues.
  const drain = await cluster.drain();
  rec.drainWaitMs = drain.waitedMs;
  if (c.events?.length) {
    // The tracker reports latency over a sliding 10 s window: after a run that
    // slowed a backend, its agent keeps reporting that slowness for up to 10 s.
    // Wait it out, or the next balancer starts with the last one's history.
    await sleep(DEFAULT_TRACKER_WINDOW_MS + 1_000);
  }
  if (!drain.drained)
    opts.log(`    backends still busy after ${drain.waitedMs} ms; running anyway`);
  else if (drain.waitedMs > 1_000)
    opts.log(`    waited ${drain.waitedMs} ms for backend queues to drain`);
  const instances = c.gatewayInstances ?? scenario.gatewayInstances ?? 1;
  const gateways: RunningBalancer[] = [];
  const side: Proc[] = [];
  const timers: NodeJS.Timeout[] = [];
  let neighbour: Neighbour | undefined;
  try {
    for (let i = 0; i < instances; i++) gateways.push(await def.start(ctx, i));
    if (c.idleBeforeMs) await sleep(c.idleBeforeMs);
    const sideProcs = c.side ? await c.side(ctx) : [];
    side.push(...sideProcs);
    const load = c.load;
    const cfg: LoadgenConfig = { ...load, targets: gateways.map((g) => g.url + '/work') };
    const meter = new CpuMeter([
      ...gateways.flatMap((g) => [
        ...g.procs.map((p, i) => ({ name: `gateway:${p.name}:${i}`, pid: p.pid })),
        ...(g.extraPids ?? []).map((pid) => ({ name: `gateway:pid${pid}`, pid })),
      ]),
      ...cluster.backends.map((b) => ({ name: `backends:${b.id}`, pid: b.proc.pid })),
      ...cluster.backends
        .filter((b) => b.agent)
        .map((b) => ({ name: `agents:${b.id}`, pid: b.agent!.pid })),
      ...side.map((p) => ({ name: `other:${p.name}`, pid: p.pid })),
    ]);
    let hiddenProc: Proc | undefined;
    if (c.hiddenLoad) {
      const target = cluster.backends.find((b) => b.id === c.hiddenLoad!.backendId)!;
      hiddenProc = forkProc('hidden-load', 'loadgen.js', {
        ...load,
        mode: 'open',
        rate: c.hiddenLoad.rate,
        targets: [target.url + '/hidden'],
      } satisfies LoadgenConfig);
    }
    if (c.neighbour) {
      const backend = cluster.backends.find((b) => b.id === c.neighbour!.backendId);
      if (!backend) throw new Error(`neighbour: no backend ${c.neighbour.backendId}`);
      neighbour = startNeighbour(backend);
      meter.add({ name: `other:neighbour`, pid: neighbour.proc.pid });
    }
    const groups = cluster.backends.filter((b) => b.group);
    let groupUsageStart: number[] = [];
    const overflowsBefore = listenOverflows();
    const gen = forkProc('loadgen', 'loadgen.js', cfg);
    const genMeter = new CpuMeter([{ name: 'loadgen', pid: gen.pid }]);
    const resultP = gen.waitFor<LoadgenResult>(
      'result',
      load.warmupMs + load.durationMs + load.timeoutMs + 30_000,
    );
    const hiddenP = hiddenProc?.waitFor<LoadgenResult>(
      'result',
      load.warmupMs + load.durationMs + load.timeoutMs + 30_000,
    );
    timers.push(
      setTimeout(() => {
        meter.begin();
        genMeter.begin();
        groupUsageStart = groups.map((b) => b.group!.usageUs());
        for (const g of gateways) g.resetDiag();
      }, load.warmupMs),
    );
    let restarted: Promise<void> | undefined;
    if (c.restartAtMs !== undefined) {
      const g = gateways[0]!;
      const restart = g.restart;
      if (!restart) throw new Error(`${def.name}: no restart`);
      timers.push(
        setTimeout(() => {
          // Epoch ms: the loadgen's measured phase began at measureStartEpochMs.
          const killedAt = Date.now();
          restarted = restart.call(g).then(
            (out) => {
              const back = typeof out === 'object' ? out : { detail: out, backAtMs: Date.now() };
              rec.restart = { killedAtMs: killedAt, readyAtMs: back.backAtMs, detail: back.detail };
            },
            (err: unknown) => {
              rec.restart = { killedAtMs: killedAt, error: (err as Error).message.split('\n')[0] };
            },
          );
        }, load.warmupMs + c.restartAtMs),
      );
    }
    for (const ev of c.events ?? []) {
      timers.push(
        setTimeout(() => cluster.setServiceMs(ev.backendId, ev.serviceMs), load.warmupMs + ev.atMs),
      );
    }
    const result = await resultP;
    const stdoutFile = def.family === 'loadwise' ? gatewayStdoutFile() : undefined;
    if (stdoutFile) {
      appendFileSync(stdoutFile, `@load ${result.measureStartEpochMs} ${def.name} run ${run}\n`);
    }
    await restarted;
    if (rec.restart) {
      // From epoch ms to the series' time base.
      const base = result.measureStartEpochMs;
      rec.restart.killedAtMs -= base;
      if (rec.restart.readyAtMs !== undefined) rec.restart.readyAtMs -= base;
    }
    rec.listenOverflows = listenOverflows() - overflowsBefore;
    const groupUsageEnd = groups.map((b) => b.group!.usageUs());
    const cpu = { ...meter.end(), ...genMeter.end() };
    rec.result = result;
    if (hiddenP) rec.hidden = await hiddenP;
    for (const [name, cores] of Object.entries(cpu)) {
      const group = name.split(':')[0] as keyof RunRecord['cpu'];
      rec.cpu[group] = Math.round((rec.cpu[group] + cores) * 1000) / 1000;
    }
    rec.diag = await gateways[0]!.diag().catch(() => undefined);
    const [degrade, recover] = c.events ?? [];
    if (degrade && recover) {
      rec.extra = shiftTimes(
        result.series,
        degrade.backendId,
        degrade.atMs,
        recover.atMs,
        load.windowMs,
      );
    }
    if (groups.length > 0) {
      const measuredS = meter.elapsedS();
      rec.extra = capacityFigures({
        backends: cluster.backends.map((b) => ({
          id: b.id,
          quotaCores: b.group?.quotaCores ?? NaN,
          processCores: cpu[`backends:${b.id}`] ?? NaN,
        })),
        groupCores: Object.fromEntries(
          groups.map((b, i) => [
            b.id,
            (groupUsageEnd[i]! - (groupUsageStart[i] ?? NaN)) / 1e6 / measuredS,
          ]),
        ),
        neighbour: c.neighbour
          ? {
              backendId: c.neighbour.backendId,
              cores: cpu['other:neighbour'] ?? NaN,
              contendedCores: calibration?.neighbourCores ?? NaN,
            }
          : undefined,
        shares: result.shares,
      });
    }
    if (instances > 1) {
      rec.extra = {
        ...rec.extra,
        ...maxWindowShareVsFair(
          result.series,
          cluster.backends.map((b) => b.id),
        ),
        ...perGatewayP99(result),
      };
    }
    await gen.stop();
    await hiddenProc?.stop();
  } catch (err) {
    rec.error = (err as Error).message.split('\n')[0];
  } finally {
    timers.forEach(clearTimeout);
    await Promise.all([
      ...gateways.map((g) => g.stop()),
      ...side.map((p) => p.stop()),
      neighbour?.stop(),
    ]);
    cluster.resetServiceTimes();
  }
  if (def.family === 'express-hpm') await settleTimeWait(opts.log);
  else await sleep(300);
  return rec;
}

/**
 * Each gateway's own p99 (the load generator alternates requests over them)
 * and the worst of them: with several gateways, every one must keep the tail.
 */
function perGatewayP99(result: LoadgenResult): Record<string, number> {
  const out: Record<string, number> = {};
  let worst = 0;
  (result.perTarget ?? []).forEach((l, i) => {
    out[`gw${i + 1}P99Ms`] = l.p99Ms;
    if (l.p99Ms > worst) worst = l.p99Ms;
  });
  out.worstGatewayP99Ms = worst;
  return out;
}

/** The host's TcpExtListenOverflows counter (nstat), NaN when nstat is missing. */
export function listenOverflows(): number {
  try {
    const out = execFileSync('nstat', ['-az', 'TcpExtListenOverflows'], { encoding: 'utf8' });
    const m = /TcpExtListenOverflows\s+(\d+)/.exec(out);
    return m ? Number(m[1]) : NaN;
  } catch {
    return NaN;
  }
}

/** Sockets in TIME_WAIT on this host (Linux /proc/net/sockstat), or 0 if unknown. */
function timeWaitCount(): number {
  try {
    const m = /TCP: .*\btw (\d+)/.exec(readFileSync('/proc/net/sockstat', 'utf8'));
    return m ? Number(m[1]) : 0;
  } catch {
    return 0;
  }
}

const MAX_TIME_WAIT = 10_000;
const MAX_SETTLE_MS = 65_000; // TIME_WAIT lasts 60 s on Linux

/**
 * A gateway that opens a connection per request (Express + HPM without a
 * keep-alive agent) leaves tens of thousands of loopback sockets in
 * TIME_WAIT at 2,000 req/s; the next balancer's connects then pay for the
 * port search. Wait until they have mostly expired (bounded), so one run's
 * sockets do not slow the next.
 */
async function settleTimeWait(log: (s: string) => void): Promise<void> {
  const start = Date.now();
  while (timeWaitCount() > MAX_TIME_WAIT && Date.now() - start < MAX_SETTLE_MS) await sleep(1_000);
  const waited = Date.now() - start;
  if (waited > 1_000) log(`    waited ${waited} ms for TIME_WAIT sockets to expire`);
}
