import { randomBytes } from 'node:crypto';
import { connect, type IClientOptions, type MqttClient } from 'mqtt';
import type { EncodedMessage } from '@loadwise/protocol';

export interface BrokerOptions {
  /** mqtt://, mqtts://, ws:// or wss:// URL of the broker. */
  url: string;
  /** Must be unique per agent: a broker disconnects the older of two clients with one id [MQTT-3.1.4-2]. */
  clientId?: string;
  username?: string;
  password?: string;
  /** PEM contents of the CA bundle to trust (mqtts). */
  ca?: string | Buffer;
  /** PEM client certificate and key for mutual TLS. */
  cert?: string | Buffer;
  key?: string | Buffer;
  /** Default true; false only for test brokers with self-signed certificates. */
  rejectUnauthorized?: boolean;
  /** Wait between reconnect attempts, ms (default 1000). */
  reconnectPeriodMs?: number;
  connectTimeoutMs?: number;
  keepaliveS?: number;
}

export const DEFAULT_RECONNECT_PERIOD_MS = 1000;
export const DEFAULT_CONNECT_TIMEOUT_MS = 5000;
/** Short keepalive: the Last Will fires after 1.5 × keepalive of silence [MQTT-3.1.2-24]. */
export const DEFAULT_KEEPALIVE_S = 10;

/** The longest default client id: 64 characters, which every broker accepts. */
const MAX_DEFAULT_CLIENT_ID = 64;

/**
 * `lw-agent-<backend id>-<8 random hex>`, at most 64 characters: the backend id
 * is shortened, never the random part. Cut at the end (as it was), an id of 54
 * characters or more lost the whole suffix, so two agents whose backend ids
 * share their first 55 characters (`...-instance-1`, `...-instance-2`) had
 * one client id, and the broker disconnected each in turn when the other
 * connected [MQTT-3.1.4-2]: both reconnected every second, and half their
 * reports were lost.
 */
export function defaultClientId(backendId: string): string {
  const suffix = `-${randomBytes(4).toString('hex')}`;
  const room = MAX_DEFAULT_CLIENT_ID - 'lw-agent-'.length - suffix.length;
  return `lw-agent-${backendId.slice(0, room)}${suffix}`;
}

/**
 * The Last Will as mqtt.js takes it: the retained `offline` status at QoS 1, published
 * by the broker if the agent vanishes without a DISCONNECT [MQTT-3.1.2-8].
 */
export function lastWillOption(will: EncodedMessage): NonNullable<IClientOptions['will']> {
  return { topic: will.topic, payload: Buffer.from(will.payload), qos: 1, retain: true };
}

export function mqttClientOptions(
  b: BrokerOptions,
  clientId: string,
  will: EncodedMessage,
): IClientOptions {
  const o: IClientOptions = {
    clientId,
    clean: true,
    keepalive: b.keepaliveS ?? DEFAULT_KEEPALIVE_S,
    reconnectPeriod: b.reconnectPeriodMs ?? DEFAULT_RECONNECT_PERIOD_MS,
    connectTimeout: b.connectTimeoutMs ?? DEFAULT_CONNECT_TIMEOUT_MS,
    // mqtt.js stops reconnecting after one refused CONNACK ("Not authorized" while a
    // broker's password file or auth plugin is being rolled out): the agent stayed up,
    // published nothing, and its supervisor saw nothing wrong. It retries like any outage.
    reconnectOnConnackError: true,
    // mqtt.js queues QoS 0 publishes made while offline and flushes them on
    // reconnect (queueQoSZero defaults to true). A metric is only worth its
    // freshness: drop it rather than deliver it late.
    queueQoSZero: false,
    will: lastWillOption(will),
  };
  if (b.username !== undefined) o.username = b.username;
  if (b.password !== undefined) o.password = b.password;
  if (b.ca !== undefined) o.ca = b.ca;
  if (b.cert !== undefined) o.cert = b.cert;
  if (b.key !== undefined) o.key = b.key;
  if (b.rejectUnauthorized !== undefined) o.rejectUnauthorized = b.rejectUnauthorized;
  return o;
}

export function connectBroker(
  b: BrokerOptions,
  clientId: string,
  will: EncodedMessage,
): MqttClient {
  return connect(b.url, mqttClientOptions(b, clientId, will));
}
