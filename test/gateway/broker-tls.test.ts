/**
 * The gateway against a Mosquitto that requires TLS, a client certificate and
 * a username/password (certificates made with openssl for this run): the
 * broker options reach mqtt.js, and a refused login leaves routing working.
 */
import { randomBytes } from 'node:crypto';
import { once } from 'node:events';
import { loadBalance, type BalancerEvents } from '@loadwise/gateway-plugin';
import { internals } from '@loadwise/gateway-plugin/internals';
import { createEncoder } from '@loadwise/protocol';
import { connectClient, endClient, uniquePrefix } from '../kit/brokers';
import { canRunTlsMosquitto, startTlsMosquitto, type TlsMosquitto } from '../kit/tls-mosquitto';
import { send, startBackend, type TestServer } from '../kit/http';
import { startLocalGateway, type TestGateway } from '../kit/gateway';

/** Reports are signed, as a gateway requires by default. */
const key = { keyId: 'k1', secret: randomBytes(32) };

(canRunTlsMosquitto ? describe : describe.skip)(
  'gateway over mqtts with a client certificate and a password (own Mosquitto)',
  () => {
    let broker: TlsMosquitto;
    let a: TestServer;
    let gw: TestGateway | undefined;

    beforeAll(async () => {
      a = await startBackend('a');
      broker = await startTlsMosquitto({ username: 'gw', password: 'gw-pass' });
    });

    afterEach(async () => {
      await gw?.close();
      gw = undefined;
    });

    afterAll(async () => {
      await broker?.stop();
      await a.close();
    });

    const tls = (password: string) => ({ url: broker.url, ...broker.clientOptions(password) });

    it('receives reports over TLS with a client certificate and a password', async () => {
      const prefix = uniquePrefix('gw-tls');
      gw = await startLocalGateway({
        backends: [{ id: 'a', url: a.url }],
        broker: tls('gw-pass'),
        topicPrefix: prefix,
        keys: [key],
      });
      await gw.lb.ready();
      const { url, ...clientTls } = tls('gw-pass');
      const agent = await connectClient(url, clientTls);
      try {
        const m = createEncoder({ backendId: 'a', prefix, key }).metrics({
          intervalMs: 1000,
          state: 'online',
          host: { cpuUtilization: 0.2, memoryUtilization: 0.2, memoryAvailableBytes: 1 },
          health: { verdict: 'up' },
        });
        while (!gw.lb.balancer.snapshot().backends[0]!.reportFresh) {
          await agent.publishAsync(m.topic, m.payload, { qos: 1 });
          await new Promise((r) => setTimeout(r, 20));
        }
        expect(gw.lb.balancer.brokerConnected).toBe(true);
      } finally {
        await endClient(agent);
      }
    });

    // Mosquitto resets a connection to its TLS port that speaks plain MQTT: an `error`
    // (ECONNRESET) before the close, and the no-CONNACK hint, given only for a close with no
    // error before it, was never given. A certificate it cannot verify keeps its code.
    it.each([
      [
        'the TLS port given as mqtt://',
        'mqtt:',
        /^read ECONNRESET: closed before the broker accepted it \(no CONNACK\): is it an MQTT port \(not TLS or WebSocket\)/,
      ],
      ['a certificate it cannot verify', 'mqtts:', /^[A-Z][A-Z_]+: [a-z]/],
    ])('says why it is unreachable: %s', async (_what, scheme, error) => {
      const { cert, key: clientKey, username, password } = broker.clientOptions();
      const url = `${scheme}//127.0.0.1:${broker.port}`;
      const lb = loadBalance({
        backends: [{ id: 'a', url: a.url }],
        // mqtts: no CA, so the broker's chain is the run's own CA, which Node does not trust.
        broker:
          scheme === 'mqtts:'
            ? { url, cert, key: clientKey, username, password, reconnectPeriodMs: 100 }
            : { url, username, password, reconnectPeriodMs: 100 },
        logger: { info: () => {}, warn: () => {}, error: () => {} },
        warmUp: false,
      });
      // Attached in the same tick as the constructor: before any connection attempt ends.
      const unreachable = once(internals(lb).events, 'broker-unreachable');
      try {
        const [e] = (await unreachable) as BalancerEvents['broker-unreachable'];
        expect(e.error).toMatch(error);
        if (scheme === 'mqtts:') expect(e.error).not.toContain('no CONNACK');
      } finally {
        await lb.close();
      }
    });

    it('keeps routing on local signals when the broker refuses the login', async () => {
      gw = await startLocalGateway({
        backends: [{ id: 'a', url: a.url }],
        broker: { ...tls('wrong'), reconnectPeriodMs: 100 },
      });
      await new Promise((r) => setTimeout(r, 300));
      expect(gw.lb.balancer.brokerConnected).toBe(false);
      expect((await send(`${gw.url}/`)).status).toBe(200);
    });
  },
);
