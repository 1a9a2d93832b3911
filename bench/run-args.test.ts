import { spawnSync } from 'node:child_process';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs, runBench, usageText, UsageError } from './run';
import { buildScenarios } from './scenarios';

describe('bench arguments', () => {
  it('--rates sets scenario 8 rates, and rejects what is not a rate', () => {
    const args = parseArgs(['--scenario', 'rate-sweep', '--rates', '500,1500']);
    expect(args.rates).toEqual([500, 1500]);
    const sweep = buildScenarios({
      quick: false,
      strategies: ['load-aware'],
      controlPlaneAgents: 10,
      rates: args.rates,
    }).find((s) => s.name === 'rate-sweep')!;
    expect(sweep.cases.map((c) => c.label)).toEqual(['500 req/s', '1500 req/s']);
    expect(() => parseArgs(['--rates', '500,fast'])).toThrow(/--rates/);
    expect(() => parseArgs(['--rates', '0'])).toThrow(/--rates/);
  });

  it('primes the backends unless told --no-prime', () => {
    expect(parseArgs(['--scenario', 'identical']).prime).toBeUndefined();
    expect(parseArgs(['--scenario', 'identical', '--no-prime']).prime).toBe(false);
  });

  it('without --rates, scenario 8 keeps its steps', () => {
    const sweep = buildScenarios({
      quick: false,
      strategies: ['load-aware'],
      controlPlaneAgents: 10,
    }).find((s) => s.name === 'rate-sweep')!;
    expect(sweep.cases.map((c) => c.label)).toEqual([
      '500 req/s',
      '1000 req/s',
      '1500 req/s',
      '2000 req/s',
      '2500 req/s',
    ]);
  });

  it('--baseline takes a built checkout, and says what is missing in one that is not', () => {
    const root = join(__dirname, '..');
    expect(parseArgs(['--baseline', root]).baseline).toBe(root);
    expect(() => parseArgs(['--baseline', tmpdir()])).toThrow(/npx tsc -b/);
  });

  it('refuses a mistake with a UsageError naming it', () => {
    const refused = (argv: string[]): unknown => {
      try {
        parseArgs(argv);
      } catch (err) {
        return err;
      }
      return undefined;
    };
    for (const [argv, says] of [
      [['--bogus'], 'unknown argument --bogus (--help lists them)'],
      [['--runs'], '--runs needs a value (N)'],
      [['--runs', 'x'], '--runs needs a positive integer (got "x")'],
      [['--runs', '0'], '--runs needs a positive integer (got "0")'],
      [['--agents', '2e3'], '--agents needs a positive integer (got "2e3")'],
      [['--rates', '0'], '--rates needs positive numbers, comma-separated (req/s)'],
    ] as const) {
      const err = refused([...argv]);
      expect(err).toBeInstanceOf(UsageError);
      expect((err as Error).message).toBe(says);
    }
  });

  it('--help lists every flag it takes, and every scenario', () => {
    expect(parseArgs(['--help']).help).toBe(true);
    expect(parseArgs(['-h']).help).toBe(true);
    const scenarios = buildScenarios({
      quick: false,
      strategies: ['load-aware'],
      controlPlaneAgents: 10,
    });
    const text = usageText(scenarios);
    expect(text).toMatch(/^ {2}-h, --help /m);
    const flags = [...text.matchAll(/^ {2}(--[a-z-]+)( \S+)?/gm)].map((m) => [m[1]!, m[2]]);
    expect(flags.map(([f]) => f)).toEqual(
      expect.arrayContaining(['--scenario', '--runs', '--rates', '--baseline']),
    );
    // Each flag it lists is one parseArgs takes (with a value where it shows one).
    const sample: Record<string, string> = {
      '--baseline': join(__dirname, '..'),
      '--rates': '500',
      '--runs': '2',
      '--agents': '10',
    };
    for (const [flag, arg] of flags)
      expect(() => parseArgs(arg ? [flag!, sample[flag!] ?? 'x'] : [flag!])).not.toThrow();
    for (const s of scenarios) expect(text).toMatch(new RegExp(`^  ${s.name} +${s.title}`, 'm'));
  });

  it('refuses an unknown scenario before starting anything', async () => {
    const args = { ...parseArgs(['--scenario', 'nope']), brokerUrl: 'mqtt://127.0.0.1:1' };
    const bench = runBench(args, () => undefined);
    await expect(bench).rejects.toBeInstanceOf(UsageError);
    await expect(bench).rejects.toThrow(/^unknown scenario\(s\) nope; known: heterogeneous,/);
  });
});

/** The built runner, as `npm run bench --` runs it. */
describe('bench command line', () => {
  const run = (...argv: string[]) =>
    spawnSync(process.execPath, [join(__dirname, 'dist', 'run.js'), ...argv], {
      encoding: 'utf8',
      timeout: 20_000,
    });

  it('--help prints the usage on stdout and exits 0', () => {
    const r = run('--help');
    expect([r.status, r.stderr]).toEqual([0, '']);
    expect(r.stdout).toMatch(/^Usage: npm run bench/);
  });

  it.each([
    [['--help-me'], 'bench: unknown argument --help-me (--help lists them)\n'],
    [['--runs', 'x'], 'bench: --runs needs a positive integer (got "x")\n'],
    [
      ['--scenario', 'nope'],
      expect.stringMatching(/^bench: unknown scenario\(s\) nope; known: [^\n]+\n$/),
    ],
  ])('%j: one line on stderr, exit 2, no stack', (argv, stderr) => {
    const r = run(...argv);
    expect([r.status, r.stdout, r.stderr]).toEqual([2, '', stderr]);
  });
});
