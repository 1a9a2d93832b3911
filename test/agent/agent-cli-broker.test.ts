import * as net from 'node:net';
import { startEmbeddedBroker, type EmbeddedBroker } from '@loadwise/gateway-plugin';
import { listen, until } from '../kit/agent-http';
import { uniquePrefix } from '../kit/brokers';
import { spawnAgent, type AgentProcess } from '../kit/agent-cli';

/** Every agent here: a report each 200 ms, no drain wait at stop, no cgroup reads. */
const QUICK = ['--interval-ms', '200', '--drain-grace-ms', '0', '--no-cgroup'];

// Agents on one embedded broker (aedes takes any user name and password), each test's
// own processes killed after it.
let broker: EmbeddedBroker;
const agents: AgentProcess[] = [];
beforeAll(async () => {
  broker = await startEmbeddedBroker();
});
afterEach(async () => {
  await Promise.all(agents.splice(0).map((a) => a.kill()));
});
afterAll(async () => {
  await broker.close();
});

// The agent's info line named the broker URL as given, password included
// (`connected to mqtt://alice:S3CRET-PW@...`); its log goes wherever stderr
// does. The embedded broker (aedes) takes any user name and password.
describe('loadwise-agent CLI: the broker password in its log', () => {
  it.each([
    ['--broker', (url: string) => ({ args: ['--broker', url], env: {} })],
    ['LOADWISE_BROKER', (url: string) => ({ args: [], env: { LOADWISE_BROKER: url } })],
  ])('shows the broker URL from %s with its password as ***', async (_, source) => {
    const url = broker.url.replace('mqtt://', 'mqtt://alice:S3CRET-PW@');
    const { args, env } = source(url);
    const agent = spawnAgent(
      ['--backend-id', 'cred-a', '--prefix', uniquePrefix('agent-pw'), ...QUICK, ...args],
      env,
    );
    agents.push(agent);
    await until(() => agent.stderr().includes('connected to'), 8000, 'the connected line');
    agent.child.kill('SIGTERM');
    expect(await agent.exited).toBe(0);
    const lines = agent.stderr().trimEnd().split('\n');
    expect(lines).toContainEqual(
      expect.stringContaining(
        `connected to ${broker.url.replace('mqtt://', 'mqtt://alice:***@')} as cred-a`,
      ),
    );
    for (const line of lines) expect(line).not.toContain('S3CRET');
    expect(agent.stdout()).not.toContain('S3CRET');
  });
});

// Two agents with one --client-id take the broker session from each other on every
// reconnect (the broker drops the older client); MQTT 3.1.1 gives no reason.
describe('loadwise-agent CLI: a --client-id another client uses', () => {
  it('is named once, after a run of connections dropped within seconds', async () => {
    const prefix = uniquePrefix('agent-dup-id');
    for (const id of ['dup-a', 'dup-b']) {
      agents.push(
        spawnAgent([
          '--backend-id',
          id,
          '--prefix',
          prefix,
          '--broker',
          broker.url,
          '--client-id',
          'copied-config-id',
          '--reconnect-ms',
          '100',
          ...QUICK,
        ]),
      );
    }
    const named = (a: AgentProcess): boolean =>
      a.stderr().includes('another client is probably using --client-id copied-config-id');
    await until(() => agents.some(named), 15_000, 'the takeover named');
    for (const a of agents) {
      const lines = a
        .stderr()
        .split('\n')
        .filter((l) => l.includes('--client-id copied-config-id'));
      expect(lines.length).toBeLessThanOrEqual(1);
    }
  }, 30_000);
});

// A listener that closes every connection before a CONNACK (a TLS or WebSocket port given
// as mqtt://, a broker at its connection limit) gave no error: the agent said "broker
// connection lost" while it never was connected, and nothing after.
describe('loadwise-agent CLI: a broker that closes before accepting', () => {
  it('says the connection was closed before a CONNACK, and that it never was connected', async () => {
    const closer = net.createServer((c) => c.once('data', () => c.destroy()));
    await new Promise<void>((r) => closer.listen(0, '127.0.0.1', r));
    try {
      const port = (closer.address() as net.AddressInfo).port;
      const agent = spawnAgent([
        '--backend-id',
        'closed-a',
        '--prefix',
        uniquePrefix('agent-no-connack'),
        '--broker',
        `mqtt://alice:S3CRET-PW@127.0.0.1:${port}`,
        '--reconnect-ms',
        '100',
        ...QUICK,
      ]);
      agents.push(agent);
      await until(
        () => agent.stderr().includes('before accepting it'),
        8000,
        'the no-CONNACK line',
      );
      // Reconnects every 100 ms for a while: the line is said once a minute, not each time.
      await new Promise((r) => setTimeout(r, 600));
      const stderr = agent.stderr();
      expect(stderr).toContain(
        `broker mqtt://alice:***@127.0.0.1:${port} closed the connection before accepting it (no CONNACK)`,
      );
      expect(stderr.split('before accepting it').length - 1).toBe(1);
      expect(stderr).toContain('no broker connection yet');
      expect(stderr).not.toContain('broker connection lost');
      expect(stderr).not.toContain('S3CRET');
    } finally {
      await new Promise((r) => closer.close(r));
    }
  }, 20_000);
});

// A failing probe was published (verdict down) but never logged: the operator tailing the
// agent's log saw nothing while every gateway took the backend out.
describe('loadwise-agent CLI: health verdict changes in its log', () => {
  it('logs up → down with the reason, and down → up', async () => {
    let status = 200;
    const app = await listen((_req, res) => {
      res.statusCode = status;
      res.end();
    });
    try {
      const agent = spawnAgent([
        '--backend-id',
        'verdict-a',
        '--broker',
        broker.url,
        '--prefix',
        uniquePrefix('agent-verdict'),
        ...QUICK,
        '--probe-url',
        `${app.url}/healthz`,
      ]);
      agents.push(agent);
      await until(() => agent.stderr().includes('started:'), 8000, 'the start');
      // The host's CPU is real (other tests run beside): a verdict may be degraded
      // rather than up, which is logged as a change too.
      const healthLines = (): string[] =>
        agent
          .stderr()
          .split('\n')
          .filter((l) => l.includes(' health '));
      status = 503;
      const down = /^\S+Z warn health (up|degraded) → down: probe answered 503$/;
      await until(() => healthLines().some((l) => down.test(l)), 8000, 'the down line');
      status = 200;
      const back = /^\S+Z (info health down → up|warn health down → degraded: .*CPU.*)$/;
      await until(() => healthLines().some((l) => back.test(l)), 8000, 'the line of its return');
      agent.child.kill('SIGTERM');
      expect(await agent.exited).toBe(0);
      const lines = healthLines();
      const d = lines.findIndex((l) => down.test(l));
      expect(d).toBeGreaterThanOrEqual(0);
      expect(back.test(lines[d + 1]!)).toBe(true);
    } finally {
      await app.close();
    }
  });
});
