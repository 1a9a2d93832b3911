/**
 * examples/systemd/: the agent and gateway units run as systemd would run
 * them. The ExecStart line and EnvironmentFile of each unit are taken from
 * the files as shipped; only host paths are mapped into a temp directory (the
 * checkout in /opt/loadwise → this repository, /etc/loadwise → files made by
 * examples/mosquitto/gen-certs.sh, the broker and backend addresses → ones
 * this test starts). The broker is the examples/mosquitto configuration.
 */
import { execFile } from 'node:child_process';
import {
  copyFileSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  rmSync,
  writeFileSync,
} from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type { BackendSnapshot, BalancerSnapshot } from '@loadwise/gateway-plugin';
import { CLI_OPTIONS, envName } from '../../packages/health-agent/src/config';
import { GATEWAY_ENV, STOP_GRACE_MS } from '../../examples/gateway-server';
import {
  ManagedChild,
  startBackendProcess,
  waitForListening,
  type StartedBackend,
} from '../../examples/lib/processes';
import { AGENT_BIN, GATEWAY_BIN, spawnScript } from '../kit/agent-cli';
import { eventually } from '../kit/fleet';
import { canRunTlsMosquitto } from '../kit/tls-mosquitto';
import { EXAMPLES, startExampleBroker, type ExampleBroker } from '../kit/example-broker';

const ROOT = path.resolve(__dirname, '../..');
const SYSTEMD = path.join(EXAMPLES, 'systemd');

/** A unit file: section → key → values (a key may repeat); backslash-newline joins lines. */
function parseUnit(text: string): Map<string, Map<string, string[]>> {
  const sections = new Map<string, Map<string, string[]>>();
  let current: Map<string, string[]> | undefined;
  for (const raw of text.replace(/\\\n\s*/g, ' ').split('\n')) {
    const line = raw.trim();
    if (line === '' || line.startsWith('#') || line.startsWith(';')) continue;
    const header = /^\[(.+)\]$/.exec(line);
    if (header) {
      current = new Map();
      sections.set(header[1]!, current);
      continue;
    }
    const eq = line.indexOf('=');
    if (!current || eq < 0) throw new Error(`not a unit line: ${line}`);
    const key = line.slice(0, eq).trim();
    current.set(key, [...(current.get(key) ?? []), line.slice(eq + 1).trim()]);
  }
  return sections;
}

/** KEY=VALUE lines of an EnvironmentFile (no quoting is used in the examples). */
function parseEnvFile(text: string): Record<string, string> {
  const env: Record<string, string> = {};
  for (const raw of text.split('\n')) {
    const line = raw.trim();
    if (line === '' || line.startsWith('#')) continue;
    const eq = line.indexOf('=');
    env[line.slice(0, eq)] = line.slice(eq + 1);
  }
  return env;
}

function service(unit: string): Map<string, string[]> {
  const s = parseUnit(readFileSync(path.join(SYSTEMD, unit), 'utf8')).get('Service');
  if (!s) throw new Error(`${unit}: no [Service] section`);
  return s;
}

function one(s: Map<string, string[]>, key: string): string {
  const v = s.get(key);
  if (!v || v.length !== 1) throw new Error(`expected one ${key}, got ${JSON.stringify(v)}`);
  return v[0]!;
}

/** Applies [from, to] replacements, longest `from` first, to one string. */
function mapPaths(value: string, map: [string, string][]): string {
  let out = value;
  for (const [from, to] of [...map].sort((a, b) => b[0].length - a[0].length))
    out = out.split(from).join(to);
  return out;
}

function seconds(v: string): number {
  const m = /^(\d+)s?$/.exec(v);
  if (!m) throw new Error(`not seconds: ${v}`);
  return Number(m[1]);
}

async function snapshot(url: string, token: string): Promise<BalancerSnapshot> {
  const res = await fetch(`${url}/_lb/status`, { headers: { authorization: `Bearer ${token}` } });
  return (await res.json()) as BalancerSnapshot;
}

describe('examples/systemd: unit files and environment files', () => {
  const agentEnv = parseEnvFile(readFileSync(path.join(SYSTEMD, 'agent.env'), 'utf8'));
  const gatewayEnv = parseEnvFile(readFileSync(path.join(SYSTEMD, 'gateway.env'), 'utf8'));

  it('name only real options in the environment files', () => {
    const agentVars = new Set(CLI_OPTIONS.map((o) => envName(o.flag)));
    expect(Object.keys(agentEnv).filter((k) => !agentVars.has(k))).toEqual([]);
    expect(Object.keys(gatewayEnv).filter((k) => !(k in GATEWAY_ENV))).toEqual([]);
  });

  it('give the services time to drain before systemd kills them', () => {
    const agent = service('loadwise-agent.service');
    expect(one(agent, 'KillSignal')).toBe('SIGTERM');
    expect(seconds(one(agent, 'TimeoutStopSec')) * 1000).toBeGreaterThan(
      Number(agentEnv['LOADWISE_DRAIN_GRACE_MS']) + 2000,
    );
    const gw = service('loadwise-gateway.service');
    expect(one(gw, 'KillSignal')).toBe('SIGTERM');
    expect(seconds(one(gw, 'TimeoutStopSec')) * 1000).toBeGreaterThan(STOP_GRACE_MS + 2000);
  });

  it('restart after exit 2 too: a port still held or a secret file not there yet is one', async () => {
    // RestartPreventExitStatus=2 kept a unit down for good after a start-up failure that
    // clears by itself (both programs exit 2 for those as for a mistake); systemd's start
    // limit ends the loop of a real mistake.
    for (const unit of ['loadwise-agent.service', 'loadwise-gateway.service']) {
      const s = service(unit);
      expect({ unit, restart: one(s, 'Restart') }).toEqual({ unit, restart: 'always' });
      expect({ unit, prevent: s.get('RestartPreventExitStatus') }).toEqual({
        unit,
        prevent: undefined,
      });
      // And the start limit trips: its burst of starts, RestartSec apart, fits in its
      // interval (systemd's default, 5 in 10 s, never does with RestartSec=2).
      const u = parseUnit(readFileSync(path.join(SYSTEMD, unit), 'utf8')).get('Unit')!;
      const burst = Number(one(u, 'StartLimitBurst'));
      const intervalS = Number(one(u, 'StartLimitIntervalSec'));
      const restartS = Number(one(s, 'RestartSec'));
      expect({ unit, trips: (burst - 1) * restartS < intervalS }).toEqual({ unit, trips: true });
    }
    // A key file a mount writes later: exit 2 from both, which the units restart.
    const gateway = path.join(ROOT, 'examples', 'dist', 'gateway-server.js');
    const missing = path.join(os.tmpdir(), `lw-not-yet-${process.pid}.keys`);
    const gw = spawnScript(gateway, [], {
      LOADWISE_GW_BACKENDS: 'a=http://127.0.0.1:1',
      LOADWISE_GW_KEY_FILE: missing,
    });
    expect(await gw.exited).toBe(2);
  }, 30_000);

  it('put the agent PID file in the unit’s RuntimeDirectory and read the shipped env files', () => {
    const agent = service('loadwise-agent.service');
    const pidFile = one(agent, 'ExecStart').split(/\s+/).at(-1)!;
    expect(path.dirname(pidFile)).toBe(`/run/${one(agent, 'RuntimeDirectory')}`);
    expect(one(agent, 'EnvironmentFile')).toBe('/etc/loadwise/agent.env');
    expect(one(service('loadwise-gateway.service'), 'EnvironmentFile')).toBe(
      '/etc/loadwise/gateway.env',
    );
  });

  const analyze = ['/usr/bin/systemd-analyze', '/bin/systemd-analyze'].find(existsSync);
  (analyze ? it : it.skip)(
    'pass systemd-analyze verify (with ExecStart mapped to this checkout)',
    async () => {
      const dir = mkdtempSync(path.join(os.tmpdir(), 'lw-units-'));
      try {
        for (const unit of ['loadwise-agent.service', 'loadwise-gateway.service']) {
          const text = readFileSync(path.join(SYSTEMD, unit), 'utf8')
            .replace('/usr/bin/node', process.execPath)
            .replaceAll('/opt/loadwise/', `${ROOT}/`);
          writeFileSync(path.join(dir, unit), text);
          const r = await new Promise<{ code: number; out: string }>((resolve) =>
            execFile(analyze!, ['verify', path.join(dir, unit)], (err, stdout, stderr) =>
              resolve({ code: err ? 1 : 0, out: stdout + stderr }),
            ),
          );
          // Only the unit's own lines count: the host's other units may warn too.
          const ours = r.out.split('\n').filter((l) => l.includes(unit));
          expect({ unit, ours }).toEqual({ unit, ours: [] });
        }
      } finally {
        rmSync(dir, { recursive: true, force: true });
      }
    },
    30_000,
  );
});

(canRunTlsMosquitto ? describe : describe.skip)('examples/systemd: the units running', () => {
  let broker: ExampleBroker;
  let tmp: string;
  let backends: StartedBackend[] = [];
  let agent: ManagedChild | undefined;
  let gateway: ManagedChild | undefined;
  let gatewayUrl: string;
  let token: string;
  let agentPidFile: string;
  /** api-1 as the gateway's status endpoint shows it. */
  const api1 = async (): Promise<BackendSnapshot> =>
    (await snapshot(gatewayUrl, token)).backends.find((x) => x.id === 'api-1')!;

  beforeAll(async () => {
    broker = await startExampleBroker(['gateway', 'agent-api-1']);
    tmp = mkdtempSync(path.join(os.tmpdir(), 'lw-systemd-'));
    const etc = path.join(tmp, 'etc');
    const run = path.join(tmp, 'run');
    mkdirSync(etc);
    mkdirSync(run);
    // /etc/loadwise as the unit comments describe it.
    copyFileSync(path.join(broker.certs, 'ca.pem'), path.join(etc, 'ca.pem'));
    for (const [from, to] of [
      ['agent-api-1', 'agent'],
      ['gateway', 'gateway'],
    ]) {
      copyFileSync(path.join(broker.certs, `${from}.pem`), path.join(etc, `${to}.pem`));
      copyFileSync(path.join(broker.certs, `${from}.key`), path.join(etc, `${to}.key`));
    }
    writeFileSync(path.join(etc, 'signing.keys'), `k1 ${Buffer.alloc(32, 9).toString('base64')}\n`);

    backends = await Promise.all(
      ['api-1', 'api-2'].map((id) =>
        startBackendProcess({ id, pidFile: path.join(run, `${id}.pid`) }),
      ),
    );
    const map: [string, string][] = [
      ['/usr/bin/node', process.execPath],
      ['/opt/loadwise/', `${ROOT}/`],
      ['/etc/loadwise/', `${etc}/`],
      ['/run/loadwise-agent/', `${run}/`],
      ['/run/myapp/myapp.pid', path.join(run, 'api-1.pid')],
      ['mqtts://broker.internal:8883', broker.url],
      ['http://127.0.0.1:3000/healthz', `${backends[0]!.url}/health`],
      ['http://127.0.0.1:3000', backends[0]!.url],
      ['http://10.0.0.11:3000', backends[0]!.url],
      ['http://10.0.0.12:3000', backends[1]!.url],
    ];
    const start = (
      unit: string,
      envFile: string,
      overrides: Record<string, string> = {},
    ): ManagedChild => {
      const argv = one(service(unit), 'ExecStart')
        .split(/\s+/)
        .map((a) => mapPaths(a, map));
      const env: NodeJS.ProcessEnv = { PATH: process.env.PATH };
      for (const [k, v] of Object.entries(
        parseEnvFile(readFileSync(path.join(SYSTEMD, envFile), 'utf8')),
      )) {
        env[k] = mapPaths(v, map);
        // Every file an env file names must be one the unit comments say to install.
        if (v.startsWith('/etc/loadwise/'))
          expect({ [k]: existsSync(env[k]!) }).toEqual({ [k]: true });
      }
      return new ManagedChild(unit, argv[0]!, argv.slice(1), { ...env, ...overrides });
    };

    const gatewayEnv = parseEnvFile(readFileSync(path.join(SYSTEMD, 'gateway.env'), 'utf8'));
    token = gatewayEnv['LOADWISE_GW_STATUS_TOKEN']!;
    // Loopback and a free port in tests, instead of 0.0.0.0:8080.
    gateway = start('loadwise-gateway.service', 'gateway.env', {
      LOADWISE_GW_HOST: '127.0.0.1',
      LOADWISE_GW_PORT: '0',
    });
    gatewayUrl = `http://127.0.0.1:${await waitForListening(gateway, 15_000)}`;
    agent = start('loadwise-agent.service', 'agent.env');
    agentPidFile = path.join(run, 'agent.pid');
  }, 60_000);

  afterAll(async () => {
    await agent?.stop('SIGKILL');
    await gateway?.stop('SIGKILL');
    await Promise.all(backends.map((b) => b.process.stop('SIGTERM')));
    await broker?.stop();
    if (tmp) rmSync(tmp, { recursive: true, force: true });
  });

  it('the agent publishes signed reports over mutual TLS and the gateway routes on them', async () => {
    // The gateway holds the agent's key file: only signed reports count.
    await eventually(
      async () => {
        const b = await api1();
        return b.reportFresh && b.state === 'healthy';
      },
      20_000,
      () => `api-1 fresh at the gateway; agent said: ${agent!.stderrTail()}`,
    );
    const res = await fetch(`${gatewayUrl}/hello`);
    expect(res.status).toBe(200);
    expect(['api-1', 'api-2']).toContain(res.headers.get('x-served-by'));
    expect(existsSync(agentPidFile)).toBe(true);

    // `loadwise status` with the token of gateway.env, as the unit comment shows.
    const status = spawnScript(GATEWAY_BIN, ['status', '--url', `${gatewayUrl}/_lb/status`], {
      LOADWISE_STATUS_TOKEN: token,
    });
    expect(await status.exited).toBe(0);
    expect(status.stdout()).toMatch(/^api-1 +healthy /m);
  }, 30_000);

  it('drains and undrains through the PID file the unit writes', async () => {
    const drain = spawnScript(AGENT_BIN, ['drain', '--pid-file', agentPidFile]);
    expect(await drain.exited).toBe(0);
    await eventually(async () => (await api1()).state === 'draining', 10_000, 'api-1 draining');
    const undrain = spawnScript(AGENT_BIN, ['undrain', '--pid-file', agentPidFile]);
    expect(await undrain.exited).toBe(0);
    await eventually(async () => (await api1()).state === 'healthy', 10_000, 'api-1 healthy');
  }, 30_000);

  it('stops on KillSignal within TimeoutStopSec: the agent says offline, the gateway exits 0', async () => {
    const agentStopS = seconds(one(service('loadwise-agent.service'), 'TimeoutStopSec'));
    const started = Date.now();
    const exit = await agent!.stop('SIGTERM', agentStopS * 1000);
    expect(exit).toEqual({ code: 0, signal: null });
    expect(Date.now() - started).toBeLessThan(agentStopS * 1000);
    expect(existsSync(agentPidFile)).toBe(false); // removed on a clean stop
    await eventually(
      async () => {
        const b = await api1();
        return b.state === 'down' && b.stateReason === 'agent reported offline';
      },
      10_000,
      'api-1 down: agent reported offline',
    );
    const gwStopS = seconds(one(service('loadwise-gateway.service'), 'TimeoutStopSec'));
    expect(await gateway!.stop('SIGTERM', gwStopS * 1000)).toEqual({ code: 0, signal: null });
  }, 40_000);
});
