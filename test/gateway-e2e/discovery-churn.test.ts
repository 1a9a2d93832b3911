/**
 * Discovery through the churn of a real fleet: pods rescheduled with stable ids and new
 * addresses (a StatefulSet), rolling deploys with new ids, pods that crash. A real broker
 * (embedded), real agents (the CLI as a child process where the Last Will matters, the
 * agent library elsewhere), real backends on port 0.
 */
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { createAgent, type Agent } from '@loadwise/health-agent';
import { createEncoder, type SigningKey } from '@loadwise/protocol';
import { spawnAgent, type AgentProcess } from '../kit/agent-cli';
import { connectClient, endClient, uniquePrefix } from '../kit/brokers';
import { eventually } from '../kit/fleet';
import { internals } from '@loadwise/gateway-plugin/internals';
import { startGateway, startLocalGateway, type TestGateway } from '../kit/gateway';
import { send, startBackend, type TestServer } from '../kit/http';
import type { MqttClient } from 'mqtt';

jest.setTimeout(30_000);

const key: SigningKey = { keyId: 'k1', secret: Buffer.alloc(32, 7) };
const keyFile = path.join(mkdtempSync(path.join(tmpdir(), 'lw-churn-')), 'keys.txt');
writeFileSync(keyFile, `k1 ${key.secret.toString('base64')}\n`);

let gw: TestGateway | undefined;
const servers: TestServer[] = [];
const processes: AgentProcess[] = [];
const agents: Agent[] = [];
const clients: MqttClient[] = [];

afterEach(async () => {
  for (const p of processes.splice(0)) await p.kill();
  for (const a of agents.splice(0)) await a.stop({ graceMs: 0 });
  for (const c of clients.splice(0)) await endClient(c, true);
  await gw?.close();
  gw = undefined;
  for (const s of servers.splice(0)) await s.close();
});

async function backend(id: string): Promise<TestServer> {
  const s = await startBackend(id);
  servers.push(s);
  return s;
}

/** The agent CLI advertising `url` for backend `id`: a process that can be SIGKILLed. */
function agentProcess(id: string, url: string, brokerUrl: string, prefix: string): AgentProcess {
  const p = spawnAgent([
    '--backend-id',
    id,
    '--broker',
    brokerUrl,
    '--prefix',
    prefix,
    '--key-file',
    keyFile,
    '--advertise-url',
    url,
    '--interval-ms',
    '200',
  ]);
  processes.push(p);
  return p;
}

/** The agent library advertising `url` for backend `id`, started; stopped after the test. */
async function libraryAgent(
  id: string,
  url: string,
  brokerUrl: string,
  prefix: string,
): Promise<Agent> {
  const a = createAgent({
    backendId: id,
    broker: { url: brokerUrl },
    prefix,
    signingKey: key,
    advertiseUrl: url,
    intervalMs: 200,
    cgroup: false,
  });
  agents.push(a);
  await a.start();
  return a;
}

/** The events the gateway has emitted about `id` of kind `name`. */
function eventsOf(g: TestGateway, name: string, id: string): Record<string, unknown>[] {
  return g.events
    .filter((e) => e.name === name && (e.data['id'] ?? e.data['backendId']) === id)
    .map((e) => e.data);
}

describe('a backend id that comes back at a new address (StatefulSet pod rescheduled)', () => {
  it('is readmitted at the new address when a newer agent run registers it, after a SIGKILL', async () => {
    const prefix = uniquePrefix('churn-move');
    gw = await startLocalGateway({
      backends: [],
      broker: { embedded: true },
      topicPrefix: prefix,
      keys: [key],
      discovery: { allowedRanges: ['127.0.0.0/8'] },
    });
    const g = gw;
    await g.lb.ready();
    const brokerUrl = g.lb.balancer.brokerUrl!;
    const oldServer = await backend('old');
    const oldAgent = agentProcess('web-0', oldServer.url, brokerUrl, prefix);
    await eventually(() => g.snapshot().backends.some((b) => b.id === 'web-0'), 10_000, 'added');
    expect((await send(`${g.url}/`)).json<{ id: string }>().id).toBe('old');

    // The pod dies whole: agent SIGKILLed (the broker publishes its Last Will), server gone.
    await oldAgent.kill();
    await oldServer.close();
    servers.splice(servers.indexOf(oldServer), 1);
    await eventually(
      () => internals(g.lb).registry.get('web-0')?.agentLost === true,
      10_000,
      'the Last Will applied',
    );

    // Rescheduled: same id, a new agent run, a new port.
    const newServer = await backend('new');
    agentProcess('web-0', newServer.url, brokerUrl, prefix);
    // The new run's registration has been judged: admitted at the new address, or refused.
    await eventually(
      () =>
        eventsOf(g, 'backend-added', 'web-0').length > 1 ||
        g.events.some(
          (e) =>
            e.name === 'invalid-message' &&
            e.data['code'] === 'LW_GW_REGISTRATION_REJECTED' &&
            e.data['backendId'] === 'web-0',
        ),
      10_000,
      'the new run registered',
    );
    expect(g.backend('web-0').url).toBe(`${newServer.url}/`);
    expect(eventsOf(g, 'backend-removed', 'web-0')).toEqual([
      expect.objectContaining({ url: `${oldServer.url}/`, reason: 'moved' }),
    ]);
    for (let i = 0; i < 5; i++) {
      const r = await send(`${g.url}/`);
      expect([r.status, r.json<{ id: string }>().id]).toEqual([200, 'new']);
    }
  });
});

describe('a rolling deploy with new ids each generation', () => {
  it('gives the slots of agents that stopped (signed offline) to the next generation', async () => {
    const prefix = uniquePrefix('churn-roll');
    // Fleet of 2, room for 4: the third generation found every slot taken by the
    // departed first two.
    gw = await startLocalGateway({
      backends: [],
      broker: { embedded: true },
      topicPrefix: prefix,
      keys: [key],
      discovery: { allowedRanges: ['127.0.0.0/8'], maxBackends: 4 },
    });
    const g = gw;
    await g.lb.ready();
    const brokerUrl = g.lb.balancer.brokerUrl!;
    for (let gen = 1; gen <= 3; gen++) {
      const ids = [`g${gen}-a`, `g${gen}-b`];
      const genAgents: Agent[] = [];
      for (const id of ids) {
        const s = await backend(id);
        genAgents.push(await libraryAgent(id, s.url, brokerUrl, prefix));
      }
      // Each registration judged: added, or refused.
      await eventually(
        () =>
          ids.every(
            (id) =>
              eventsOf(g, 'backend-added', id).length > 0 ||
              g.events.some(
                (e) =>
                  e.name === 'invalid-message' &&
                  e.data['code'] === 'LW_GW_REGISTRATION_REJECTED' &&
                  e.data['backendId'] === id,
              ),
          ),
        10_000,
        `generation ${gen} registered`,
      );
      // The generation before is out of rotation (offline), kept until its slot is needed.
      expect(
        internals(g.lb)
          .registry.eligible.map((b) => b.id)
          .sort(),
      ).toEqual(ids);
      for (let i = 0; i < 6; i++) {
        const r = await send(`${g.url}/`);
        expect(r.status).toBe(200);
        expect(ids).toContain(r.json<{ id: string }>().id);
      }
      // The generation stops cleanly: signed offline, registration cleared.
      for (const a of genAgents) {
        await a.stop({ graceMs: 0 });
        agents.splice(agents.indexOf(a), 1);
      }
      // Their signed offline has reached the gateway (or the backend is gone already).
      await eventually(
        () => ids.every((id) => internals(g.lb).registry.get(id)?.agentState !== 'online'),
        10_000,
        `generation ${gen} offline`,
      );
    }
    // The third generation took the first one's slots (it was refused until the leases
    // ended, 10 minutes); the second's entries are still there, out of rotation.
    for (const id of ['g1-a', 'g1-b']) {
      expect(eventsOf(g, 'backend-removed', id)).toEqual([
        expect.objectContaining({ reason: 'evicted' }),
      ]);
    }
    expect(
      g
        .snapshot()
        .backends.map((b) => b.id)
        .sort(),
    ).toEqual(['g2-a', 'g2-b', 'g3-a', 'g3-b']);
    expect(internals(g.lb).registry.eligible).toEqual([]);
  });
});

describe('crashed discovered backends', () => {
  it('neither push the gateway into panic nor get its traffic', async () => {
    const prefix = uniquePrefix('churn-crash');
    gw = await startGateway({
      backends: [],
      broker: { embedded: true },
      topicPrefix: prefix,
      keys: [key],
      discovery: { allowedRanges: ['127.0.0.0/8'] },
      healthCheck: { path: '/health', intervalMs: 200, unhealthyThreshold: 1 },
    });
    const g = gw;
    const brokerUrl = g.lb.balancer.brokerUrl!;
    // Two live pods, with agents.
    for (const id of ['live-1', 'live-2']) {
      const s = await backend(id);
      await libraryAgent(id, s.url, brokerUrl, prefix);
    }
    // Eight pods that crash whole: each an agent's MQTT session with its signed Last Will,
    // registering a server that then goes away; the sessions break without DISCONNECT.
    const crashed = Array.from({ length: 8 }, (_, i) => `dead-${i}`);
    const sessions: MqttClient[] = [];
    const doomed: TestServer[] = [];
    for (const id of crashed) {
      const s = await startBackend(id);
      const enc = createEncoder({ backendId: id, prefix, key });
      const will = enc.status('offline', { will: true, reason: 'agent connection lost' });
      const c = await connectClient(brokerUrl, {
        will: { topic: will.topic, payload: Buffer.from(will.payload), qos: 1, retain: true },
      });
      clients.push(c);
      sessions.push(c);
      const reg = enc.registration(s.url);
      await c.publishAsync(reg.topic, reg.payload, { qos: 1, retain: true });
      doomed.push(s);
    }
    await eventually(() => g.snapshot().backends.length === 10, 10_000, 'ten registered');
    // The crash: the sessions break (the broker publishes each Last Will), then the
    // servers are gone (the checks fail). In this order the gateway passes through no
    // state where a crashed backend fails checks while its agent still looks alive.
    for (const c of sessions) c.stream.destroy();
    await eventually(
      () => crashed.every((id) => internals(g.lb).registry.get(id)?.agentLost === true),
      10_000,
      'every Last Will applied',
    );
    for (const s of doomed) await s.close();
    await eventually(
      () =>
        crashed.every((id) => {
          const b = internals(g.lb).registry.get(id);
          return b?.agentLost === true && b.checkDown;
        }),
      10_000,
      () => `crashed down and their agents lost (${JSON.stringify(g.snapshot().backends)})`,
    );
    expect(internals(g.lb).registry.panic).toBe(false);
    expect(g.events.filter((e) => e.name === 'panic' && e.data['panic'] === true)).toEqual([]);
    expect(
      internals(g.lb)
        .registry.eligible.map((b) => b.id)
        .sort()
        .join(),
    ).toBe('live-1,live-2');
    for (let i = 0; i < 40; i++) expect((await send(`${g.url}/`)).status).toBe(200);
  });
});
