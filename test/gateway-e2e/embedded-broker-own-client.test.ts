/**
 * The gateway's own connection to its embedded broker takes no place of the listener: a
 * local process holding every place of loopback's address (or of the listener) kept the
 * gateway from its own broker once it had to reconnect (a review: 255 connections from
 * 127.0.0.1 and a blip on the gateway's connection, 0 reconnects in 5 s).
 */
import { connect as netConnect, type Socket } from 'node:net';
import type { MqttClient } from 'mqtt';
import { uniquePrefix } from '../kit/brokers';
import { eventually } from '../kit/fleet';
import { startGateway, type TestGateway } from '../kit/gateway';

jest.setTimeout(30_000);

let gw: TestGateway | undefined;
const sockets: Socket[] = [];
afterEach(async () => {
  for (const s of sockets.splice(0)) s.destroy();
  await gw?.close();
});

it('reconnects to its own broker while one address holds every place it may', async () => {
  gw = await startGateway({
    backends: [{ id: 'a', url: 'http://127.0.0.1:9' }],
    broker: { embedded: true, maxConnectionsPerAddress: 3 },
    topicPrefix: uniquePrefix('own-client'),
    healthCheck: false,
  });
  const url = new URL(gw.lb.balancer.brokerUrl!);
  expect(gw.lb.balancer.brokerConnected).toBe(true);
  // Every place of 127.0.0.1 taken by idle connections.
  for (let i = 0; i < 3; i++) {
    const s = netConnect(Number(url.port), '127.0.0.1');
    s.on('error', () => undefined);
    sockets.push(s);
    await new Promise((r) => s.once('connect', r));
  }
  // A blip on the gateway's own connection.
  const source = (gw.lb.balancer as unknown as { source: { client: MqttClient } }).source;
  (source.client as unknown as { stream: { destroy(): void } }).stream.destroy();
  await eventually(() => gw!.lb.balancer.brokerConnected === false, 5_000, 'the blip seen');
  await eventually(() => gw!.lb.balancer.brokerConnected === true, 10_000, 'connected again');
  // The address is still full: the gateway took none of its places.
  const fourth = netConnect(Number(url.port), '127.0.0.1');
  fourth.on('error', () => undefined);
  sockets.push(fourth);
  await new Promise((r) => fourth.once('close', r));
});
