import type { MqttClient } from 'mqtt';
import { subscriptionFilter, topicFor } from '@loadwise/protocol';
import {
  brokerTargets,
  clearRetained,
  connectClient,
  endClient,
  uniquePrefix,
} from '../kit/brokers';
import { until } from '../kit/agent-http';
import { inbox, metricsOf, spawnAgent, type AgentProcess } from '../kit/agent-cli';

// `loadwise-agent ... 2>&1 | head -n 3`: once `head` quit, the next log line
// was an uncaught `write EPIPE`, exit 1, and the agent stopped reporting.
describe.each(brokerTargets())('loadwise-agent CLI whose stderr is closed: $name', (target) => {
  let broker: Awaited<ReturnType<typeof target.start>>;
  let client: MqttClient;
  const agents: AgentProcess[] = [];
  const retainedTopics: string[] = [];

  beforeAll(async () => {
    broker = await target.start();
    client = await connectClient(broker.url);
  });
  afterEach(async () => {
    await Promise.all(agents.splice(0).map((a) => a.kill()));
    if (retainedTopics.length > 0) await clearRetained(client, retainedTopics.splice(0));
  });
  afterAll(async () => {
    await endClient(client, true);
    await broker.close();
  });

  it('keeps publishing when the reader of its stderr goes away, and exits 0 on SIGTERM', async () => {
    const prefix = uniquePrefix('agent-epipe');
    retainedTopics.push(topicFor(prefix, 'epipe-1', 'status'));
    const box = inbox(client, prefix);
    await client.subscribeAsync(subscriptionFilter(prefix), { qos: 1 });
    const agent = spawnAgent([
      '--backend-id',
      'epipe-1',
      '--broker',
      broker.url,
      '--prefix',
      prefix,
      '--interval-ms',
      '200',
      '--drain-grace-ms',
      '0',
      '--no-cgroup',
      // Something to warn about (a tracker nobody listens for), and a debug
      // line per sample: the agent writes to stderr every interval.
      '--tracker-url',
      'http://127.0.0.1:1/stats',
      '--log-level',
      'debug',
    ]);
    agents.push(agent);

    // Read the first line, then close the pipe, as `head -n 1` does.
    await until(() => agent.stderr().includes('\n'), 8000, 'the first log line');
    const stderr = agent.child.stderr!;
    const closed = new Promise<void>((resolve) => stderr.once('close', () => resolve()));
    stderr.destroy();
    await closed;

    const reports = (): number => box.received.filter((r) => metricsOf(r) !== undefined).length;
    const before = reports();
    // Five more samples, each logged (debug) into the closed pipe, went out.
    await until(() => reports() >= before + 5, 8000, 'five more reports after stderr closed');
    expect(agent.child.exitCode).toBeNull();

    agent.child.kill('SIGTERM');
    expect(await agent.exited).toBe(0);
  });
});
