/**
 * A gateway (re)started after a discovered pod crashed: the broker holds the pod's retained
 * registration and, on its status topic, its Last Will. It may deliver the will first (the
 * status topic was the agent's first), and a status of an id not yet known is dropped
 * unparsed, so the crashed pod was admitted as online and counted as routable for panic
 * until its lease ended. Against each broker (the embedded aedes on a port of its own, and
 * Mosquitto when MQTT_URL is set), with real signed messages and a real Last Will.
 */
import type { MqttClient } from 'mqtt';
import { createEncoder } from '@loadwise/protocol';
import { internals } from '@loadwise/gateway-plugin/internals';
import {
  brokerTargets,
  clearRetained,
  connectClient,
  endClient,
  uniquePrefix,
} from '../kit/brokers';
import { startBackend, type TestServer } from '../kit/http';
import { startLocalGateway, type TestGateway } from '../kit/gateway';
import { eventually } from '../kit/fleet';

const key = { keyId: 'k1', secret: Buffer.alloc(32, 9) };

describe.each(brokerTargets())(
  'a gateway started after a discovered pod crashed ($name)',
  (target) => {
    let crashedServer: TestServer;
    let aliveServer: TestServer;
    beforeAll(async () => {
      crashedServer = await startBackend('crashed');
      aliveServer = await startBackend('alive');
    });
    afterAll(async () => {
      await crashedServer.close();
      await aliveServer.close();
    });

    it("reads the pod's retained Last Will even when the broker sends it before the registration", async () => {
      const broker = await target.start();
      const prefix = uniquePrefix('will');
      const clients: MqttClient[] = [];
      let gw: TestGateway | undefined;
      const topics: string[] = [];
      try {
        // Two agents as they publish on connect: the retained status first, then the retained
        // registration. The first one's connection dies: the broker publishes its will.
        const agent = async (id: string, url: string) => {
          const enc = createEncoder({ backendId: id, prefix, key });
          const will = enc.status('offline', { will: true, reason: 'agent connection lost' });
          const client = await connectClient(broker.url, {
            clientId: `${id}-${Date.now().toString(36)}`,
            will: { topic: will.topic, payload: Buffer.from(will.payload), qos: 1, retain: true },
          });
          clients.push(client);
          for (const m of [enc.status('online'), enc.registration(url)]) {
            topics.push(m.topic);
            await client.publishAsync(m.topic, m.payload, { qos: 1, retain: true });
          }
          return { client, willTopic: will.topic };
        };
        const crashed = await agent('crashed', crashedServer.url);
        await agent('alive', aliveServer.url);
        const watcher = await connectClient(broker.url);
        clients.push(watcher);
        const willFired = new Promise<void>((resolve) =>
          watcher.on('message', (_t, p: Buffer) => {
            if (p.toString().includes('"will":true')) resolve();
          }),
        );
        await watcher.subscribeAsync(crashed.willTopic, { qos: 1 });
        crashed.client.stream.destroy(); // no DISCONNECT: the broker fires the will
        await willFired;

        gw = await startLocalGateway({
          backends: [],
          broker: broker.url,
          topicPrefix: prefix,
          keys: [key],
          discovery: {
            allowedRanges: ['127.0.0.0/8'],
            allowedPorts: [crashedServer.port, aliveServer.port],
          },
        });
        const dropped: string[] = [];
        gw.lb.balancer.on('invalid-message', (e) => dropped.push(`${e.code} ${e.backendId}`));
        await gw.lb.ready();
        const lb = internals(gw.lb);
        await eventually(() => lb.registry.get('crashed') !== undefined, 5_000);
        await eventually(
          () => lb.registry.get('crashed')?.agentLost === true,
          5_000,
          () => `the crashed pod's agent marked lost (drops: ${dropped.join(', ')})`,
        );
        expect(lb.registry.get('alive')?.agentLost).toBe(false);
        expect(lb.registry.backends.size).toBe(2);
        // Asked for once: the copies of what it had seen are quiet, never a replay alarm, and
        // no message came twice on two subscriptions.
        expect(dropped.filter((d) => d.startsWith('LW_PROTO_REPLAY'))).toEqual([]);
      } finally {
        await gw?.close();
        const cleaner = await connectClient(broker.url);
        await clearRetained(cleaner, topics);
        await endClient(cleaner);
        for (const c of clients) await endClient(c, true);
        await broker.close();
      }
    });
  },
);
