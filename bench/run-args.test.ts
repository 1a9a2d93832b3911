import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from './run';
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
});
