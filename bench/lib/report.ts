/**
 * Turns run records into a result page per scenario: a markdown table of
 * medians over runs (with ratios to the peers), a chart (vega-lite -> SVG),
 * and the machine's core count, load and date.
 */
import { cpus, loadavg } from 'node:os';
import type { RunRecord } from './engine';
import { totalCpu } from './engine';
import type { Scenario } from './scenario';
import { median, round } from './stats';

export interface Row {
  caseLabel: string;
  balancer: string;
  family: string;
  runs: number;
  failedRuns: number;
  p50Ms: number;
  p90Ms: number;
  p99Ms: number;
  p999Ms: number;
  throughputRps: number;
  errors: number;
  errorRate: number;
  shares: Record<string, number>;
  gatewayCpu: number;
  totalCpu: number;
  loadgenCpu: number;
  loadAvg1m: number;
  /** Scenario-specific figures (medians): shift times, window shares, GC, event-loop delay. */
  extra: Record<string, number>;
  p99VsBestPeer?: number;
  throughputVsHpm?: number;
  /** Gateway CPU per proxied request, microseconds (median over runs). */
  gatewayCpuUsPerReq: number;
  /** Against Express + HPM with a keep-alive agent, the fair baseline of a Node proxy. */
  throughputVsHpmKeepAlive?: number;
  cpuPerReqVsHpmKeepAlive?: number;
}

/** Gateway CPU per proxied request of one run, microseconds. */
export function cpuUsPerRequest(r: RunRecord): number {
  const rps = r.result?.throughputRps ?? 0;
  return rps > 0 ? (r.cpu.gateway * 1e6) / rps : NaN;
}

export function aggregate(records: RunRecord[], scenario: Scenario): Row[] {
  const rows: Row[] = [];
  const keys = [...new Set(records.map((r) => `${r.caseLabel}\u0000${r.balancer}`))];
  for (const key of keys) {
    const [caseLabel, balancer] = key.split('\u0000') as [string, string];
    const all = records.filter((r) => r.caseLabel === caseLabel && r.balancer === balancer);
    const ok = all.filter((r) => r.result);
    const m = (f: (r: RunRecord) => number): number => median(ok.map(f));
    const ids = scenario.backends.map((b) => b.id);
    const shares: Record<string, number> = {};
    for (const id of ids)
      shares[id] = round(
        m((r) => r.result!.shares[id] ?? 0),
        3,
      );
    const extra: Record<string, number> = {};
    const extraKeys = new Set(ok.flatMap((r) => Object.keys(r.extra ?? {})));
    for (const k of extraKeys)
      extra[k] = round(
        m((r) => r.extra?.[k] ?? NaN),
        2,
      );
    if (ok.some((r) => r.diag)) {
      extra.eventLoopDelayP99Ms = round(
        m((r) => r.diag?.eventLoopDelayP99Ms ?? NaN),
        2,
      );
      extra.gcTotalMs = round(
        m((r) => r.diag?.gcTotalMs ?? NaN),
        1,
      );
      extra.gcMaxMs = round(
        m((r) => r.diag?.gcMaxMs ?? NaN),
        1,
      );
    }
    rows.push({
      caseLabel,
      balancer,
      family: all[0]!.family,
      runs: ok.length,
      failedRuns: all.length - ok.length,
      p50Ms: round(m((r) => r.result!.latency.p50Ms)),
      p90Ms: round(m((r) => r.result!.latency.p90Ms)),
      p99Ms: round(m((r) => r.result!.latency.p99Ms)),
      p999Ms: round(m((r) => r.result!.latency.p999Ms)),
      throughputRps: round(m((r) => r.result!.throughputRps)),
      errors: m((r) => r.result!.errorCount),
      errorRate: round(
        m((r) => r.result!.errorCount / Math.max(1, r.result!.sent)),
        4,
      ),
      shares,
      gatewayCpu: round(
        m((r) => r.cpu.gateway),
        2,
      ),
      totalCpu: round(
        m((r) => totalCpu(r)),
        2,
      ),
      loadgenCpu: round(
        m((r) => r.cpu.loadgen),
        2,
      ),
      gatewayCpuUsPerReq: round(m(cpuUsPerRequest), 1),
      loadAvg1m: round(
        m((r) => r.loadAvg1m),
        2,
      ),
      extra,
    });
  }
  for (const c of new Set(rows.map((r) => r.caseLabel))) {
    const inCase = rows.filter((r) => r.caseLabel === c && r.runs > 0);
    const peers = inCase.filter((r) => r.family === 'nginx' || r.family === 'haproxy');
    const bestPeer = peers.length ? Math.min(...peers.map((r) => r.p99Ms)) : NaN;
    const hpm = inCase.find((r) => r.family === 'express-hpm');
    const ka = inCase.find((r) => r.family === 'express-hpm-keepalive');
    for (const r of inCase) {
      if (ka && ka.throughputRps > 0) {
        r.throughputVsHpmKeepAlive = round(r.throughputRps / ka.throughputRps, 3);
        r.cpuPerReqVsHpmKeepAlive = round(r.gatewayCpuUsPerReq / ka.gatewayCpuUsPerReq, 3);
      }
      if (Number.isFinite(bestPeer) && bestPeer > 0) r.p99VsBestPeer = round(r.p99Ms / bestPeer, 2);
      if (hpm && hpm.throughputRps > 0)
        r.throughputVsHpm = round(r.throughputRps / hpm.throughputRps, 3);
    }
  }
  return rows;
}

/** 1st, 2nd, 3rd, 4th ... (a run's measuring order in the run column). */
function ordinal(n: number): string {
  const suffix =
    n % 10 === 1 && n % 100 !== 11
      ? 'st'
      : n % 10 === 2 && n % 100 !== 12
        ? 'nd'
        : n % 10 === 3 && n % 100 !== 13
          ? 'rd'
          : 'th';
  return `${n}${suffix}`;
}

/** The first cells of a per-run row: case, balancer, run (and its place), p50 (or why it failed), p99. */
function runCells(r: RunRecord): string[] {
  const res = r.result;
  return [
    r.caseLabel,
    r.balancer,
    r.position === undefined ? String(r.run) : `${r.run} (${ordinal(r.position)})`,
    res ? fmt(res.latency.p50Ms) : `failed: ${r.error ?? ''}`,
    res ? fmt(res.latency.p99Ms) : '–',
  ];
}

function fmt(v: number | undefined, digits = 1): string {
  if (v === undefined || !Number.isFinite(v)) return '–';
  return v.toFixed(digits).replace(/\.0+$/, '');
}

export function markdownTable(rows: Row[], scenario: Scenario): string {
  const ids = scenario.backends.map((b) => b.id);
  const extraKeys = [...new Set(rows.flatMap((r) => Object.keys(r.extra)))];
  const head = [
    'case',
    'balancer',
    'p50 ms',
    'p90 ms',
    'p99 ms',
    'p99.9 ms',
    'req/s',
    'errors',
    `shares ${ids.join('/')}`,
    'p99 / best peer',
    'req/s / express+hpm',
    'gateway CPU',
    'gateway CPU µs/req',
    'req/s / hpm keep-alive',
    'CPU µs/req / hpm keep-alive',
    'all CPU',
    ...extraKeys,
  ];
  const lines = [`| ${head.join(' | ')} |`, `|${head.map(() => '---').join('|')}|`];
  for (const r of rows) {
    const cells = [
      r.caseLabel,
      r.runs === 0 ? `${r.balancer} (failed)` : r.balancer,
      fmt(r.p50Ms),
      fmt(r.p90Ms),
      fmt(r.p99Ms),
      fmt(r.p999Ms),
      fmt(r.throughputRps),
      `${fmt(r.errors, 0)} (${fmt(r.errorRate * 100, 2)}%)`,
      ids.map((id) => fmt(r.shares[id], 2)).join('/'),
      fmt(r.p99VsBestPeer, 2),
      fmt(r.throughputVsHpm, 2),
      fmt(r.gatewayCpu, 2),
      fmt(r.gatewayCpuUsPerReq, 0),
      fmt(r.throughputVsHpmKeepAlive, 2),
      fmt(r.cpuPerReqVsHpmKeepAlive, 2),
      fmt(r.totalCpu, 2),
      ...extraKeys.map((k) => fmt(r.extra[k], 2)),
    ];
    lines.push(`| ${cells.join(' | ')} |`);
  }
  return lines.join('\n');
}

/**
 * Every run, not only the medians: per run, the ratios to the keep-alive
 * Express + HPM run of the same case and run number (the same run; the run
 * column says in which place each was measured, since the order turns).
 */
export function runsTable(records: RunRecord[]): string {
  const head = [
    'case',
    'balancer',
    'run',
    'p50 ms',
    'p99 ms',
    'req/s',
    'errors',
    'gateway CPU',
    'gateway CPU µs/req',
    'req/s / hpm keep-alive',
    'CPU µs/req / hpm keep-alive',
    'backends+agents CPU',
    'load generator CPU',
    'load avg 1 min',
  ];
  const lines = [`| ${head.join(' | ')} |`, `|${head.map(() => '---').join('|')}|`];
  for (const r of records) {
    const ka = records.find(
      (k) => k.family === 'express-hpm-keepalive' && k.caseLabel === r.caseLabel && k.run === r.run,
    );
    const res = r.result;
    const ratio = (a: number | undefined, b: number | undefined): string =>
      a !== undefined && b !== undefined && b > 0 ? fmt(a / b, 2) : '–';
    lines.push(
      `| ${[
        ...runCells(r),
        res ? fmt(res.throughputRps) : '–',
        res ? String(res.errorCount) : '–',
        fmt(r.cpu.gateway, 2),
        fmt(cpuUsPerRequest(r), 0),
        ratio(res?.throughputRps, ka?.result?.throughputRps),
        ratio(cpuUsPerRequest(r), ka ? cpuUsPerRequest(ka) : undefined),
        fmt(r.cpu.backends + r.cpu.agents, 2),
        fmt(r.cpu.loadgen, 2),
        fmt(r.loadAvg1m, 2),
      ].join(' | ')} |`,
    );
  }
  return lines.join('\n');
}

export interface RunInfo {
  date: string;
  runs: number;
  quick: boolean;
  command: string;
  loadAvgBefore: number[];
}

export function machineLine(info: RunInfo): string {
  const cpu = cpus();
  return (
    `${info.date} · ${cpu.length} cores (${cpu[0]?.model.trim() ?? 'unknown CPU'}) · Node ${process.version} · ` +
    `median of ${info.runs} run(s)${info.quick ? ' · QUICK (smoke) settings' : ''} · ` +
    `load average before ${info.loadAvgBefore.map((l) => l.toFixed(2)).join(' ')}, after ${loadavg()
      .map((l) => l.toFixed(2))
      .join(' ')} · \`${info.command}\``
  );
}

export function scenarioPage(
  scenario: Scenario,
  rows: Row[],
  info: RunInfo,
  chartFiles: string[] = [],
  records: RunRecord[] = [],
): string {
  const parts = [
    `## ${scenario.title}`,
    '',
    scenario.description,
    '',
    machineLine(info),
    '',
    markdownTable(rows, scenario),
    '',
    'CPU columns are cores used over the measured phase (1 = one full core); "all CPU" adds gateway, load ' +
      "generator(s), backends and agents. Latency is measured from each request's scheduled send time.",
  ];
  if (scenario.cpuTargets && records.length > 0) parts.push('', cpuBoundSection(scenario, records));
  if (records.length > 0) parts.push('', '### Every run', '', runsTable(records));
  for (const f of chartFiles) parts.push('', `![${scenario.title}](${f})`);
  return parts.join('\n') + '\n';
}

const LEAST_CONNS = new Set(['nginx', 'haproxy']);

function verdict(value: number, ok: (v: number) => boolean): string {
  if (!Number.isFinite(value)) return '–';
  return `${fmt(value, 2)} (${ok(value) ? 'met' : 'missed'})`;
}

/**
 * The CPU-bound scenario (Scenario.cpuTargets): per run, each balancer's
 * latency, shares and the CPU each backend and the neighbour used; then the
 * issue's targets per run: loadwise p99 ≤ 0.7x and p50 ≤ 1.0x the best
 * least-connections peer of the same run (lowest p99), the starved backend's
 * share within ±30% of its remaining capacity share (cpu-share.ts), and
 * loadwise with the cgroup signal ahead of loadwise without it (p99).
 */
export function cpuBoundSection(scenario: Scenario, records: RunRecord[]): string {
  const targets = scenario.cpuTargets!;
  const ids = scenario.backends.map((b) => b.id);
  const out: string[] = [];
  const head = [
    'case',
    'balancer',
    'run',
    'p50 ms',
    'p99 ms',
    'errors',
    `shares ${ids.join('/')}`,
    `backend CPU ${ids.join('/')}`,
    'neighbour CPU',
    'starved group CPU',
    'starved: share / remaining capacity share (window)',
    'starved: share / capacity share when busy',
  ];
  out.push(
    '### CPU and capacity, every run',
    '',
    'Backend CPU is each backend process over the measured phase (/proc/<pid>/stat), in cores, ' +
      'against a quota of ' +
      scenario.backends.map((b) => b.cgroup?.quotaCores ?? '–').join('/') +
      '; the neighbour is the busy loop in the starved backend\'s cgroup; "starved group CPU" ' +
      "is that cgroup's own usage counter (backend + neighbour). Remaining capacity share = " +
      "(quota − neighbour CPU) / Σ over backends (quota − neighbour CPU), with the neighbour's CPU " +
      'over the measured window, and with its CPU while the starved backend was kept busy ' +
      '(measured once per case before the runs: bench/lib/neighbour.ts). The window figure is the ' +
      "backend's own CPU use whatever the routing (bench/lib/cpu-share.ts): read the second.",
    '',
    `| ${head.join(' | ')} |`,
    `|${head.map(() => '---').join('|')}|`,
  );
  for (const r of records) {
    const res = r.result;
    const c = scenario.cases.find((x) => x.label === r.caseLabel);
    const starved = c?.neighbour?.backendId;
    const x = r.extra ?? {};
    out.push(
      `| ${[
        ...runCells(r),
        res ? String(res.errorCount) : '–',
        res ? ids.map((id) => fmt(res.shares[id] ?? 0, 3)).join('/') : '–',
        ids.map((id) => fmt(x[`${id}Cores`], 3)).join('/'),
        fmt(x.neighbourCores, 3),
        starved ? fmt(x[`${starved}GroupCores`], 3) : '–',
        starved
          ? `${fmt(res?.shares[starved] ?? NaN, 3)} / ${fmt(x[`${starved}CapacityShare`], 3)} = ${fmt(x[`${starved}ShareVsCapacity`], 2)}`
          : '–',
        starved
          ? `${fmt(res?.shares[starved] ?? NaN, 3)} / ${fmt(x[`${starved}BusyCapacityShare`], 3)} = ${fmt(x[`${starved}ShareVsBusyCapacity`], 2)} (neighbour ${fmt(x.neighbourContendedCores, 3)} cores when busy)`
          : '–',
      ].join(' | ')} |`,
    );
  }
  const th = [
    'case',
    'run',
    'best least-conn peer (p50 / p99 ms)',
    `${targets.loadwise} (p50 / p99 ms)`,
    'p99 / peer (target ≤ 0.7)',
    'p50 / peer (target ≤ 1.0)',
    'starved share / remaining capacity share, window (target 0.7-1.3)',
    'starved share / capacity share when busy (target 0.7-1.3)',
    `p99 / ${targets.withoutSignal} p99 (target < 1)`,
  ];
  out.push(
    '',
    '### Targets, every run',
    '',
    'Each run against the least-connections peer (nginx `least_conn`, HAProxy `leastconn`) with the lowest ' +
      'p99 in the same run.',
    '',
    `| ${th.join(' | ')} |`,
    `|${th.map(() => '---').join('|')}|`,
  );
  const keys = [...new Set(records.map((r) => `${r.caseLabel}\u0000${r.run}`))];
  for (const key of keys) {
    const [caseLabel, run] = key.split('\u0000') as [string, string];
    const inRun = records.filter(
      (r) => r.caseLabel === caseLabel && String(r.run) === run && r.result,
    );
    const peers = inRun.filter((r) => LEAST_CONNS.has(r.family));
    const peer = peers.sort((a, b) => a.result!.latency.p99Ms - b.result!.latency.p99Ms)[0];
    const lw = inRun.find((r) => r.balancer === targets.loadwise);
    const bare = inRun.find((r) => r.balancer === targets.withoutSignal);
    const starved = scenario.cases.find((x) => x.label === caseLabel)?.neighbour?.backendId;
    const p = peer?.result?.latency;
    const l = lw?.result?.latency;
    out.push(
      `| ${[
        caseLabel,
        run,
        p ? `${peer!.balancer}: ${fmt(p.p50Ms)} / ${fmt(p.p99Ms)}` : '–',
        l ? `${fmt(l.p50Ms)} / ${fmt(l.p99Ms)}` : '–',
        verdict(l && p ? l.p99Ms / p.p99Ms : NaN, (v) => v <= 0.7),
        verdict(l && p ? l.p50Ms / p.p50Ms : NaN, (v) => v <= 1.0),
        ...[`${starved}ShareVsCapacity`, `${starved}ShareVsBusyCapacity`].map((k) =>
          starved
            ? verdict(lw?.extra?.[k] ?? NaN, (v) => v >= 0.7 && v <= 1.3)
            : '– (no neighbour)',
        ),
        verdict(l && bare?.result ? l.p99Ms / bare.result.latency.p99Ms : NaN, (v) => v < 1),
      ].join(' | ')} |`,
    );
  }
  return out.join('\n');
}
