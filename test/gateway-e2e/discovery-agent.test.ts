/**
 * Discovery end to end: an agent given `advertiseUrl` registers its backend
 * (signed, retained) and the gateway routes to it; when the agent stops it
 * clears the retained registration, so a gateway that starts afterwards
 * does not add a backend that is gone. A real broker (embedded), a real
 * agent, a real backend.
 */
import { createAgent, type Agent } from '@loadwise/health-agent';
import { topicFor } from '@loadwise/protocol';
import { connectClient, endClient, uniquePrefix } from '../kit/brokers';
import { send, startBackend, type TestServer } from '../kit/http';
import { startLocalGateway, type TestGateway } from '../kit/gateway';
import { eventually } from '../kit/fleet';

jest.setTimeout(30_000);

const key = { keyId: 'k1', secret: Buffer.alloc(32, 7) };

describe('an agent with advertiseUrl', () => {
  let backend: TestServer;
  let gw: TestGateway | undefined;
  let agent: Agent | undefined;
  beforeAll(async () => {
    backend = await startBackend('adv');
  });
  afterEach(async () => {
    await agent?.stop({ graceMs: 0 });
    agent = undefined;
    await gw?.close();
    gw = undefined;
  });
  afterAll(() => backend.close());

  it('is added by a gateway with discovery and served; stopping clears its registration', async () => {
    const prefix = uniquePrefix('adv');
    gw = await startLocalGateway({
      backends: [],
      broker: { embedded: true },
      topicPrefix: prefix,
      keys: [key],
      discovery: { allowedRanges: ['127.0.0.0/8'], allowedPorts: [backend.port] },
    });
    await gw.lb.ready();
    const brokerUrl = gw.lb.balancer.brokerUrl!;
    agent = createAgent({
      backendId: 'adv-1',
      broker: { url: brokerUrl },
      prefix,
      signingKey: key,
      advertiseUrl: backend.url,
      intervalMs: 200,
      cgroup: false,
    });
    await agent.start();
    const g = gw;
    await eventually(
      () => g.lb.balancer.snapshot().backends.some((b) => b.id === 'adv-1'),
      10_000,
      'the advertised backend added',
    );
    expect(g.backend('adv-1')).toMatchObject({ origin: 'discovery', url: `${backend.url}/` });
    const r = await send(`${g.url}/`);
    expect([r.status, r.json<{ id: string }>().id]).toEqual([200, 'adv']);

    await agent.stop({ graceMs: 0 });
    agent = undefined;
    // A subscriber that arrives now gets no retained registration.
    const client = await connectClient(brokerUrl);
    const retained: string[] = [];
    client.on('message', (_topic, payload, packet) => {
      if (packet.retain && payload.length > 0) retained.push(String(payload));
    });
    await client.subscribeAsync(topicFor(prefix, 'adv-1', 'register'), { qos: 1 });
    // The broker sends retained messages right after the SUBACK; a status round trip
    // on another topic is in order behind them.
    const marker = `${prefix}/marker`;
    const seen = new Promise<void>((resolve) =>
      client.on('message', (topic) => topic === marker && resolve()),
    );
    await client.subscribeAsync(marker, { qos: 1 });
    await client.publishAsync(marker, 'x', { qos: 1 });
    await seen;
    await endClient(client);
    expect(retained).toEqual([]);
  });

  it('refuses advertiseUrl without a signing key, and a URL with credentials', () => {
    expect(() => createAgent({ backendId: 'a', advertiseUrl: 'http://10.0.0.1:80' })).toThrow(
      /LW_AGENT_INVALID_OPTION: advertiseUrl: needs signingKey/,
    );
    expect(() =>
      createAgent({ backendId: 'a', signingKey: key, advertiseUrl: 'http://u:p@10.0.0.1/' }),
    ).toThrow(/advertiseUrl: must not carry credentials/);
    expect(() =>
      createAgent({ backendId: 'a', signingKey: key, advertiseUrl: 'ftp://10.0.0.1/' }),
    ).toThrow(/advertiseUrl: must be an http\(s\) URL/);
  });
});
