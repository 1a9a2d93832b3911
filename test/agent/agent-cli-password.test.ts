import { startEmbeddedBroker, type EmbeddedBroker } from '@loadwise/gateway-plugin';
import { until } from '../kit/agent-http';
import { uniquePrefix } from '../kit/brokers';
import { spawnAgent, type AgentProcess } from '../kit/agent-cli';

// The agent's info line named the broker URL as given, password included
// (`connected to mqtt://alice:S3CRET-PW@...`); its log goes wherever stderr
// does. The embedded broker (aedes) takes any user name and password.
describe('loadwise-agent CLI: the broker password in its log', () => {
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

  it.each([
    ['--broker', (url: string) => ({ args: ['--broker', url], env: {} })],
    ['LOADWISE_BROKER', (url: string) => ({ args: [], env: { LOADWISE_BROKER: url } })],
  ])('shows the broker URL from %s with its password as ***', async (_, source) => {
    const url = broker.url.replace('mqtt://', 'mqtt://alice:S3CRET-PW@');
    const { args, env } = source(url);
    const agent = spawnAgent(
      [
        '--backend-id',
        'cred-a',
        '--prefix',
        uniquePrefix('agent-pw'),
        '--interval-ms',
        '200',
        '--drain-grace-ms',
        '0',
        '--no-cgroup',
        ...args,
      ],
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
