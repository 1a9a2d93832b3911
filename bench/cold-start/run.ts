/**
 * Cold start (bench/scenarios.ts coldStartScenarios): a gateway started and
 * idle, then hit at once by open-loop load at about 45% of capacity. Reports,
 * for every run, the p99 of each of the first 5 seconds and of the whole run
 * (nothing discarded as warm-up), the requests each backend got in second 0,
 * and the errors; loadwise against nginx `least_conn`, interleaved.
 *
 *   npm run bench:cold-start [-- --runs 3 --seconds 10 --out bench/results/cold-start.md]
 *   node bench/dist/cold-start/run.js --render   (the page again, from bench/results/raw)
 *
 * `--restart [--restart-at S]`: restart under load. S seconds into the load
 * (default: 3, or half the run if shorter) each balancer's process is killed
 * with SIGKILL and started again on the same port while the load goes on (the
 * "reload" rows: SIGHUP, a graceful rolling reload, instead); the
 * page (default bench/results/cold-start-restart.md) gives p99 and errors by
 * code (ECONNREFUSED while nothing listens, ECONNRESET for connections cut)
 * for each second around the restart, and the whole run.
 *
 * `--no-prime`: the backends are not warmed before the first balancer
 * (bench/lib/prime.ts), as before 2026-12-04.
 */
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { cpus, loadavg } from 'node:os';
import { runScenario, totalCpu, type RunRecord } from '../lib/engine';
import { ensurePeers } from '../lib/peers';
import { COLD_START_SECONDS, coldStartScenarios } from '../scenarios';
import { balancerWords, keepsBalancer } from '../lib/balancer-filter';

function arg(name: string, fallback: string): string {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 ? process.argv[i + 1]! : fallback;
}

const f = (x: number | undefined): string =>
  x === undefined || !Number.isFinite(x) ? '–' : x.toFixed(1);

function errorsOf(r: RunRecord): string {
  const e = Object.entries(r.result?.errors ?? {});
  return e.length === 0 ? '0' : e.map(([k, v]) => `${k} ${v}`).join(', ');
}

const cores = (x: number | undefined): string =>
  x === undefined || !Number.isFinite(x) || x < 0 ? '–' : x.toFixed(2);

function rows(records: RunRecord[], backendIds: string[]): string[] {
  const out: string[] = [];
  for (const r of records) {
    if (r.error || !r.result) {
      out.push(`| ${r.balancer} | ${r.run} | error: ${r.error ?? '?'} |`);
      continue;
    }
    const s = r.result.series;
    // A second without a single answer (all still waiting, or failed) has no p99.
    const answered = (i: number): boolean =>
      Object.values(s[i]?.counts ?? {}).reduce((a, b) => a + b, 0) > 0;
    const perSecond = Array.from({ length: COLD_START_SECONDS }, (_, i) =>
      answered(i) ? f(s[i]?.p99Ms) : 'none',
    );
    const first = s[0]?.counts ?? {};
    const split = backendIds.map((id) => String(first[id] ?? 0)).join(' / ');
    out.push(
      `| ${r.balancer} | ${r.run} | ${perSecond.join(' | ')} | **${f(r.result.latency.p99Ms)}** | ` +
        `${f(r.result.latency.p50Ms)} | ${split} | ${errorsOf(r)} | ${r.listenOverflows ?? '?'} | ` +
        `${cores(r.cpu.gateway)} | ${cores(totalCpu(r))} | ${r.loadAvg1m} |`,
    );
  }
  return out;
}

/** `p99 / errors` of second `i`, with the errors' codes: the cells of the restart table. */
function secondCell(r: RunRecord, i: number): string {
  const w = r.result?.series[i];
  if (!w) return 'none';
  const answered = Object.values(w.counts).reduce((a, b) => a + b, 0) > 0;
  const codes = Object.entries(w.errorCodes ?? {})
    .map(([k, v]) => `${k} ${v}`)
    .join(', ');
  return `${answered ? f(w.p99Ms) : 'none'} / ${w.errors}${codes ? ` (${codes})` : ''}`;
}

/** Seconds around the kill: the one before it, the kill's own, and the two after. */
const AROUND = [-1, 0, 1, 2];

function restartRows(records: RunRecord[]): string[] {
  return records.map((r) => {
    if (r.error || !r.result) return `| ${r.balancer} | ${r.run} | error: ${r.error ?? '?'} |`;
    const rs = r.restart;
    if (!rs) return `| ${r.balancer} | ${r.run} | not restarted (the run ended first) |`;
    const k = Math.floor(rs.killedAtMs / 1000);
    const back = rs.readyAtMs !== undefined ? f(rs.readyAtMs - rs.killedAtMs) : (rs.error ?? '–');
    const refused = r.result.errors['ECONNREFUSED'] ?? 0;
    return (
      `| ${r.balancer} | ${r.run} | ${f(rs.killedAtMs / 1000)} | ${back} | ` +
      `${AROUND.map((d) => (k + d < 0 ? '–' : `s${k + d}: ${secondCell(r, k + d)}`)).join(' | ')} | ` +
      `**${f(r.result.latency.p99Ms)}** | ${errorsOf(r)} | ${refused} | ${rs.detail ?? ''} | ${r.loadAvg1m} |`
    );
  });
}

interface Trace {
  trace?: Array<{
    t: number;
    event?: string;
    overloaded?: boolean;
    queued?: number;
    active?: number;
    sockets?: number;
  }>;
  acceptQueue?: Array<[number, number, number]>;
  eventLoopDelayP99Ms?: number;
  eventLoopDelayMaxMs?: number;
  gcMaxMs?: number;
}

/** What the gateway itself saw during each loadwise run (bench/procs/gateway-loadwise.ts). */
function traceRows(records: RunRecord[]): string[] {
  const out: string[] = [];
  for (const r of records) {
    const d = r.diag as Trace | undefined;
    if (!d?.trace) continue;
    const samples = d.trace.filter((x) => x.event === undefined);
    const max = (k: 'queued' | 'active' | 'sockets'): number =>
      Math.max(0, ...samples.map((x) => x[k] ?? 0));
    const sheds = d.trace.filter((x) => x.event === 'overload' && x.overloaded).length;
    const aq = d.acceptQueue ?? [];
    const bound = aq[0]?.[2] ?? NaN;
    const full = aq.filter(([, q, b]) => q >= b - 1);
    const firstFull = full[0]?.[0];
    const loadStart = samples.find((x) => (x.active ?? 0) > 0)?.t;
    if (!d.trace.length) {
      // An untraced row: its event loop and GC only.
      out.push(
        `| ${r.balancer} | ${r.run} | ${f(d.eventLoopDelayP99Ms)} / ${f(d.eventLoopDelayMaxMs)} | ${f(d.gcMaxMs)} | – | – | – | – | – | – | – |`,
      );
      continue;
    }
    out.push(
      `| ${r.balancer} | ${r.run} | ${f(d.eventLoopDelayP99Ms)} / ${f(d.eventLoopDelayMaxMs)} | ${f(d.gcMaxMs)} | ` +
        `${max('queued')} | ${max('active')} | ${max('sockets')} | ${Math.max(0, ...aq.map((x) => x[1]))} / ${bound} | ` +
        `${aq.length ? Math.round((100 * full.length) / aq.length) : '–'}% | ` +
        `${firstFull !== undefined && loadStart !== undefined ? firstFull - loadStart : '–'} | ${sheds} |`,
    );
  }
  return out;
}

/** Median of the per-second p99s after the first COLD_START_SECONDS: the run's own steady state. */
function steadyP99(r: RunRecord): number | undefined {
  const later = (r.result?.series ?? [])
    .slice(COLD_START_SECONDS)
    .map((w) => w.p99Ms)
    .filter((x) => Number.isFinite(x) && x > 0)
    .sort((a, b) => a - b);
  return later.length ? later[Math.floor(later.length / 2)] : undefined;
}

/**
 * The issue's two cold-start targets, per loadwise row and run: the first
 * second's p99 over the same gateway's steady state (median per-second p99 of
 * seconds 5 on) at most 2x, and the whole run's p99 over nginx `least_conn`'s
 * in the same run at most 1.5x.
 */
function targetRows(records: RunRecord[]): string[] {
  const out: string[] = [];
  for (const r of records) {
    if (r.family !== 'loadwise' || !r.result) continue;
    const peer = records.find((x) => x.family === 'nginx' && x.run === r.run && x.result);
    const steady = steadyP99(r);
    const s0 = r.result.series[0]?.p99Ms;
    const first = s0 !== undefined && steady ? s0 / steady : undefined;
    const whole = peer ? r.result.latency.p99Ms / peer.result!.latency.p99Ms : undefined;
    const mark = (x: number | undefined, bound: number): string =>
      x === undefined ? '–' : `${x.toFixed(2)}× ${x <= bound ? 'met' : '**missed**'}`;
    out.push(
      `| ${r.balancer} | ${r.run} | ${f(s0)} | ${f(steady)} | ${mark(first, 2)} | ` +
        `${f(r.result.latency.p99Ms)} | ${f(peer?.result?.latency.p99Ms)} | ${mark(whole, 1.5)} |`,
    );
  }
  return out;
}

async function main(): Promise<void> {
  const runs = Number(arg('runs', '3'));
  const seconds = Number(arg('seconds', '10'));
  const restart = process.argv.includes('--restart');
  const restartAtS = Number(arg('restart-at', String(Math.min(3, seconds / 2))));
  const outFile = arg(
    'out',
    restart ? 'bench/results/cold-start-restart.md' : 'bench/results/cold-start.md',
  );
  const only = arg('scenario', '');
  const balancerFilter = balancerWords(arg('balancers', ''));
  const brokerUrl = arg('broker', 'mqtt://127.0.0.1:1883');
  // The backends warmed before the first balancer (bench/lib/prime.ts) unless --no-prime.
  const prime = !process.argv.includes('--no-prime');
  // --render: write the page again from the last run's raw records, without running.
  const render = process.argv.includes('--render');
  const peers = render ? { nginx: true, haproxy: true } : ensurePeers(console.log);
  const started = render
    ? `(rendered again ${new Date().toISOString()})`
    : new Date().toISOString();
  const sections: string[] = [];
  const restartAtMs = restart ? restartAtS * 1000 : undefined;
  for (const scenario of coldStartScenarios('load-aware', seconds * 1000, restartAtMs)) {
    if (only && !scenario.name.includes(only)) continue;
    const balancers = scenario.balancers.filter(
      (b) => (b.family !== 'nginx' || peers.nginx) && keepsBalancer(balancerFilter, b.name),
    );
    // Every record with the gateway's trace (bench/procs/gateway-loadwise.ts traceEveryMs).
    const raw = join(dirname(outFile), 'raw');
    const rawFile = join(raw, `${scenario.name}${restart ? '-restart' : ''}.json`);
    let records: RunRecord[];
    if (render) {
      records = JSON.parse(readFileSync(rawFile, 'utf8')) as RunRecord[];
    } else {
      console.log(`scenario ${scenario.name}: ${balancers.map((b) => b.name).join(', ')}`);
      records = await runScenario(scenario, balancers, {
        runs,
        brokerUrl,
        log: console.log,
        prime,
      });
      mkdirSync(raw, { recursive: true });
      writeFileSync(rawFile, JSON.stringify(records, null, 1));
    }
    const ids = scenario.backends.map((b) => b.id);
    if (restartAtMs !== undefined) {
      sections.push(
        [
          `## ${scenario.title}: restart under load`,
          '',
          scenario.description,
          '',
          `${restartAtS} s into the load each balancer's process was killed (SIGKILL) and started ` +
            'again on the same port while the load went on; loadwise listens once `lb.ready()` ' +
            'has resolved (broker connected, warm-up done), except the row "listening before ' +
            'ready", which listens first and serves while it warms up; nginx once it has started. The rows ' +
            'named "reload" restart as an operator would instead: SIGHUP to the loadwise worker ' +
            "pool's primary (runWorkers reload(): a new worker beside the old one, the old one " +
            'closed once the new one listens) and to the nginx master (graceful reload). "Back after": ' +
            'ms from the kill to the new process being ready (loadwise: its ready message, or its ' +
            'listening one for the row that listens first; nginx: ' +
            'the first answer through it, polled every 10 ms); for a reload, until it has finished ' +
            '(nginx: the signal sent). Columns k-1 … k+2: the second before ' +
            'the one the kill fell in, that one, and the two after; each `sN: p99 ms / errors (by code)`. ' +
            'Whole-run p99 is over the requests answered; failed ones are in the errors.',
          '',
          '| balancer | run | killed at s | back after ms | k-1 | k | k+1 | k+2 | whole run p99 | errors | ECONNREFUSED | new process | load avg |',
          '|---|---:|---:|---:|---|---|---|---|---:|---|---:|---|---:|',
          ...restartRows(records),
          '',
        ].join('\n'),
      );
      continue;
    }
    const secs = Array.from({ length: COLD_START_SECONDS }, (_, i) => `s${i} p99`);
    sections.push(
      [
        `## ${scenario.title}`,
        '',
        scenario.description,
        '',
        'CPU in cores over the run (1 = one full core; the machine has ' +
          `${cpus().length}): the gateway process (a pool: its workers), and everything the run ` +
          "started (gateway, load generator, backends, agents). Near the machine's cores, the " +
          'machine itself is full and a gateway gets only what the others leave.',
        '',
        `| balancer | run | ${secs.join(' | ')} | whole run p99 | p50 | second 0 requests (${ids.join(' / ')}) | errors | ListenOverflows | gateway CPU | all CPU | load avg |`,
        `|---|---:|${secs.map(() => '---:').join('|')}|---:|---:|---|---:|---:|---:|---:|---:|`,
        ...rows(records, ids),
        '',
        "Targets: the first second's p99 at most 2x the gateway's own steady state (the median " +
          'per-second p99 from second 5 on, same run), and the whole run at most 1.5x nginx ' +
          '`least_conn` in the same run.',
        '',
        '| balancer | run | s0 p99 | steady p99 | s0 / steady (≤ 2×) | whole run p99 | nginx whole run p99 | ÷ nginx (≤ 1.5×) |',
        '|---|---:|---:|---:|---|---:|---:|---|',
        ...targetRows(records),
        '',
        'What the loadwise gateway saw (its trace every 200 ms): event-loop delay p99 / max over the run, ' +
          'the longest GC pause, the most requests waiting in its saturation queue, admitted (in flight), ' +
          'and sockets open to the backends at once; the accept queue of its listen socket (`ss`: Recv-Q, ' +
          'most seen / bound), the share of samples where it was full, ms from the first admitted request ' +
          'to the first full sample, and how often the overload guard started shedding.',
        '',
        '| balancer | run | event loop p99 / max ms | GC max ms | waiting max | admitted max | backend sockets max | accept queue max / bound | samples full | first full after ms | shed starts |',
        '|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|',
        ...traceRows(records),
        '',
      ].join('\n'),
    );
  }
  const text = [
    restart ? '# Cold start: restart under load' : '# Cold start',
    '',
    `Command: \`npm run bench:cold-start -- ${process.argv
      .slice(2)
      .filter((a) => a !== '--render')
      .join(' ')}\``.replace(' -- `', '`'),
    '',
    `Started ${started}; node ${process.version}, ${cpus().length} cores (${cpus()[0]?.model.trim() ?? '?'}), ` +
      `load average at the end ${loadavg()[0]!.toFixed(2)}. The machine is shared with other helpers' ` +
      'tests and benchmarks; the load average of each run is in its row. Latencies in ms, from each ' +
      "request's scheduled send (open loop); sN = the Nth second after the load started. " +
      (prime
        ? 'The backends were primed with requests of their own before the first balancer ' +
          '(bench/lib/prime.ts): only the gateway starts cold.'
        : 'The backends met the first balancer cold (`--no-prime`).'),
    '',
    ...sections,
  ].join('\n');
  writeFileSync(outFile, text);
  console.log(`wrote ${outFile}`);
}

if (require.main === module)
  main()
    .then(() => process.exit(0))
    .catch((e: unknown) => {
      console.error(e);
      process.exit(1);
    });
