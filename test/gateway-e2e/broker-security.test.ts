/**
 * Broker security for real, with Mosquitto instances of the test's own:
 *
 * 1. TLS, client certificates (a CA made with openssl for the run), a password
 *    file (mosquitto_passwd) and an ACL: each agent may publish only under its
 *    own backend's topics (`pattern write <prefix>/v1/backends/%u/#`), the
 *    gateway may only read. The real agent CLI and the gateway connect with
 *    them. An agent publishing under another backend's topics is refused by
 *    the broker (the gateway never sees it; an MQTT 5 client is told "Not
 *    authorized"); a certificate from another CA fails the handshake with a
 *    clear log line; a packet above `max_packet_size` gets its publisher
 *    disconnected.
 * 2. Scale-out: agents on an edge broker, the gateway on a core broker, the
 *    edge bridging the agents' topics to the core over TLS as a user that may
 *    write only there.
 */
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { connect } from 'mqtt';
import { loadBalance } from '@loadwise/gateway-plugin';
import { subscriptionFilter, type SigningKey } from '@loadwise/protocol';
import { startAgentProcess, type ManagedChild } from '../../examples/lib/processes';
import { spawnAgent } from '../kit/agent-cli';
import { connectClient, endClient, uniquePrefix } from '../kit/brokers';
import { eventually, startFleet, type Fleet } from '../kit/fleet';
import { runHostile } from '../kit/hostile';
import {
  canRunTlsMosquitto,
  startMosquitto,
  startTlsMosquitto,
  type PlainMosquitto,
  type TlsMosquitto,
} from '../kit/tls-mosquitto';
import { startGateway, type TestGateway } from '../kit/gateway';
import { failed, fire } from '../kit/load';
import { internals } from '@loadwise/gateway-plugin/internals';

jest.setTimeout(60_000);

const USERS = ['gw', 'a', 'b', 'bridge'].map((username) => ({
  username,
  password: `${username}-${randomBytes(6).toString('hex')}`,
}));

/** Gateways read the prefix; each agent writes only under its own id; the bridge writes all agents'. */
function acl(prefix: string): string[] {
  return [
    'user gw',
    `topic read ${prefix}/v1/backends/#`,
    'user bridge',
    `topic write ${prefix}/v1/backends/#`,
    `pattern write ${prefix}/v1/backends/%u/#`,
  ];
}

(canRunTlsMosquitto ? describe : describe.skip)('broker security (own Mosquitto)', () => {
  const key: SigningKey = { keyId: 'k1', secret: randomBytes(32) };
  const dir = mkdtempSync(path.join(tmpdir(), 'lw-brokersec-'));
  const keyFile = path.join(dir, 'keys');
  let fleet: Fleet | undefined;
  let core: TlsMosquitto | undefined;
  let edge: PlainMosquitto | undefined;
  let gw: TestGateway | undefined;
  const agents: ManagedChild[] = [];

  beforeAll(async () => {
    writeFileSync(keyFile, `k1 ${key.secret.toString('base64')}\n`, { mode: 0o600 });
  });

  afterEach(async () => {
    await gw?.close();
    gw = undefined;
    await Promise.all(agents.splice(0).map((a) => a.stop('SIGTERM')));
    await fleet?.close();
    fleet = undefined;
    await edge?.stop();
    edge = undefined;
    await core?.stop();
    core = undefined;
  });

  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  /** The real agent CLI, logged in as `user` over TLS, reporting as backend `id`. */
  function agent(broker: TlsMosquitto, prefix: string, id: string, user: string, port: number) {
    const child = startAgentProcess({
      backendId: id,
      brokerUrl: broker.url,
      prefix,
      backendPort: port,
      intervalMs: 250,
      extraArgs: [
        '--jitter-ms',
        '0',
        '--key-file',
        keyFile,
        '--tls-ca',
        broker.file('ca.pem'),
        '--tls-cert',
        broker.file(`${user}.pem`),
        '--tls-key',
        broker.file(`${user}.key`),
        '--username',
        user,
        '--password-file',
        broker.file(`${user}.password`),
      ],
    });
    agents.push(child);
    return child;
  }

  it('TLS, client certificates, passwords and an ACL: agents publish only under their own backend', async () => {
    const prefix = uniquePrefix('acl');
    core = await startTlsMosquitto({
      users: USERS,
      acl: acl(prefix),
      config: ['max_packet_size 65536'],
    });
    const broker = core;
    fleet = await startFleet({
      backends: ['a', 'b'].map((id) => ({ id, slots: 4, serviceMs: 5 })),
    });
    for (const b of fleet.backends) agent(broker, prefix, b.id, b.id, Number(new URL(b.url).port));
    gw = await startGateway({
      backends: fleet.backendConfig(),
      broker: { url: broker.url, ...broker.clientOptionsFor('gw') },
      topicPrefix: prefix,
      keys: [key],
      healthCheck: false,
    });
    const g = gw;
    await eventually(() => g.snapshot().backends.every((b) => b.reportFresh), 15_000, 'fresh');

    // A subscriber with the gateway's rights sees what any gateway would.
    const watcher = await connectClient(broker.url, broker.clientOptionsFor('gw'));
    const epochsOfA = new Set<number>();
    watcher.on('message', (topic, payload) => {
      if (!topic.startsWith(`${prefix}/v1/backends/a/`) || payload.length === 0) return;
      const json = payload.toString().split('\n')[0]!;
      epochsOfA.add((JSON.parse(json) as { epochMs: number }).epochMs);
    });
    await watcher.subscribeAsync(subscriptionFilter(prefix), { qos: 1 });
    await eventually(() => epochsOfA.size === 1, 5_000, "a's reports seen");
    const genuineEpoch = [...epochsOfA][0]!;
    const from = g.events.length;

    // b's agent (b's certificate and password) configured to report as backend a.
    const liar = agent(broker, prefix, 'a', 'b', Number(new URL(fleet.get('a').url).port));
    // An MQTT 5 client with b's credentials is told why.
    const client = connect(broker.url, {
      ...broker.clientOptionsFor('b'),
      protocolVersion: 5,
      reconnectPeriod: 0,
    });
    await new Promise((r) => client.once('connect', r));
    await expect(
      client.publishAsync(`${prefix}/v1/backends/a/status`, 'x', { qos: 1 }),
    ).rejects.toThrow(/Not authorized/);
    // Under its own backend it may (a topic no gateway subscribes to, so nothing to drop).
    await client.publishAsync(`${prefix}/v1/backends/b/own/scratch`, 'x', { qos: 1 });
    await endClient(client);
    await eventually(() => /started/.test(liar.stderrTail()), 10_000, 'the liar runs');
    // A few of its intervals: nothing of it reaches anyone reading the topics.
    const reports = (): number => g.snapshot().backends[0]!.reportAgeMs ?? Infinity;
    await new Promise((r) => setTimeout(r, 1500));
    expect([...epochsOfA]).toEqual([genuineEpoch]);
    expect(g.events.slice(from).filter((e) => e.name === 'invalid-message')).toEqual([]);
    // a's genuine agent keeps reporting (waited for: one stalled instant could read an old age).
    await eventually(() => reports() < 1000, 5_000, "a's genuine reports keep arriving");

    // A certificate from a CA the broker does not trust: the handshake fails, the agent says so.
    const rogue = spawnAgent([
      '--backend-id',
      'b',
      '--broker',
      broker.url,
      '--prefix',
      prefix,
      '--tls-ca',
      broker.file('ca.pem'),
      '--tls-cert',
      broker.file('rogue-b.pem'),
      '--tls-key',
      broker.file('rogue-b.key'),
      '--username',
      'b',
      '--password-file',
      broker.file('b.password'),
      '--reconnect-ms',
      '300',
      '--no-cgroup',
    ]);
    try {
      await eventually(() => /unknown ca/i.test(rogue.stderr()), 10_000, 'TLS refusal logged');
      expect(rogue.stderr()).toMatch(/warn broker: .*tlsv1 alert unknown ca/);
      expect(rogue.child.exitCode).toBeNull(); // a daemon keeps trying
    } finally {
      await rogue.kill();
    }

    // A gateway with such a certificate never connects: ready() rejects with a coded
    // error, one warn line and a broker-unreachable event name the refused handshake,
    // and it routes on its own signals meanwhile.
    const warnings: string[] = [];
    const rogueLb = loadBalance({
      backends: fleet.backendConfig(),
      broker: { url: broker.url, ...broker.clientOptionsFor('gw', { rogue: true }) },
      topicPrefix: prefix,
      keys: [key],
      healthCheck: false,
      logger: {
        info: () => {},
        warn: (...args: unknown[]) => warnings.push(args.map((a) => JSON.stringify(a)).join(' ')),
        error: (...args: unknown[]) => warnings.push(args.map((a) => JSON.stringify(a)).join(' ')),
      },
    });
    const unreachable: unknown[] = [];
    internals(rogueLb).events.on('broker-unreachable', (e: unknown) => unreachable.push(e));
    try {
      await expect(rogueLb.ready({ timeoutMs: 3_000, requireBroker: true })).rejects.toMatchObject({
        code: 'LW_GW_BROKER_UNREACHABLE',
      });
      console.log(`rogue gateway: ${JSON.stringify(unreachable)} ${warnings.join(' | ')}`);
      expect(warnings.join('\n')).toMatch(/ERR_SSL_TLSV1_ALERT_UNKNOWN_CA: tlsv1 alert unknown ca/);
      expect(unreachable.length).toBe(1);
      expect(rogueLb.balancer.brokerConnected).toBe(false);
      expect(rogueLb.balancer.snapshot().backends.map((b) => b.state)).toEqual([
        'healthy',
        'healthy',
      ]);
    } finally {
      await rogueLb.close();
    }

    // max_packet_size: a 20 MB publish gets its publisher disconnected by the broker.
    const big = await runHostile({
      brokerUrl: broker.url,
      mode: 'big',
      topics: [`${prefix}/v1/backends/b/metrics`],
      bytes: 20 * 1024 * 1024,
      mqttOptions: {
        ...Object.fromEntries(
          Object.entries(broker.clientOptionsFor('b')).map(([k, v]) => [
            k,
            Buffer.isBuffer(v) ? v.toString() : v,
          ]),
        ),
      },
    });
    expect(big.closedByBroker).toBe(1);
    await endClient(watcher);

    // Routing was never disturbed.
    const result = await fire({ url: `${g.url}/work`, total: 100, concurrency: 4 });
    expect(failed(result)).toBe(0);
  });

  it('scale-out: agents on an edge broker, the gateway on a core broker, bridged over TLS', async () => {
    const prefix = uniquePrefix('bridge');
    core = await startTlsMosquitto({ users: USERS, acl: acl(prefix) });
    const c = core;
    const bridge = c.clientOptionsFor('bridge');
    edge = await startMosquitto([
      'connection core',
      `address 127.0.0.1:${c.port}`,
      `bridge_cafile ${c.file('ca.pem')}`,
      `bridge_certfile ${c.file('bridge.pem')}`,
      `bridge_keyfile ${c.file('bridge.key')}`,
      `remote_username ${bridge.username}`,
      `remote_password ${bridge.password}`,
      `remote_clientid lw-bridge-${randomBytes(4).toString('hex')}`,
      'cleansession true',
      // Only the agents' topics leave the edge, and nothing comes back.
      `topic ${prefix}/v1/backends/# out 1`,
    ]);
    fleet = await startFleet({
      brokerUrl: edge.url,
      prefix,
      backends: ['a', 'b', 'c'].map((id) => ({ id, slots: 4, serviceMs: 5 })),
    });
    gw = await startGateway({
      backends: fleet.backendConfig(),
      broker: { url: c.url, ...c.clientOptionsFor('gw') },
      topicPrefix: prefix,
      keys: fleet.keys,
      healthCheck: false,
    });
    const g = gw;
    await eventually(
      () => g.snapshot().backends.every((b) => b.reportFresh),
      15_000,
      'reports through the bridge',
    );
    const result = await fire({ url: `${g.url}/work`, total: 150, concurrency: 6 });
    expect(failed(result)).toBe(0);
    expect([...result.servedBy.keys()].sort()).toEqual(['a', 'b', 'c']);
    expect(g.events.filter((e) => e.name === 'invalid-message')).toEqual([]);
  });
});
