/**
 * The agent's broker errors against a real Mosquitto TLS listener, said as the gateway says
 * them: a certificate it cannot verify with its code (the agent logged "self-signed
 * certificate in certificate chain", the gateway "SELF_SIGNED_CERT_IN_CHAIN: ..."), and
 * the TLS port given as mqtt:// with the no-CONNACK hint. Mosquitto resets that connection
 * (an `error`, ECONNRESET, before the close), and the hint was given only for a close with
 * no error before it: never there.
 */
import { readFileSync } from 'node:fs';
import { createAgent, type Agent } from '@loadwise/health-agent';
import { spawnAgent, type AgentProcess } from '../kit/agent-cli';
import { uniquePrefix } from '../kit/brokers';
import { canRunTlsMosquitto, startTlsMosquitto, type TlsMosquitto } from '../kit/tls-mosquitto';

const HINT = 'closed the connection before accepting it (no CONNACK): is it an MQTT port';
/** What Node says of a chain it cannot verify: a code, then the message. */
const CERT_LINE =
  /broker: (SELF_SIGNED_CERT_IN_CHAIN|UNABLE_TO_VERIFY_LEAF_SIGNATURE|UNABLE_TO_GET_ISSUER_CERT_LOCALLY|DEPTH_ZERO_SELF_SIGNED_CERT): [a-z]/;

async function until(check: () => boolean, ms: number, what: string): Promise<void> {
  const deadline = Date.now() + ms;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

(canRunTlsMosquitto ? describe : describe.skip)('agent: broker errors (own TLS Mosquitto)', () => {
  let broker: TlsMosquitto;
  const agents: Agent[] = [];
  const processes: AgentProcess[] = [];

  beforeAll(async () => {
    broker = await startTlsMosquitto({ username: 'agent', password: 'agent-pass' });
  });
  afterEach(async () => {
    await Promise.all(agents.splice(0).map((a) => a.stop()));
    await Promise.all(processes.splice(0).map((p) => p.kill()));
  });
  afterAll(async () => {
    await broker?.stop();
  });

  /** An agent of the library, with a 'warning' listener only: what it warns. */
  async function warnings(url: string, tls: boolean): Promise<string[]> {
    const said: string[] = [];
    const o = broker.clientOptions();
    const agent = createAgent({
      backendId: 'errs',
      prefix: uniquePrefix('agent-errs'),
      broker: {
        url,
        reconnectPeriodMs: 200,
        ...(tls ? { cert: o.cert, key: o.key, username: o.username, password: o.password } : {}),
      },
      intervalMs: 200,
      cgroup: false,
    });
    agents.push(agent);
    agent.on('warning', (m: string) => said.push(m));
    await agent.start();
    return said;
  }

  it('gives the no-CONNACK hint when the TLS port, given as mqtt://, resets the connection', async () => {
    const said = await warnings(`mqtt://127.0.0.1:${broker.port}`, false);
    await until(() => said.some((m) => m.includes(HINT)), 8000, 'the no-CONNACK hint');
    expect(said).toContain('broker: read ECONNRESET');
  });

  it('warns of a certificate it cannot verify with its code', async () => {
    // No CA given: the broker's chain is the run's own CA, which Node does not trust.
    const said = await warnings(broker.url, true);
    await until(() => said.some((m) => m.startsWith('broker: ')), 8000, 'the TLS error');
    expect(said.find((m) => m.startsWith('broker: '))).toMatch(CERT_LINE);
    expect(said.some((m) => m.includes(HINT))).toBe(false);
  });

  it('the CLI says both too', async () => {
    const reset = spawnAgent([
      '--backend-id',
      'errs-reset',
      '--prefix',
      uniquePrefix('agent-errs'),
      '--broker',
      `mqtt://127.0.0.1:${broker.port}`,
      '--reconnect-ms',
      '200',
      '--no-cgroup',
    ]);
    const cert = spawnAgent(
      [
        '--backend-id',
        'errs-cert',
        '--prefix',
        uniquePrefix('agent-errs'),
        '--broker',
        broker.url,
        '--tls-cert',
        broker.file('client.pem'),
        '--tls-key',
        broker.file('client.key'),
        '--username',
        'agent',
        '--reconnect-ms',
        '200',
        '--no-cgroup',
      ],
      { LOADWISE_PASSWORD: readFileSync(broker.file('password'), 'utf8').trim() },
    );
    processes.push(reset, cert);
    await until(() => reset.stderr().includes(HINT), 8000, 'the CLI no-CONNACK hint');
    await until(() => CERT_LINE.test(cert.stderr()), 8000, 'the CLI certificate line');
    expect(cert.stderr()).not.toContain(HINT);
  });
});
