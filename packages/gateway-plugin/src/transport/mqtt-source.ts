/**
 * The MQTT side of the gateway: connects to the broker (a URL, the user's
 * client, or an embedded aedes), subscribes to every backend's topics under
 * the prefix, and hands each delivered message to the decoder. It never
 * throws into mqtt.js: a bad message is a decode result, counted and dropped.
 *
 * Several gateways on one broker: every gateway has its own random client id
 * (a duplicate id makes the broker disconnect the older session
 * [MQTT-3.1.4-2]) and a clean session, so nothing assumes a single subscriber.
 * Broker lost: mqtt.js reconnects by itself (reconnectPeriod); routing keeps
 * the last state meanwhile. With a clean session subscriptions do not survive
 * a reconnect [MQTT-3.1.2-6], so we subscribe again on every `connect`.
 */
import { randomBytes } from 'node:crypto';
import { connect, MqttClient, type IClientOptions } from 'mqtt';
import {
  backendsTopicRoot,
  describeBrokerError,
  isBrokerHangUp,
  NO_CONNACK_HINT,
  subscriptionFilter,
} from '@loadwise/protocol';
import type { BrokerOption, BrokerUrlOptions } from '../options';
import { startEmbeddedBroker, type EmbeddedBroker } from './embedded-broker';

export interface MqttSourceHandlers {
  /** One delivered message, as is: the balancer bounds, rate-limits and decodes it (Balancer.receive). */
  onPacket(topic: string, payload: Buffer, retained: boolean): void;
  /** The embedded broker disconnected a client for an oversized packet. */
  onPacketTooLarge(packetBytes: number, remoteAddress: string | undefined): void;
  /** The embedded broker refused a client's publish, subscription or session past its bounds. */
  onBrokerRefused(reason: string, remoteAddress: string | undefined): void;
  onConnected(url: string | undefined): void;
  onLost(error: string | undefined): void;
  /** A connection attempt failed while not connected: once per outage, with the broker's URL. */
  onUnreachable(url: string | undefined, error: string): void;
}

/**
 * How long resendRetained() waits for the retained messages still arriving: the burst a
 * subscribe brings comes at once, so a quarter second without an admission ends it.
 */
const RESEND_QUIET_MS = 250;

/**
 * ready() waits this long without a retained message after the SUBACK (the burst a subscribe
 * brings comes at once, right after it), and this long at most (settleThenSubscribed).
 */
const RETAINED_SETTLE_MS = 50;
export const RETAINED_SETTLE_MAX_MS = 1_000;

/** The longest wait before subscribing again after the broker refused it. */
const MAX_SUBSCRIBE_RETRY_MS = 30_000;

/** The gateway's MQTT keepalive unless `broker.keepaliveSec` says otherwise. */
export const DEFAULT_KEEPALIVE_SEC = 10;

/** MQTT 5 CONNACK "Unsupported Protocol Version" (0x84), and 3.1.1's return code 1 [MQTT-3.1.2-2]. */
const UNSUPPORTED_PROTOCOL_CODES = new Set([1, 0x84]);

/**
 * How many open balancers hold each filter on a client they share (`broker: { client }`).
 * MQTT keeps one subscription per filter and client: the first balancer to close
 * unsubscribed it for all, and another on the same topic prefix (the new balancer of a
 * configuration reload, built before the old one closes) heard nothing more, while its
 * status still said connected, until the connection happened to drop. The filter is
 * unsubscribed when the last one closes.
 */
const sharedFilters = new WeakMap<MqttClient, Map<string, number>>();

function holdFilter(client: MqttClient, filter: string): void {
  let held = sharedFilters.get(client);
  if (!held) sharedFilters.set(client, (held = new Map()));
  held.set(filter, (held.get(filter) ?? 0) + 1);
}

/** Whether no other open balancer holds `filter` on `client` now. */
function releaseFilter(client: MqttClient, filter: string): boolean {
  const held = sharedFilters.get(client);
  const left = (held?.get(filter) ?? 1) - 1;
  if (left > 0) held!.set(filter, left);
  else held?.delete(filter);
  return left <= 0;
}

export class MqttSource {
  private client: MqttClient | undefined;
  private ownsClient = false;
  private embeddedStart: Promise<EmbeddedBroker> | undefined;
  /** The MQTT connection is up (CONNACK). */
  private connected = false;
  /**
   * The broker acknowledged the subscription on this connection: reports reach
   * this gateway. What `isConnected` (brokerConnected, the status endpoint,
   * loadwise_broker_connected) says: a connection whose subscription was
   * refused (an ACL: SUBACK 0x80/0x87) or never acknowledged delivers nothing,
   * and said "connected" while the gateway stayed deaf for good.
   */
  private subscribedNow = false;
  /** When the last retained message came (performance.now()): settleThenSubscribed. */
  private retainedAtMs = -Infinity;
  /** Counts connections, so a late SUBACK or retry of an earlier one is ignored. */
  private connection = 0;
  /** This balancer's filter was acknowledged once on its client (subscribe()). */
  private subscribedOnce = false;
  /** The next attempt to subscribe again on this connection, or the wait for a SUBACK. */
  private subscribeTimer: NodeJS.Timeout | undefined;
  /** The retained messages asked for again (resendRetained): pending, and on which connection. */
  private resendTimer: NodeJS.Timeout | undefined;
  private resentOn = 0;
  /** Wait before subscribing again after a refusal: doubles up to MAX_SUBSCRIBE_RETRY_MS. */
  private subscribeRetryMs = 0;
  private closed = false;
  private lastError: string | undefined;
  /** An attempt failed since the last connect (reported once per outage). */
  private unreachable = false;
  /**
   * A refused MQTT 5 CONNECT is being retried as 3.1.1 (onVersionRefused):
   * a negotiation, not an outage, so its error and close are not reported.
   */
  private retryingV4 = false;
  /** URL of the broker, known once started (the embedded broker picks its port). */
  url: string | undefined;
  readonly ready: Promise<void>;
  /**
   * The broker acknowledged the subscription (SUBACK) once: from then on every
   * report an agent publishes reaches this gateway, and the retained ones are
   * on their way. `ready` waits for it, not only for the connection: a report
   * published between CONNACK and SUBACK is not delivered to us.
   */
  private readonly subscribed: Promise<void>;
  private onSubscribed!: () => void;
  /** What every topic this balancer subscribes to begins with. */
  private readonly topicStart: string;

  constructor(
    private readonly broker: BrokerOption,
    private readonly prefix: string,
    private readonly handlers: MqttSourceHandlers,
    private readonly maxPacketBytes: number,
  ) {
    this.topicStart = backendsTopicRoot(prefix);
    this.subscribed = new Promise((resolve) => (this.onSubscribed = resolve));
    this.ready = this.start().then(() => this.subscribed);
    // A failed start (e.g. the embedded broker's port is taken) rejects
    // `ready` and is reported as a broker loss; it must not crash the process.
    this.ready.catch((err: unknown) => {
      if (!this.closed) this.handlers.onLost(`broker start failed: ${String(err)}`);
    });
  }

  /**
   * Connected, and the broker acknowledged the subscription (ready() may still wait up to
   * RETAINED_SETTLE_MAX_MS for the retained messages it brings).
   */
  get isConnected(): boolean {
    return this.subscribedNow;
  }

  /** The last connection error mqtt.js reported, if any. */
  get lastErrorMessage(): string | undefined {
    return this.lastError;
  }

  private async start(): Promise<void> {
    const b = this.broker;
    if (typeof b === 'object' && 'client' in b) {
      this.attach(b.client);
      if (!b.client.connected) await onceConnected(b.client);
      return;
    }
    let url: string;
    let extra: IClientOptions = {};
    // MQTT 5 unless pinned; the embedded aedes speaks 3.1.1 only and limits
    // packets itself (embedded-broker.ts). `pinned`: no fallback to 3.1.1.
    let version: 4 | 5 = 5;
    let pinned = false;
    let embedded: EmbeddedBroker | undefined;
    if (typeof b === 'string') url = b;
    else if ('embedded' in b) {
      version = 4;
      this.embeddedStart = startEmbeddedBroker({
        port: b.port ?? 0,
        host: b.host,
        maxConnections: b.maxConnections,
        maxConnectionsPerAddress: b.maxConnectionsPerAddress,
        maxPacketBytes: this.maxPacketBytes,
        onPacketTooLarge: (bytes, from) => this.handlers.onPacketTooLarge(bytes, from),
        onRefused: (reason, from) => this.handlers.onBrokerRefused(reason, from),
      });
      embedded = await this.embeddedStart;
      if (this.closed) return; // close() awaits the start and closes it
      url = embedded.url;
    } else {
      url = b.url;
      extra = tlsAndAuth(b);
      pinned = b.protocolVersion !== undefined;
      version = b.protocolVersion ?? 5;
    }
    this.url = url;
    const idPrefix =
      (typeof b === 'object' && 'clientIdPrefix' in b && b.clientIdPrefix) || 'loadwise-gw';
    const options: IClientOptions = {
      clientId: `${idPrefix}-${randomBytes(6).toString('hex')}`,
      clean: true,
      resubscribe: false,
      reconnectPeriod: 1000,
      connectTimeout: 10_000,
      // mqtt.js stops reconnecting after one refused CONNACK ("Not authorized" while a
      // broker's auth is being rolled out): the gateway routed on local signals for good.
      // It retries like any outage (a refused MQTT 5 CONNECT is retried in 3.1.1 at once,
      // onVersionRefused; its connect() clears the timer this sets).
      reconnectOnConnackError: true,
      // The agents' 10 s: a broker that stops answering without closing the connection
      // (frozen, failed over behind a NAT that forgot the flow) is noticed after 1.5 ×
      // keepalive without a PINGRESP. At 30 s the gateway said it was connected, and heard
      // nothing, for up to 45 s before it reconnected. One ping each 10 s is the cost.
      keepalive: DEFAULT_KEEPALIVE_SEC,
      ...packetLimit(version, this.maxPacketBytes),
      ...extra,
    };
    // The embedded broker's own gateway connects inside the process (embedded-broker.ts
    // connectInProcess): over loopback it took a listener place, and a local process
    // holding the places of loopback's address kept the gateway from its broker once it
    // had to reconnect (a review: 0 reconnects in 5 s).
    const inProcess = embedded;
    const client = inProcess
      ? new MqttClient(() => inProcess.connectInProcess(), { ...options, protocolVersion: 4 })
      : connect(url, options);
    this.ownsClient = true;
    if (version === 5 && !pinned) client.on('error', this.onVersionRefused);
    this.attach(client);
    await onceConnected(client);
  }

  private attach(client: MqttClient): void {
    this.client = client;
    if (!this.ownsClient) holdFilter(client, subscriptionFilter(this.prefix));
    const o = client.options;
    if (o?.hostname) this.url ??= `${o.protocol ?? 'mqtt'}://${o.hostname}:${o.port ?? 1883}`;
    client.on('connect', this.onConnect);
    client.on('close', this.onClose);
    client.on('error', this.onError);
    client.on('message', this.onMessageEvent);
    if (client.connected) this.onConnect();
  }

  private readonly onConnect = (): void => {
    if (this.closed || !this.client) return;
    this.connected = true;
    this.connection++;
    this.subscribeRetryMs = 0;
    this.subscribe();
  };

  /**
   * Subscribes on the current connection; connected in earnest (broker-connected,
   * `ready`) once the broker acknowledges it. A refusal (an ACL) or no SUBACK
   * within the connect timeout is an outage of the metrics channel: said once
   * (broker-unreachable, and by ready() at its timeout) and tried again on the
   * same connection, every reconnect period and then less often. It was said
   * once as a lost connection, never tried again, and the gateway stayed
   * deaf, reporting itself connected, until the connection happened to drop.
   */
  private subscribe(): void {
    const client = this.client;
    if (this.closed || !client || !this.connected) return;
    const connection = this.connection;
    const timeoutMs = client.options.connectTimeout ?? 10_000;
    clearTimeout(this.subscribeTimer);
    this.subscribeTimer = setTimeout(
      () => this.subscribeFailed(connection, `subscribe not acknowledged within ${timeoutMs} ms`),
      timeoutMs,
    );
    // The connection holds the process, not the wait for its SUBACK or the next attempt.
    this.subscribeTimer.unref();
    // QoS 1: a status change (draining, the Last Will) must not be lost; the
    // publisher's QoS caps delivery anyway, so metrics sent at QoS 0 stay cheap.
    // The first time, the object form with `resubscribe`, as resendRetained: on an app's
    // client that holds the filter already (another balancer of a reload), mqtt.js sent no
    // SUBSCRIBE and acknowledged at once, the broker re-sent no retained message, and this
    // balancer knew no discovered backend until each agent renewed its registration, ready().
    // Not on a reconnect: such a client subscribes again itself, and each balancer's forced
    // SUBSCRIBE as well brought every retained message once more per balancer.
    client.subscribe(
      {
        [subscriptionFilter(this.prefix)]: { qos: 1 },
        resubscribe: !this.subscribedOnce,
      } as never,
      (err: Error | null) => {
        if (this.closed || connection !== this.connection) return;
        // Refused (SUBACK 0x80), or the broker closed the connection instead (aedes does
        // when its authorizeSubscribe fails): the reason, for ready() and the log.
        if (err) return this.subscribeFailed(connection, `subscribe failed: ${err.message}`);
        if (!this.connected) return;
        clearTimeout(this.subscribeTimer);
        this.subscribeTimer = undefined;
        if (this.subscribedNow) return; // a retry's late twin
        this.subscribedNow = true;
        this.subscribedOnce = true;
        this.unreachable = false;
        this.lastError = undefined;
        this.settleThenSubscribed();
        this.handlers.onConnected(this.url);
      },
    );
  }

  /**
   * Resolves `subscribed` (and so ready()) once the retained messages the subscribe brings
   * have come: RETAINED_SETTLE_MS with none after the SUBACK, RETAINED_SETTLE_MAX_MS at
   * most. Mosquitto sends them after the SUBACK, and ready() resolved on it: a
   * discovery-only gateway with `warmUp: false`, restarted under load, answered its first
   * requests 503 LW_GW_NO_BACKEND (7-8 in a review at 200 req/s) with the registrations
   * 45 ms away, and a configured backend's retained drain came after ready too.
   */
  private settleThenSubscribed(): void {
    const started = performance.now();
    const connection = this.connection;
    const check = (): void => {
      if (this.closed) return this.onSubscribed();
      // Lost meanwhile: not ready on this connection; the next SUBACK settles again.
      if (connection !== this.connection || !this.subscribedNow) return;
      const now = performance.now();
      const quiet = now - Math.max(this.retainedAtMs, started);
      if (quiet >= RETAINED_SETTLE_MS || now - started >= RETAINED_SETTLE_MAX_MS)
        return this.onSubscribed();
      setTimeout(check, RETAINED_SETTLE_MS - quiet).unref();
    };
    setTimeout(check, RETAINED_SETTLE_MS).unref();
  }

  /**
   * Asks the broker for every retained message again, once per connection, when no call
   * has come for RESEND_QUIET_MS: the balancer calls it when a retained registration
   * admits an id. The broker may deliver an id's retained status (its Last Will: the
   * agent crashed) before its retained registration, and a status of an id not yet known
   * is dropped unparsed, so a gateway restarted after a pod crashed admitted it as online.
   * A SUBSCRIBE with the filter already subscribed replaces that subscription, re-sends the
   * retained messages that match and does not interrupt the flow [MQTT-3.8.4-3] (MQTT 5:
   * retain handling 0), with no second subscription to deliver a live message twice, as a
   * per-id filter beside the wildcard would (Mosquitto 2 sends MQTT 5 clients one copy per
   * matching subscription). What this gateway has seen comes back as copies
   * (LW_PROTO_RETAINED_SUPERSEDED, quiet, before the HMAC); the statuses of ids admitted
   * since are judged now.
   */
  resendRetained(): void {
    // `connected`, not `subscribedNow`: aedes sends the retained messages before the SUBACK
    // that resolves the subscribe.
    if (this.closed || !this.connected || this.resentOn === this.connection) return;
    const connection = this.connection;
    clearTimeout(this.resendTimer);
    this.resendTimer = setTimeout(() => {
      this.resendTimer = undefined;
      const client = this.client;
      if (this.closed || !client || connection !== this.connection || !this.connected) return;
      this.resentOn = connection;
      // The object form with `resubscribe`: a client of the app's that mqtt.js resubscribes
      // (its default) would otherwise skip a filter it holds already, and send nothing.
      client.subscribe(
        { [subscriptionFilter(this.prefix)]: { qos: 1 }, resubscribe: true } as never,
        () => {},
      );
    }, RESEND_QUIET_MS);
    this.resendTimer.unref();
  }

  private subscribeFailed(connection: number, error: string): void {
    if (this.closed || connection !== this.connection || this.subscribedNow) return;
    this.lastError = error;
    if (!this.connected) return; // reconnecting subscribes again
    if (!this.unreachable) {
      this.unreachable = true;
      this.handlers.onUnreachable(this.url, error);
    }
    const period = this.client?.options.reconnectPeriod || 1000;
    this.subscribeRetryMs = Math.min(
      MAX_SUBSCRIBE_RETRY_MS,
      this.subscribeRetryMs === 0 ? period : this.subscribeRetryMs * 2,
    );
    clearTimeout(this.subscribeTimer);
    this.subscribeTimer = setTimeout(() => {
      if (connection === this.connection) this.subscribe();
    }, this.subscribeRetryMs);
    this.subscribeTimer.unref();
  }

  private readonly onClose = (): void => {
    clearTimeout(this.subscribeTimer);
    this.subscribeTimer = undefined;
    const wasSubscribed = this.subscribedNow;
    this.subscribedNow = false;
    if (!wasSubscribed) {
      this.connected = false;
      if (this.retryingV4) return;
      // No 'error' before the close: the peer hung up without a CONNACK (not
      // an MQTT broker?) or mqtt.js's connectTimeout expired (nothing answers).
      if (!this.unreachable && !this.closed) {
        this.unreachable = true;
        this.handlers.onUnreachable(
          this.url,
          `connection closed before the broker accepted it (no CONNACK): ${NO_CONNACK_HINT}`,
        );
      }
      return;
    }
    this.connected = false;
    const error = this.lastError;
    this.lastError = undefined;
    if (!this.closed) this.handlers.onLost(error);
  };

  private readonly onError = (err: Error): void => {
    // mqtt.js emits connection errors here and keeps reconnecting; without a
    // listener they would be thrown as an unhandled 'error' event. The loss
    // itself is reported once, on 'close'.
    if (this.retryingV4) return;
    const message = describeBrokerError(err);
    this.lastError = message;
    if (!this.connected && !this.unreachable && !this.closed) {
      this.unreachable = true;
      // A reset before the CONNACK is a close too (Mosquitto's TLS port given as mqtt://
      // resets it): the hint was given only when no error came first, so never there.
      this.handlers.onUnreachable(
        this.url,
        isBrokerHangUp(err)
          ? `${message}: closed before the broker accepted it (no CONNACK): ${NO_CONNACK_HINT}`
          : message,
      );
    }
  };

  /**
   * A broker that does not speak MQTT 5 (aedes 0.51, Mosquitto 1.5) refuses
   * the CONNECT; mqtt.js then stops reconnecting (a refused CONNACK suppresses
   * it). Retry at once with 3.1.1, without the Maximum Packet Size, which
   * that protocol cannot express: such a broker must limit packets itself
   * (docs/protocol.md, "Size").
   */
  private readonly onVersionRefused = (err: Error & { code?: unknown }): void => {
    const client = this.client;
    if (this.closed || !client || client.options.protocolVersion !== 5) return;
    if (typeof err.code !== 'number' || !UNSUPPORTED_PROTOCOL_CODES.has(err.code)) return;
    client.options.protocolVersion = 4;
    delete client.options.properties;
    this.retryingV4 = true;
    client.off('error', this.onVersionRefused);
    // After the refused connection has closed: reconnecting earlier races its
    // 'close' and leaves mqtt.js with a stray reconnect timer.
    client.once('close', () =>
      setImmediate(() => {
        this.retryingV4 = false;
        if (!this.closed) client.reconnect();
      }),
    );
  };

  private readonly onMessageEvent = (
    topic: string,
    payload: Buffer,
    packet: { retain?: boolean },
  ): void => {
    if (this.closed) return;
    // A client shared with the app or with other balancers (`broker: { client }`) emits
    // every message it is subscribed to: another service's reports, the app's own topics.
    // Not this balancer's, so neither dropped as malformed nor charged to its rate limits
    // (each counted LW_PROTO_BAD_TOPIC with a warning, and enough of them used up the
    // gateway-wide message budget its own agents' reports need).
    if (!this.ownsClient && !topic.startsWith(this.topicStart)) return;
    if (packet.retain === true) this.retainedAtMs = performance.now();
    this.handlers.onPacket(topic, payload, packet.retain === true);
  };

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    const client = this.client;
    if (client) {
      client.off('connect', this.onConnect);
      client.off('close', this.onClose);
      client.off('message', this.onMessageEvent);
      client.off('error', this.onVersionRefused);
      if (this.ownsClient) {
        await new Promise<void>((resolve) => client.end(true, {}, () => resolve()));
        client.off('error', this.onError);
      } else {
        client.off('error', this.onError);
        const filter = subscriptionFilter(this.prefix);
        if (releaseFilter(client, filter) && client.connected) client.unsubscribe(filter, () => {});
      }
    }
    this.connected = false;
    this.subscribedNow = false;
    clearTimeout(this.subscribeTimer);
    clearTimeout(this.resendTimer);
    // The embedded broker may still be starting: wait for it, then close it.
    const embedded = this.embeddedStart && (await this.embeddedStart.catch(() => undefined));
    if (embedded) await embedded.close();
  }
}

/**
 * MQTT 5 lets a client state the largest packet it accepts; the broker must
 * not send it a larger one (MQTT 5.0 [MQTT-3.1.2-24]) and treats such a message as
 * delivered [MQTT-3.1.2-25], so a 100 MB publish never reaches (or queues for)
 * the gateway. mqtt.js sends it as the CONNECT property maximumPacketSize.
 */
function packetLimit(version: 4 | 5, maxPacketBytes: number): IClientOptions {
  return version === 5
    ? { protocolVersion: 5, properties: { maximumPacketSize: maxPacketBytes } }
    : { protocolVersion: 4 };
}

function tlsAndAuth(b: BrokerUrlOptions): IClientOptions {
  const o: IClientOptions = {};
  if (b.username !== undefined) o.username = b.username;
  if (b.password !== undefined)
    o.password = typeof b.password === 'string' ? b.password : b.password;
  if (b.ca !== undefined) o.ca = b.ca as IClientOptions['ca'];
  if (b.cert !== undefined) o.cert = b.cert;
  if (b.key !== undefined) o.key = b.key;
  if (b.rejectUnauthorized !== undefined) o.rejectUnauthorized = b.rejectUnauthorized;
  if (b.keepaliveSec !== undefined) o.keepalive = b.keepaliveSec;
  if (b.reconnectPeriodMs !== undefined) o.reconnectPeriod = b.reconnectPeriodMs;
  if (b.connectTimeoutMs !== undefined) o.connectTimeout = b.connectTimeoutMs;
  return o;
}

function onceConnected(client: MqttClient): Promise<void> {
  return new Promise((resolve) => {
    if (client.connected) return resolve();
    // Resolve on the first connect only: a broker that is down at start is not
    // fatal (routing works on local signals) and mqtt.js keeps retrying.
    client.once('connect', () => resolve());
  });
}
