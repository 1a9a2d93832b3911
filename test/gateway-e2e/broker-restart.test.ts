/**
 * Proof: the broker stopped and restarted under load costs no request.
 *
 * The broker is only the control plane: while it is down the gateway routes
 * on its last state and local signals, then the gateway and every agent
 * reconnect on their own. Runs on the embedded broker only: the test must
 * stop and start it (the shared Mosquitto is not ours to stop). It restarts
 * on the same port, as a restarted broker service would.
 */
import { startEmbeddedBroker, type EmbeddedBroker } from '@loadwise/gateway-plugin';
import { uniquePrefix } from '../kit/brokers';
import { eventually, startFleet, type Fleet } from '../kit/fleet';
import { startGateway, type TestGateway } from '../kit/gateway';
import { failed, startLoad } from '../kit/load';

let broker: EmbeddedBroker | undefined;
let fleet: Fleet | undefined;
let gw: TestGateway | undefined;

afterAll(async () => {
  await gw?.close();
  await fleet?.close();
  await broker?.close();
});

it('keeps serving while the broker is down, and everyone reconnects when it is back', async () => {
  broker = await startEmbeddedBroker();
  const port = broker.port;
  const prefix = uniquePrefix('broker-restart');
  fleet = await startFleet({
    brokerUrl: broker.url,
    prefix,
    backends: ['a', 'b', 'c'].map((id) => ({ id, slots: 4, serviceMs: 10 })),
    agentArgs: ['--reconnect-ms', '200'],
  });
  gw = await startGateway({
    backends: fleet.backendConfig(),
    broker: { url: broker.url, reconnectPeriodMs: 200 },
    topicPrefix: prefix,
    keys: fleet.keys,
    healthCheck: { path: '/health', intervalMs: 500 },
  });
  await eventually(
    () => gw!.snapshot().backends.every((b) => b.reportFresh),
    15_000,
    'fresh reports',
  );

  // Bounded: at most 4,000 requests, stopped as soon as everyone has reconnected.
  const load = startLoad({ url: `${gw.url}/work`, total: 4_000, concurrency: 6 });
  await eventually(() => load.result.sent >= 100, 10_000, 'load running');

  await broker.close();
  broker = undefined;
  await eventually(
    () => gw!.snapshot().brokerConnected === false,
    10_000,
    'gateway sees the broker gone',
  );
  expect(gw.events.some((e) => e.name === 'broker-lost')).toBe(true);
  // Routing goes on without the control plane.
  const sentWhileDown = load.result.sent;
  await eventually(
    () => load.result.sent >= sentWhileDown + 300,
    10_000,
    'requests while the broker is down',
  );

  // Reports received after this moment came through the restarted broker: none could
  // arrive while it was down.
  const restartedAt = Date.now();
  broker = await startEmbeddedBroker({ port });
  await eventually(() => gw!.snapshot().brokerConnected === true, 10_000, 'gateway reconnected');
  // Reports flow again: every agent reconnected too, and each backend's latest report is
  // fresh and was received after the restart. (Comparing ages with a snapshot taken at
  // reconnection instead would wait forever for an agent whose report had just arrived.)
  const receivedAt = (ageMs: number | null) => (ageMs === null ? -Infinity : Date.now() - ageMs);
  await eventually(
    () =>
      gw!
        .snapshot()
        .backends.every((b) => b.reportFresh && receivedAt(b.reportAgeMs) >= restartedAt),
    15_000,
    // Which backend is still waiting, and what the gateway knows of it (a failure explains itself).
    () =>
      `fresh reports after the restart (${JSON.stringify(
        gw!.snapshot().backends.map((b) => ({
          id: b.id,
          fresh: b.reportFresh,
          ageMs: b.reportAgeMs,
          msAfterRestart: receivedAt(b.reportAgeMs) - restartedAt,
        })),
      )}, fleet agents running: ${fleet!.backends
        .filter((b) => b.agent?.running)
        .map((b) => b.id)
        .join(',')})`,
  );

  const result = await load.stop();
  expect(result.sent).toBeGreaterThan(sentWhileDown + 300);
  expect(result.errors).toBe(0);
  expect(failed(result)).toBe(0);
  expect(gw.snapshot().backends.every((b) => b.state === 'healthy')).toBe(true);
}, 60_000);
