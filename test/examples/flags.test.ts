/**
 * Every example program refuses a flag it does not take, a flag without its
 * value and a value that is not an integer in range the same way: one line on
 * stderr naming it, exit code 2, before starting anything. parseArgs throws a
 * TypeError for the first two, which printed a stack trace and exit code 1.
 * And each has a --help naming every flag it takes (backend and
 * existing-gateway said "Unknown option '--help'").
 */
import { spawn } from 'node:child_process';
import path from 'node:path';

const dist = (name: string): string => path.resolve(__dirname, '../../examples/dist', name);

/** Program, script, and where the line sends the user for an unknown or incomplete flag. */
const PROGRAMS: [string, string, string][] = [
  ['quick-start', dist('quick-start.js'), '; npm start -- --help lists the options'],
  ['existing-gateway', dist('existing-gateway.js'), '; --help lists the options'],
  ['two-gateways', dist('two-gateways/run.js'), '; --help lists the options'],
  ['backend', dist('backend.js'), '; --help lists the options'],
];

/** Every flag each program takes, as its parseFlags options name them. */
const FLAGS: Record<string, string[]> = {
  'quick-start': ['port', 'load', 'rate', 'steady', 'interval-ms', 'workers'],
  'existing-gateway': [
    'port',
    'broker',
    'prefix',
    'token',
    'status-token',
    'interval-ms',
    'rate-limit',
  ],
  'two-gateways': ['port', 'broker', 'prefix'],
  backend: [
    'id',
    'port',
    'host',
    'slots',
    'service-ms',
    'max-queue',
    'pid-file',
    'exit-with-parent',
  ],
};

const CASES: [string[], string][] = [
  [['--bogus'], "Unknown option '--bogus'"],
  [['--port'], "'--port <value>' argument missing"],
  [['--port', '-1'], "'--port' argument is ambiguous"],
  [['--port', '8x'], '--port must be an integer 0..65535'],
  [['--port', '2e3'], '--port must be an integer 0..65535'],
];

async function run(
  script: string,
  args: string[],
  env: NodeJS.ProcessEnv = process.env,
): Promise<{ code: number | null; stdout: string; stderr: string }> {
  const p = spawn(process.execPath, [script, ...args], {
    stdio: ['ignore', 'pipe', 'pipe'],
    env,
  });
  let stdout = '';
  let stderr = '';
  p.stdout!.on('data', (d: Buffer) => (stdout += d.toString()));
  p.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
  // Taken as valid, the flags start the whole program: stopped, so the test fails instead of hanging.
  const guard = setTimeout(() => p.kill('SIGKILL'), 10_000);
  const code = await new Promise<number | null>((resolve) => p.once('exit', resolve));
  clearTimeout(guard);
  return { code, stdout, stderr };
}

describe.each(PROGRAMS)('%s', (program, script, hint) => {
  it.each(CASES)('refuses %j with one line and exit 2', async (args, says) => {
    const { code, stderr } = await run(script, args);
    expect(code).toBe(2);
    expect(stderr.split('\n')).toEqual([expect.stringMatching(new RegExp(`^${program}: `)), '']);
    expect(stderr).toContain(says);
    if (!says.startsWith('--port must')) expect(stderr).toContain(`${says}${hint}\n`);
    expect(stderr).not.toMatch(/TypeError|ERR_PARSE_ARGS|\n\s+at /);
  });
});

it('quick-start refuses --steady without --load, which it took in silence', async () => {
  const quickStart = PROGRAMS.find(([program]) => program === 'quick-start')![1];
  const { code, stderr } = await run(quickStart, ['--steady']);
  expect([code, stderr]).toEqual([2, 'quick-start: --steady goes with --load\n']);
});

describe.each(PROGRAMS)('%s', (program, script) => {
  it.each([['--help'], ['-h']])('%s prints every flag on stdout and exits 0', async (flag) => {
    // A token from the environment is a default the help must not show.
    const env = { ...process.env, GATEWAY_TOKEN: 'secret-app', LB_TOKEN: 'secret-ops' };
    const { code, stdout, stderr } = await run(script, [flag], env);
    expect([code, stderr]).toEqual([0, '']);
    expect(stdout).toMatch(/^Usage: /);
    for (const name of [...FLAGS[program]!, 'help'])
      expect(stdout).toMatch(new RegExp(`^  (-h, )?--${name}\\b`, 'm'));
    expect(stdout).not.toMatch(/secret-/);
  });
});
