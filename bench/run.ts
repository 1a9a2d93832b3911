/**
 * `npm run bench [-- --scenario NAME[,NAME]] [--runs N] [--quick]`; `-- --help` lists every flag
 * and scenario. A mistake in the arguments is one line on stderr and exit 2, never a stack.
 *
 * Runs the scenarios of bench/scenarios.ts and writes bench/results/<name>.md,
 * <name>.svg and latest.md (raw JSON to bench/results/raw/, git-ignored).
 */
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { loadavg } from 'node:os';
import { join } from 'node:path';
import { buildScenarios } from './scenarios';
import { chartSpec, renderSvg, shareSeriesSpec } from './lib/chart';
import { runScenario } from './lib/engine';
import { loadwiseAt, parseStrategySpec } from './lib/balancers';
import { balancerWords, keepsBalancer } from './lib/balancer-filter';
import { ensurePeers } from './lib/peers';
import { aggregate, scenarioPage, type RunInfo } from './lib/report';
import type { Scenario } from './lib/scenario';

export interface BenchArgs {
  scenarios: string[];
  runs: number;
  quick: boolean;
  brokerUrl: string;
  strategies?: string[];
  balancers?: string[];
  /** Scenario 8's open-loop rates (req/s) instead of its default steps. */
  rates?: number[];
  controlPlaneAgents: number;
  resultsDir: string;
  /**
   * Another checkout of loadwise (built with `npx tsc -b`): its default gateway runs as one
   * more row, "loadwise <strategy> (baseline)", in every scenario with a loadwise row, so a
   * change is measured against the code before it in the same runs.
   */
  baseline?: string;
  /** `--no-prime`: leave the backends cold for the first balancer (bench/lib/prime.ts). */
  prime?: boolean;
  /** Rebuild latest.md from every scenario page in resultsDir (default: unless only the smoke scenario ran). */
  writeLatest?: boolean;
  /** `--help`: print usageText and run nothing. */
  help?: boolean;
}

/** A mistake in the arguments: one line on stderr and exit 2, no stack (see main below). */
export class UsageError extends Error {}

function positiveInt(flag: string, v: string): number {
  const n = /^[0-9]+$/.test(v) ? Number(v) : NaN;
  if (!Number.isSafeInteger(n) || n < 1)
    throw new UsageError(`${flag} needs a positive integer (got ${JSON.stringify(v)})`);
  return n;
}

interface Flag {
  /** The value's placeholder; none: a switch. */
  arg?: string;
  help: string;
  set(args: BenchArgs, value: string): void;
}

/** Every flag, in the order --help lists them: one table drives parsing and help. */
const FLAGS: Record<string, Flag> = {
  '--scenario': {
    arg: 'NAME[,NAME]',
    help: 'run these scenarios only (repeatable; default: all but those run only when named)',
    set: (a, v) => a.scenarios.push(...v.split(',')),
  },
  '--runs': {
    arg: 'N',
    help: 'runs per scenario; the tables show the median (default 3)',
    set: (a, v) => (a.runs = positiveInt('--runs', v)),
  },
  '--quick': { help: 'short runs (seconds each): a rough look', set: (a) => (a.quick = true) },
  '--balancers': {
    arg: '"WORD,..."',
    help: 'keep only balancers whose name contains one of the words, in any case',
    set: (a, v) => (a.balancers = balancerWords(v)),
  },
  '--strategies': {
    arg: 'S[,S]',
    help: 'loadwise strategies, e.g. load-aware,p2c or load-aware/choices=2 (default: every one)',
    set: (a, v) => (a.strategies = v.split(',')),
  },
  '--agents': {
    arg: 'N',
    help: "scenario 7's simulated agents (default 5000)",
    set: (a, v) => (a.controlPlaneAgents = positiveInt('--agents', v)),
  },
  '--rates': {
    arg: 'R[,R]',
    help: "scenario 8's open-loop rates, req/s (default 500 to 2500 by 500)",
    set: (a, v) => {
      const rates = v.split(',').map(Number);
      if (!rates.every((r) => Number.isFinite(r) && r > 0)) {
        throw new UsageError('--rates needs positive numbers, comma-separated (req/s)');
      }
      a.rates = rates;
    },
  },
  '--broker': {
    arg: 'URL',
    help: 'MQTT broker (default $LOADWISE_BENCH_BROKER, else mqtt://127.0.0.1:1883)',
    set: (a, v) => (a.brokerUrl = v),
  },
  '--out': {
    arg: 'DIR',
    help: 'write the result pages there (default bench/results)',
    set: (a, v) => (a.resultsDir = v),
  },
  '--no-prime': {
    help: 'leave the backends cold for the first balancer',
    set: (a) => (a.prime = false),
  },
  '--baseline': {
    arg: 'DIR',
    help: 'another checkout, built with npx tsc -b: its default gateway as one more row',
    set: (a, v) => {
      a.baseline = v;
      const gateway = join(v, 'bench', 'dist', 'procs', 'gateway-loadwise.js');
      if (!existsSync(gateway)) {
        throw new UsageError(`--baseline ${v}: no ${gateway} (build that checkout: npx tsc -b)`);
      }
    },
  },
};

/** Throws UsageError for a flag it does not know, a flag without its value or a bad value. */
export function parseArgs(argv: string[]): BenchArgs {
  const args: BenchArgs = {
    scenarios: [],
    runs: 3,
    quick: false,
    brokerUrl: process.env.LOADWISE_BENCH_BROKER ?? 'mqtt://127.0.0.1:1883',
    controlPlaneAgents: 5000,
    resultsDir: join(__dirname, '..', 'results'),
  };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    if (a === '--help' || a === '-h') {
      args.help = true;
      continue;
    }
    const flag = Object.hasOwn(FLAGS, a) ? FLAGS[a]! : undefined;
    if (flag === undefined) throw new UsageError(`unknown argument ${a} (--help lists them)`);
    let value = '';
    if (flag.arg !== undefined) {
      const v = argv[++i];
      if (v === undefined) throw new UsageError(`${a} needs a value (${flag.arg})`);
      value = v;
    }
    flag.set(args, value);
  }
  return args;
}

/** What `npm run bench -- --help` prints: every flag, then every scenario. */
export function usageText(scenarios: Scenario[]): string {
  const rows = [
    ...Object.entries(FLAGS).map(([name, f]) => [`${name}${f.arg ? ` ${f.arg}` : ''}`, f.help]),
    ['-h, --help', 'this help'],
  ];
  const width = Math.max(...rows.map(([left]) => left!.length)) + 2;
  return [
    'Usage: npm run bench [-- [--scenario NAME[,NAME]] [--runs N] [--quick] [options]]',
    ...rows.map(([left, help]) => `  ${left!.padEnd(width)}${help}`),
    '',
    'Scenarios (docs/bench.md):',
    ...scenarios.map(
      (s) => `  ${s.name.padEnd(26)}${s.title}${s.onlyWhenNamed ? ' (only when named)' : ''}`,
    ),
    '',
  ].join('\n');
}

/** The gateway's registered strategy names, default first; falls back to the default alone. */
export function loadwiseStrategies(): string[] {
  try {
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    const gw = require('@loadwise/gateway-plugin') as Record<string, unknown>;
    const list = (gw.STRATEGY_NAMES ?? gw.strategyNames ?? gw.listStrategies) as unknown;
    const names =
      typeof list === 'function' ? (list as () => string[])() : (list as string[] | undefined);
    if (Array.isArray(names) && names.length > 0) {
      const def = typeof gw.DEFAULT_STRATEGY === 'string' ? gw.DEFAULT_STRATEGY : 'load-aware';
      return [def, ...names.filter((n) => n !== def)];
    }
  } catch {
    // not built yet: fall through
  }
  return ['load-aware'];
}

/** An argument as a shell would need it typed (`--balancers "nginx least_conn,loadwise"`). */
function shellWord(a: string): string {
  return /^[\w@%+=:,./-]+$/.test(a) ? a : `'${a.replace(/'/g, `'\\''`)}'`;
}

/** Result pages are generated (bench/results is in .prettierignore). */
async function writeMarkdown(file: string, text: string): Promise<void> {
  writeFileSync(file, text);
}

export async function runBench(
  args: BenchArgs,
  log: (s: string) => void = console.log,
): Promise<string[]> {
  const strategies = args.strategies ?? loadwiseStrategies();
  let scenarios: Scenario[] = buildScenarios({
    quick: args.quick,
    strategies,
    controlPlaneAgents: args.controlPlaneAgents,
    ...(args.rates ? { rates: args.rates } : {}),
  });
  if (args.scenarios.length > 0) {
    const unknown = args.scenarios.filter((s) => !scenarios.some((x) => x.name === s));
    if (unknown.length)
      throw new UsageError(
        `unknown scenario(s) ${unknown.join(', ')}; known: ${scenarios.map((s) => s.name).join(', ')}`,
      );
    scenarios = scenarios.filter((s) => args.scenarios.includes(s.name));
  } else {
    scenarios = scenarios.filter((s) => !s.onlyWhenNamed);
  }
  const needsPeers = scenarios.some((s) =>
    s.balancers.some((b) => b.family === 'nginx' || b.family === 'haproxy'),
  );
  const peers = needsPeers ? ensurePeers(log) : { nginx: false, haproxy: false };
  mkdirSync(join(args.resultsDir, 'raw'), { recursive: true });
  const info: RunInfo = {
    date: new Date().toISOString(),
    runs: args.runs,
    quick: args.quick,
    command: `npm run bench -- ${process.argv.slice(2).map(shellWord).join(' ')}`.trim(),
    loadAvgBefore: loadavg(),
  };
  const pages: string[] = [];
  const written: string[] = [];
  for (const scenario of scenarios) {
    const balancers = scenario.balancers.filter(
      (b) =>
        (b.family !== 'nginx' || peers.nginx) &&
        (b.family !== 'haproxy' || peers.haproxy) &&
        keepsBalancer(args.balancers, b.name),
    );
    if (args.baseline && balancers.some((b) => b.family === 'loadwise')) {
      balancers.push(
        loadwiseAt(
          args.baseline,
          'baseline',
          parseStrategySpec(strategies[0] ?? 'load-aware').strategy,
        ),
      );
    }
    log(`scenario ${scenario.name}: ${balancers.map((b) => b.name).join(', ')}`);
    const records = await runScenario(scenario, balancers, {
      runs: args.runs,
      brokerUrl: args.brokerUrl,
      log,
      quick: args.quick,
      prime: args.prime,
    });
    writeFileSync(
      join(args.resultsDir, 'raw', `${scenario.name}.json`),
      JSON.stringify({ info, records }, null, 1),
    );
    const rows = aggregate(records, scenario);
    const chartFile = `${scenario.name}.svg`;
    let chart: string | undefined;
    try {
      writeFileSync(
        join(args.resultsDir, chartFile),
        await renderSvg(chartSpec(scenario.title, rows, scenario.name === 'rate-sweep')),
      );
      chart = chartFile;
    } catch (err) {
      log(`chart for ${scenario.name} failed: ${(err as Error).message}`);
    }
    const charts = chart ? [chart] : [];
    const [degrade, recover] = scenario.cases[0]?.events ?? [];
    if (degrade && recover) {
      const file = `${scenario.name}-share.svg`;
      const spec = shareSeriesSpec(scenario.title, records, degrade.backendId, [
        { tMs: degrade.atMs, label: 'degrades' },
        { tMs: recover.atMs, label: 'recovers' },
      ]);
      writeFileSync(join(args.resultsDir, file), await renderSvg(spec));
      charts.push(file);
    }
    const page = scenarioPage(scenario, rows, info, charts, records);
    await writeMarkdown(
      join(args.resultsDir, `${scenario.name}.md`),
      `# Benchmark: ${scenario.title}\n\n${page}`,
    );
    written.push(join(args.resultsDir, `${scenario.name}.md`));
    pages.push(page);
  }
  if (args.writeLatest ?? !scenarios.every((s) => s.onlyWhenNamed)) {
    // Combine the latest page of every scenario, also those from earlier
    // partial runs (`--scenario NAME`), in the scenario table's order.
    const all = buildScenarios({
      quick: false,
      strategies,
      controlPlaneAgents: args.controlPlaneAgents,
    });
    const sections = all
      .filter((s) => !s.onlyWhenNamed && existsSync(join(args.resultsDir, `${s.name}.md`)))
      .map((s) =>
        readFileSync(join(args.resultsDir, `${s.name}.md`), 'utf8').replace(
          /^# Benchmark: .*\n\n/,
          '',
        ),
      );
    const latest = [
      '# loadwise benchmark results',
      '',
      'Each section names its own date, machine, load average and command. ' +
        'Method and targets: [docs/bench.md](../../docs/bench.md).',
      '',
      ...sections,
    ].join('\n');
    await writeMarkdown(join(args.resultsDir, 'latest.md'), latest);
    written.push(join(args.resultsDir, 'latest.md'));
  }
  return written;
}

/** The scenarios' names and titles, for --help (their balancers are not started). */
function allScenarios(): Scenario[] {
  return buildScenarios({ quick: false, strategies: ['load-aware'], controlPlaneAgents: 5000 });
}

if (require.main === module) {
  const usageError = (err: unknown): never => {
    process.stderr.write(`bench: ${(err as Error).message}\n`);
    process.exit(2);
  };
  let args: BenchArgs;
  try {
    args = parseArgs(process.argv.slice(2));
  } catch (err) {
    if (!(err instanceof UsageError)) throw err;
    usageError(err);
  }
  if (args!.help) {
    process.stdout.write(usageText(allScenarios()));
    process.exit(0);
  }
  runBench(args!)
    .then((files) => {
      console.log(`wrote ${files.join(', ')}`);
      process.exit(0);
    })
    .catch((err: unknown) => {
      if (err instanceof UsageError) usageError(err);
      console.error(err);
      process.exit(1);
    });
}
