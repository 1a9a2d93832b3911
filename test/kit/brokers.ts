import { randomBytes } from 'node:crypto';
import { connect, type IClientOptions, type MqttClient } from 'mqtt';
import { startEmbeddedBroker } from '@loadwise/gateway-plugin';

/**
 * The brokers every broker test runs against: always the embedded one (aedes,
 * on a port of its own), and Mosquitto when MQTT_URL is set. CI sets MQTT_URL,
 * so those tests cannot silently skip there.
 */
export interface BrokerTarget {
  name: string;
  start(): Promise<{ url: string; close(): Promise<void> }>;
}

export function brokerTargets(): BrokerTarget[] {
  const targets: BrokerTarget[] = [{ name: 'embedded aedes', start: () => startEmbeddedBroker() }];
  const external = process.env.MQTT_URL;
  if (external) {
    targets.push({
      name: `mosquitto (${external})`,
      start: async () => ({ url: external, close: async () => {} }),
    });
  }
  return targets;
}

/** A topic prefix no other test (or earlier run: retained messages persist) uses. */
export function uniquePrefix(label = 't'): string {
  return `lwtest/${label}-${Date.now().toString(36)}-${randomBytes(4).toString('hex')}`;
}

export async function connectClient(url: string, opts: IClientOptions = {}): Promise<MqttClient> {
  const client = connect(url, { reconnectPeriod: 0, connectTimeout: 5000, ...opts });
  await new Promise<void>((resolve, reject) => {
    client.once('connect', () => resolve());
    client.once('error', reject);
  });
  return client;
}

export function endClient(client: MqttClient, force = false): Promise<void> {
  return new Promise((resolve) => client.end(force, {}, () => resolve()));
}

/** Clears retained messages a test left under its prefix (publishing empty retained payloads). */
export async function clearRetained(client: MqttClient, topics: string[]): Promise<void> {
  await Promise.all(topics.map((t) => client.publishAsync(t, '', { retain: true, qos: 1 })));
}
