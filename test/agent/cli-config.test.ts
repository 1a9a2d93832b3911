import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import {
  CLI_OPTIONS,
  configKey,
  envName,
  fromEnvironment,
} from '../../packages/health-agent/src/config';
import { STATUS_ENV, WORKER_ENV } from '@loadwise/protocol';
import { GATEWAY_ENV } from '../../examples/gateway-server';
import { AGENT_CLI, spawnAgent } from '../kit/agent-cli';
import { listen, until } from '../kit/agent-http';

describe('loadwise-agent CLI interface', () => {
  let dir: string;
  beforeAll(() => (dir = mkdtempSync(path.join(os.tmpdir(), 'lw-cli-'))));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it('--help explains every option with its env var, and lists no variable it ignores', async () => {
    const p = spawnAgent(['--help']);
    expect(await p.exited).toBe(0);
    // One row of the table, one entry of --help: its flag, env var, config key and library option.
    const entries = new Map(
      p
        .stdout()
        .split('\n  --')
        .slice(1)
        .map((e) => [e.split(/\s/)[0]!, e]),
    );
    expect([...entries.keys()]).toEqual(CLI_OPTIONS.map((o) => o.flag));
    for (const o of CLI_OPTIONS) {
      const entry = entries.get(o.flag);
      expect(entry).toBeDefined();
      if (fromEnvironment(o.flag)) expect(entry).toContain(`env ${envName(o.flag)}`);
      else expect(p.stdout()).not.toContain(envName(o.flag));
      const key = configKey(o);
      if (key) expect(entry).toContain(`config key "${key}"`);
      else expect(entry).not.toContain('config key');
      if (o.option) expect(entry).toContain(`createAgent() ${o.option}`);
    }
    expect(p.stdout()).toContain('LOADWISE_ONCE');
    expect(p.stdout()).not.toContain('LOADWISE_HELP');
    expect(p.stdout()).toContain('SIGUSR2');
  });

  it('drain --help and undrain -h say how to use them (they were refused as unknown options)', async () => {
    for (const [args, signal] of [
      [['drain', '--help'], 'SIGUSR2'],
      [['undrain', '-h'], 'SIGHUP'],
    ] as const) {
      const p = spawnAgent([...args]);
      expect(await p.exited).toBe(0);
      expect(p.stdout()).toContain(`${args[0]} (--pid-file <agent pid file> | --pid <pid>)`);
      expect(p.stdout()).toContain(signal);
    }
  });

  it('LOADWISE_ONCE=1 samples once like --once; LOADWISE_HELP does not turn a daemon into --help', async () => {
    const p = spawnAgent([], {
      LOADWISE_ONCE: '1',
      LOADWISE_HELP: '1',
      LOADWISE_BACKEND_ID: 'from-env',
      LOADWISE_NO_CGROUP: 'true',
    });
    expect(await p.exited).toBe(0);
    expect(JSON.parse(p.stdout())).toMatchObject({ kind: 'metrics', backendId: 'from-env' });
    // Not read, and said so.
    expect(p.stderr()).toMatch(
      /^\S+Z warn LOADWISE_HELP: unknown variable, ignored \(see --help\)$/m,
    );
  });

  it.each([
    [
      ['--backend-id', 'b', '--broker', 'mqtt://127.0.0.1:1', '--interval-ms', '50'],
      '--interval-ms',
    ],
    [['--backend-id', 'b', '--broker', 'http://x'], '--broker'],
    [['--broker', 'mqtt://127.0.0.1:1'], '--backend-id'],
    [['--backend-id', 'b', '--once', '--probe-url', 'healthz'], '--probe-url'],
    [['--backend-id', 'b', '--once', '--bogus'], 'unknown option --bogus'],
    [
      ['--backend-id', 'b', '--once', '--kernel-prot', '8080'],
      'unknown option --kernel-prot (did you mean --kernel-port?)',
    ],
    // A library check (queue.port), named by the flag the user typed.
    [
      ['--backend-id', 'b', '--once', '--kernel-port', '70000'],
      '--kernel-port: must be an integer',
    ],
    [
      ['--backend-id', 'b', '--once', '--prometheus-url', 'http://x/'],
      '--prometheus-gauge: is required',
    ],
    [
      ['--backend-id', 'b', '--once', '--probe-timeout-ms', '50'],
      '--probe-timeout-ms: needs --probe-url',
    ],
    [['--backend-id', 'b', '--once', '--early-rise=-1'], '--early-rise'],
    [['--backend-id', 'b', '--once', '--early-min-gap-ms', '5'], '--early-min-gap-ms'],
    [['--backend-id', 'b', '--once', '--early-min-gap-ms', 'soon'], '--early-min-gap-ms'],
    // A value starting with a dash: the flag it belongs to is named, never "unknown option --5".
    [['--backend-id', 'b', '--once', '--interval-ms', '-5'], "'--interval-ms=-XYZ'"],
  ])('fails at start with exit 2 and one line naming the option: %j', async (args, name) => {
    const p = spawnAgent(args);
    expect(await p.exited).toBe(2);
    const lines = p.stderr().trim().split('\n');
    expect(lines).toHaveLength(1);
    expect(lines[0]).toMatch(/^loadwise-agent: LW_AGENT_INVALID_OPTION: /);
    expect(lines[0]).toContain(name);
  });

  it('rejects a typo in the config file with the nearest key, exit 2', async () => {
    const config = path.join(dir, 'typo.json');
    writeFileSync(config, JSON.stringify({ backendId: 'b', kernelPrt: 8080 }));
    const p = spawnAgent(['--once', '--config', config]);
    expect(await p.exited).toBe(2);
    expect(p.stderr().trim()).toBe(
      `loadwise-agent: LW_AGENT_CONFIG_FILE: ${config}: unknown option kernelPrt (did you mean kernelPort?)`,
    );
  });

  it('warns once of a LOADWISE_ variable it does not read, with the nearest name, and starts anyway', async () => {
    // Set beside it, as in one env file for the agent and a gateway: the gateway side's
    // variables (@loadwise/protocol environment.ts) are none of the agent's business.
    const gatewaySide = Object.fromEntries(
      [...Object.keys(GATEWAY_ENV), ...Object.values(STATUS_ENV), ...Object.values(WORKER_ENV)].map(
        (name) => [name, '1'],
      ),
    );
    const typo =
      'LOADWISE_TRAKER_URL: unknown variable, ignored (did you mean LOADWISE_TRACKER_URL?)';
    const once = spawnAgent([], {
      ...gatewaySide,
      LOADWISE_ONCE: '1',
      LOADWISE_BACKEND_ID: 'typo-once',
      LOADWISE_NO_CGROUP: 'true',
      LOADWISE_TRAKER_URL: 'http://127.0.0.1:1/stats',
    });
    expect(await once.exited).toBe(0);
    expect(JSON.parse(once.stdout())).toMatchObject({ kind: 'metrics', backendId: 'typo-once' });
    expect(once.stderr().trim().split('\n')).toEqual([expect.stringMatching(/^\S+Z warn /)]);
    expect(once.stderr()).toContain(typo);

    // The daemon: said at start, not again with every report or reconnect attempt.
    const daemon = spawnAgent(['--interval-ms', '100', '--reconnect-ms', '100'], {
      ...gatewaySide,
      LOADWISE_BACKEND_ID: 'typo-daemon',
      LOADWISE_BROKER: 'mqtt://127.0.0.1:1',
      LOADWISE_NO_CGROUP: 'true',
      LOADWISE_TRAKER_URL: 'http://127.0.0.1:1/stats',
    });
    try {
      await until(() => / info started: /.test(daemon.stderr()), 10_000, 'the agent to start');
      // Ten intervals, each a sample and a reconnect attempt.
      await new Promise((r) => setTimeout(r, 1000));
      expect(daemon.child.exitCode).toBeNull();
      expect(daemon.stderr().split(typo).length - 1).toBe(1);
      expect(daemon.stderr()).not.toMatch(/LOADWISE_(GW|STATUS|WORKER)_/);
    } finally {
      await daemon.kill();
    }
  });

  it('a misspelt required variable: named, before the refusal it explains', async () => {
    const p = spawnAgent(['--once'], { LOADWISE_BACKEND_IDD: 'api-1' });
    expect(await p.exited).toBe(2);
    expect(p.stderr().trim().split('\n')).toEqual([
      expect.stringMatching(
        /^\S+Z warn LOADWISE_BACKEND_IDD: unknown variable, ignored \(did you mean LOADWISE_BACKEND_ID\?\)$/,
      ),
      expect.stringMatching(/^loadwise-agent: LW_AGENT_INVALID_OPTION: --backend-id: is required/),
    ]);
  });

  it('--once prints one sample as JSON without a broker, configured from file and env', async () => {
    const config = path.join(dir, 'agent.json');
    writeFileSync(
      config,
      JSON.stringify({ backendId: 'from-file', intervalMs: 3000, noCgroup: true }),
    );
    const p = spawnAgent(['--once', '--config', config, '--service-pid', String(process.pid)], {
      LOADWISE_INTERVAL_MS: '200',
    });
    expect(await p.exited).toBe(0);
    const sample = JSON.parse(p.stdout());
    expect(sample).toMatchObject({
      v: 1,
      kind: 'metrics',
      backendId: 'from-file',
      intervalMs: 200,
      state: 'online',
      process: { pid: process.pid },
      health: { verdict: expect.stringMatching(/^(up|degraded)$/) },
    });
    expect(sample.host.memoryAvailableBytes).toBeGreaterThan(0);
    expect(sample.cgroup).toBeUndefined();
  });

  it('--once logs why a source failed, once, as the daemon does', async () => {
    // Before, --once returned before the warning listener was attached: the report
    // went out without its queue block and nothing said why.
    const sick = await listen((_req, res) => {
      res.statusCode = 503;
      res.end();
    });
    try {
      const p = spawnAgent([
        '--backend-id',
        'once-warn',
        '--once',
        '--no-cgroup',
        '--interval-ms',
        '200',
        '--tracker-url',
        `${sick.url}/stats`,
      ]);
      expect(await p.exited).toBe(0);
      expect(JSON.parse(p.stdout()).queue).toBeUndefined();
      // Both samples failed the same way: said once (warnings repeat at most once a minute).
      const lines = p.stderr().trim().split('\n');
      expect(lines).toEqual([
        expect.stringMatching(
          /^\S+Z warn queue source \(tracker\) failed: tracker endpoint answered 503$/,
        ),
      ]);
    } finally {
      await sick.close();
    }
  });

  it('`drain` without a target fails clearly', async () => {
    const p = spawnAgent(['drain']);
    expect(await p.exited).toBe(2);
    expect(p.stderr()).toContain('--pid-file');
  });

  it.each(['0x1', '1e0', '1.0'])('`drain --pid %j` is refused: a PID is decimal', async (pid) => {
    // Number() read `0x1` and `1e0` as 1: init, which the command-line check then refused
    // only because /proc said it was no agent.
    const p = spawnAgent(['drain', '--pid', pid]);
    expect(await p.exited).toBe(2);
    expect(p.stderr().trim()).toBe(
      'loadwise-agent: LW_AGENT_INVALID_OPTION: --pid: must be a process id',
    );
  });

  // Node writes process.title over the argument area and cuts it to fit: started as
  // `node cli.js` (a container's CMD), the agent's command line is `loadwise-ag`.
  (process.platform === 'linux' ? it : it.skip)(
    '`drain --pid` of an agent started with a short command line, whose title is cut',
    async () => {
      const agent = spawn(process.execPath, ['cli.js'], {
        argv0: 'node',
        cwd: path.dirname(AGENT_CLI),
        env: {
          PATH: process.env['PATH'],
          LOADWISE_BACKEND_ID: 'short-title',
          LOADWISE_BROKER: 'mqtt://127.0.0.1:1',
          LOADWISE_NO_CGROUP: '1',
          LOADWISE_DRAIN_GRACE_MS: '0',
        },
        stdio: ['ignore', 'ignore', 'pipe'],
      });
      let stderr = '';
      agent.stderr.on('data', (d: Buffer) => (stderr += String(d)));
      const exited = new Promise((r) => agent.once('exit', r));
      try {
        await until(() => stderr.includes(' info started: '), 10_000, 'the agent to start');
        expect(readFileSync(`/proc/${agent.pid}/cmdline`, 'latin1')).toMatch(/^loadwise-ag\0*$/);
        const p = spawnAgent(['drain', '--pid', String(agent.pid)]);
        expect(await p.exited).toBe(0);
        expect(p.stdout()).toContain(`sent SIGUSR2 (drain) to ${agent.pid}`);
        await until(() => stderr.includes('SIGUSR2: draining'), 5000, 'the drain');
      } finally {
        agent.kill('SIGTERM');
        await exited;
      }
    },
  );

  // SIGUSR2's default action ends a process: a wrong --pid (the backend's, printed
  // beside the agent's) or a stale pid file whose pid was reused must not hit it.
  (process.platform === 'linux' ? it : it.skip)(
    '`drain --pid` of a process that is not an agent: refused, the process untouched',
    async () => {
      const other = spawn(process.execPath, ['-e', 'setTimeout(() => {}, 30000)'], {
        stdio: 'ignore',
      });
      try {
        const p = spawnAgent(['drain', '--pid', String(other.pid)]);
        expect(await p.exited).toBe(1);
        expect(p.stderr()).toContain(`process ${other.pid} is not a loadwise agent`);
        expect(other.exitCode).toBeNull();
        expect(other.signalCode).toBeNull();
      } finally {
        other.kill('SIGKILL');
      }
    },
  );
});
