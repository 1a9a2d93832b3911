import cluster from 'node:cluster';
import { createServer, type AddressInfo, type Server, type Socket } from 'node:net';
import { Duplex } from 'node:stream';
import { createBroker, type AedesOptions, type AuthenticateError, type Client } from 'aedes';
import { GatewayError, invalidOption } from '../errors';
import { DEFAULTS } from '../options';
import { PacketSizeGuard, UnreadBudget } from './packet-size-guard';

/** Largest MQTT packet the embedded broker reads (a full signed report is about 1 KiB). */
export const DEFAULT_MAX_PACKET_BYTES = DEFAULTS.messageLimits.maxPacketBytes;

export interface EmbeddedBrokerOptions {
  /** TCP port; 0 (the default) lets the OS choose, so it never collides with a broker on 1883. */
  port?: number;
  host?: string;
  aedes?: AedesOptions;
  /**
   * A client announcing a larger packet is disconnected before its body is
   * read (transport/packet-size-guard.ts). Default 64 KiB.
   */
  maxPacketBytes?: number;
  /** Called for every client disconnected for an oversized packet. */
  onPacketTooLarge?: (packetBytes: number, remoteAddress: string | undefined) => void;
  /**
   * Bytes of retained messages the broker keeps in all, each counted as its
   * payload, its topic and RETAINED_OVERHEAD_BYTES (default 16 MiB; a
   * fleet's retained statuses and registrations are a few hundred bytes a
   * backend). A retained publish past it is delivered but not kept (its
   * client stays): aedes keeps every retained message in this process.
   */
  maxRetainedBytes?: number;
  /**
   * Retained messages the broker keeps in all (default 10,000; a backend has
   * two, its status and its registration). A retained publish on a new topic
   * past it is delivered but not kept (its client stays).
   */
  maxRetainedMessages?: number;
  /** Subscriptions one client may hold (default 16; a gateway holds one). Past it: SUBACK 0x80. */
  maxSubscriptionsPerClient?: number;
  /** Client connections at once (default 1024); more are refused by the listener. */
  maxConnections?: number;
  /**
   * Client connections at once from one remote address (default 256): past it a new one
   * is closed at once, so one host cannot take every place (1,023 idle connections from
   * one client kept every agent out). Agents on the gateway's own host share loopback's.
   */
  maxConnectionsPerAddress?: number;
  /**
   * Called for everything refused for one of the bounds above or below
   * (retained bytes and messages, topic length and levels, subscriptions, a
   * persistent session, QoS 2), with why, never the topic itself.
   */
  onRefused?: (reason: string, remoteAddress: string | undefined) => void;
}

/** Retained bytes kept at most by default: far above any fleet's, far below the process's memory. */
export const DEFAULT_MAX_RETAINED_BYTES = 16 * 1024 * 1024;
export const DEFAULT_MAX_CONNECTIONS = 1024;
export const DEFAULT_MAX_CONNECTIONS_PER_ADDRESS = 256;
export const DEFAULT_MAX_RETAINED_MESSAGES = 10_000;
export const DEFAULT_MAX_SUBSCRIPTIONS_PER_CLIENT = 16;

/**
 * What a retained message costs besides its topic and payload, counted against
 * `maxRetainedBytes`: aedes keeps a packet object and a map entry for each
 * (20,000 retained 1-byte messages on short topics took 0.8 KB of heap each,
 * 1.3 KB on 500-byte topics). Counting payloads alone, 1,500 1-byte messages on
 * 60 KB topics counted 1,500 bytes and raised the gateway's RSS by 165 MB.
 */
export const RETAINED_OVERHEAD_BYTES = 1024;

/**
 * Longest topic or topic filter taken, in UTF-8 bytes. Loadwise's longest is
 * 351: a 200-character prefix, a 64-character service and backend id
 * (packages/protocol/src/topics.ts). aedes keeps every subscription's filter
 * and every retained topic: 1,500 subscriptions to 60 KB filters took 91 MB.
 */
export const MAX_TOPIC_BYTES = 512;

/**
 * Most levels in a topic or topic filter. aedes's matcher (qlobber) throws past
 * 100, out of the event loop: one 204-byte publish or subscription of 102
 * levels ended the gateway's process. Each level of a subscription costs about
 * 0.2 KB more; loadwise's topics have the prefix's levels and five more.
 */
export const MAX_TOPIC_LEVELS = 32;

export interface EmbeddedBroker {
  readonly url: string;
  readonly port: number;
  /**
   * A connection to the broker inside this process, for the gateway's own client: no
   * listener place, so no one who holds every place of the listener (or of its address)
   * keeps the gateway from its own broker. Each call is a new connection.
   */
  connectInProcess(): Duplex;
  close(): Promise<void>;
}

/**
 * Why an embedded broker (`what`: the option or the function) cannot run here, or undefined.
 * In a node:cluster worker the listener is the primary's, shared by every worker: each
 * worker's broker took the connections the primary handed it, and every other worker never
 * heard that agent, its drain or its will (it kept sending to a backend its agent had
 * reported down), and nothing said so. options-validate.ts asks at construction.
 */
export function embeddedInWorkerProblem(what: string): string | undefined {
  return cluster.isWorker
    ? `${what} in a node:cluster worker: each worker would run a broker of its own on the port they share, each agent heard by one worker only; run one broker (Mosquitto, or startEmbeddedBroker() in the primary) and give the workers its URL`
    : undefined;
}

/**
 * An MQTT broker (aedes) inside this process, for a single gateway or a quick
 * start. Production with several gateways points `broker` at a real one.
 */
export async function startEmbeddedBroker(
  opts: EmbeddedBrokerOptions = {},
): Promise<EmbeddedBroker> {
  validateBrokerOptions(opts);
  const inWorker = embeddedInWorkerProblem('startEmbeddedBroker()');
  if (inWorker) throw new GatewayError('LW_GW_INVALID_BROKER', inWorker);
  const host = opts.host ?? '127.0.0.1';
  const maxPacketBytes = opts.maxPacketBytes ?? DEFAULT_MAX_PACKET_BYTES;
  const guards = brokerGuards({
    maxRetainedBytes: opts.maxRetainedBytes ?? DEFAULT_MAX_RETAINED_BYTES,
    maxRetainedMessages: opts.maxRetainedMessages ?? DEFAULT_MAX_RETAINED_MESSAGES,
    maxSubscriptionsPerClient:
      opts.maxSubscriptionsPerClient ?? DEFAULT_MAX_SUBSCRIPTIONS_PER_CLIENT,
    onRefused: (reason, client) => opts.onRefused?.(reason, remoteAddress(client)),
  });
  const aedes = createBroker({
    ...guards.authorizers,
    ...opts.aedes,
    // Not replaced by opts.aedes: an authenticate of the app's own (passwords)
    // runs after the session check.
    authenticate: guards.authenticate(opts.aedes?.authenticate),
  });
  if (!opts.aedes?.mq) flattenReleases((aedes as unknown as { mq: unknown }).mq);
  aedes.on('unsubscribe', (topics, client) => guards.unsubscribed(client, topics));
  const sockets = new Set<Socket>();
  const unread = new UnreadBudget();
  const perAddress = new Map<string, number>();
  const maxPerAddress = opts.maxConnectionsPerAddress ?? DEFAULT_MAX_CONNECTIONS_PER_ADDRESS;
  const server: Server = createServer((socket) => {
    const from = socket.remoteAddress ?? '';
    const open = perAddress.get(from) ?? 0;
    if (open >= maxPerAddress) {
      opts.onRefused?.(`more than ${maxPerAddress} connections from one address`, from);
      socket.destroy();
      return;
    }
    perAddress.set(from, open + 1);
    sockets.add(socket);
    socket.once('close', () => {
      sockets.delete(socket);
      const left = (perAddress.get(from) ?? 1) - 1;
      if (left > 0) perAddress.set(from, left);
      else perAddress.delete(from);
    });
    const guarded = new PacketSizeGuard(
      socket,
      maxPacketBytes,
      (bytes) => opts.onPacketTooLarge?.(bytes, socket.remoteAddress),
      unread,
    );
    // aedes.handle takes any Duplex (its Connection type is Duplex | Socket).
    aedes.handle(guarded);
  });
  server.maxConnections = opts.maxConnections ?? DEFAULT_MAX_CONNECTIONS;
  try {
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(opts.port ?? 0, host, () => {
        server.off('error', reject);
        resolve();
      });
    });
  } catch (err) {
    // aedes runs a heartbeat timer from its creation: left open, a process whose broker
    // could not listen (EADDRINUSE) never exited by itself.
    await new Promise<void>((resolve) => aedes.close(() => resolve()));
    throw err;
  }
  const port = (server.address() as AddressInfo).port;
  let closing: Promise<void> | undefined;
  const inProcess = new Set<Duplex>();
  return {
    port,
    url: `mqtt://${host}:${port}`,
    connectInProcess() {
      const [client, broker] = duplexPair();
      inProcess.add(client);
      client.once('close', () => inProcess.delete(client));
      if (closing) client.destroy();
      else aedes.handle(broker);
      return client;
    },
    close() {
      closing ??= new Promise<void>((resolve) => {
        server.close();
        // Destroy client sockets so server.close() and aedes.close() complete
        // without waiting for clients' keepalive to time out.
        for (const socket of sockets) socket.destroy();
        for (const stream of inProcess) stream.destroy();
        aedes.close(() => resolve());
      });
      return closing;
    },
  };
}

/**
 * Every bound checked before anything starts, with a coded error (LW_GW_INVALID_OPTION): a
 * NaN or a string compared false against every count, and `maxRetainedMessages: NaN` or
 * `maxRetainedBytes: '1mb'` left the retained store unbounded without a word; a negative
 * `maxSubscriptionsPerClient` refused every subscription, the gateway's own included.
 */
function validateBrokerOptions(opts: EmbeddedBrokerOptions): void {
  const atLeast = (name: keyof EmbeddedBrokerOptions, min: number, max = Infinity): void => {
    const v = opts[name];
    if (v === undefined) return;
    if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < min || v > max) {
      const range = max === Infinity ? `>= ${min}` : `from ${min} to ${max}`;
      throw invalidOption(`embedded broker ${name}`, `an integer ${range}`, v);
    }
  };
  atLeast('port', 0, 65_535);
  atLeast('maxPacketBytes', 1024);
  atLeast('maxRetainedBytes', 0);
  atLeast('maxRetainedMessages', 0);
  atLeast('maxSubscriptionsPerClient', 1);
  atLeast('maxConnections', 1);
  atLeast('maxConnectionsPerAddress', 1);
  if (opts.host !== undefined && (typeof opts.host !== 'string' || opts.host === '')) {
    throw invalidOption('embedded broker host', 'a non-empty string', opts.host);
  }
  for (const name of ['onPacketTooLarge', 'onRefused'] as const) {
    const f = opts[name];
    if (f !== undefined && typeof f !== 'function') {
      throw invalidOption(`embedded broker ${name}`, 'a function', f);
    }
  }
}

/** Where a refused client connects from (PacketSizeGuard passes its socket's address on). */
function remoteAddress(client: Client | null): string | undefined {
  return (client?.conn as { remoteAddress?: string } | undefined)?.remoteAddress;
}

interface GuardLimits {
  maxRetainedBytes: number;
  maxRetainedMessages: number;
  maxSubscriptionsPerClient: number;
  onRefused(reason: string, client: Client | null): void;
}

/** Why a topic (or a subscription's filter) is refused: too long or too deep. */
function topicRefusal(what: 'topic' | 'filter', topic: string): string | undefined {
  const bytes = Buffer.byteLength(topic);
  if (bytes > MAX_TOPIC_BYTES) return `${what} of ${bytes} bytes > ${MAX_TOPIC_BYTES}`;
  let levels = 1;
  for (let i = topic.indexOf('/'); i >= 0; i = topic.indexOf('/', i + 1)) levels++;
  if (levels > MAX_TOPIC_LEVELS) return `${what} of ${levels} levels > ${MAX_TOPIC_LEVELS}`;
  return undefined;
}

/**
 * The embedded broker's defaults for who may publish and subscribe what
 * (opts.aedes's own authorizers replace them), and the session check that
 * runs before any authenticate. Anyone who can connect could otherwise grow
 * the gateway's memory until it died, or end its process:
 * - Retained messages are counted per topic, with their topic and
 *   RETAINED_OVERHEAD_BYTES (an empty one clears its topic, [MQTT-3.3.1-10]);
 *   one that would take the total past `maxRetainedBytes`, or a new topic
 *   past `maxRetainedMessages`, is delivered but not kept, its client staying
 *   (2,000 retained 60 KiB messages kept 118 MB, for good).
 * - Topics and filters are at most MAX_TOPIC_BYTES and MAX_TOPIC_LEVELS, and
 *   a client holds at most `maxSubscriptionsPerClient` filters: a refused
 *   publish disconnects its client, a refused subscription gets SUBACK 0x80.
 * - QoS 2 publishes are refused: aedes keeps each one, by client id, until
 *   its PUBREL, which need never come (90 MB, kept after the client left).
 *   Loadwise publishes at QoS 0 and 1.
 * - Persistent sessions (`clean: false`) are refused at CONNECT with return
 *   code 2, as [MQTT-3.1.3-8] refuses a session it cannot keep: aedes queues
 *   every QoS 1 message for an absent one (90.6 MB for a session that
 *   subscribed to `q/#` and left). Gateways and agents use clean sessions
 *   (transport/mqtt-source.ts, packages/health-agent/src/mqtt-publisher.ts);
 *   aedes 0.51 refuses MQTT 5, so clean start and session expiry never arrive.
 * - `$SYS/#` is not subscribed to: aedes announces every client id there,
 *   and a client that connects with another's id takes its session over (the
 *   gateway's own, every time it reconnected).
 */
function brokerGuards(limits: GuardLimits) {
  const retained = new Map<string, number>();
  let total = 0;
  const held = new WeakMap<Client, Set<string>>();
  const authorizers: Pick<AedesOptions, 'authorizePublish' | 'authorizeSubscribe'> = {
    authorizePublish: (client, packet, cb) => {
      const refused =
        topicRefusal('topic', packet.topic) ?? (packet.qos === 2 ? 'QoS 2 publish' : undefined);
      if (refused !== undefined) {
        limits.onRefused(refused, client);
        return cb(new Error(refused));
      }
      const notKept = packet.retain ? keepRetained(packet.topic, packet.payload.length) : undefined;
      if (notKept !== undefined) {
        // Past the retained bounds only the keeping is refused: the message goes to its
        // subscribers as any other. Refused whole, with its client disconnected, a store
        // anyone had filled kept every new agent out: its retained status on connect was
        // refused, it was disconnected before one report, and again on every reconnect.
        limits.onRefused(`${notKept}: delivered, not retained`, client);
        packet.retain = false;
      }
      cb(null);
    },
    authorizeSubscribe: (client, sub, cb) => {
      if (sub.topic.startsWith('$SYS')) return cb(null, null);
      let refused = topicRefusal('filter', sub.topic);
      const filters = client && (held.get(client) ?? new Set<string>());
      if (
        refused === undefined &&
        filters &&
        !filters.has(sub.topic) &&
        filters.size >= limits.maxSubscriptionsPerClient
      ) {
        refused = `more than ${limits.maxSubscriptionsPerClient} subscriptions`;
      }
      if (refused !== undefined) {
        limits.onRefused(refused, client);
        return cb(null, null);
      }
      if (filters) held.set(client, filters.add(sub.topic));
      cb(null, sub);
    },
  };

  /** Counts a retained publish in, or says why it is refused. */
  function keepRetained(topic: string, payloadBytes: number): string | undefined {
    const before = retained.get(topic);
    if (payloadBytes === 0) {
      total -= before ?? 0;
      retained.delete(topic);
      return undefined;
    }
    const bytes = payloadBytes + Buffer.byteLength(topic) + RETAINED_OVERHEAD_BYTES;
    if (total - (before ?? 0) + bytes > limits.maxRetainedBytes) {
      return `retained messages over ${limits.maxRetainedBytes} bytes`;
    }
    if (before === undefined && retained.size >= limits.maxRetainedMessages) {
      return `more than ${limits.maxRetainedMessages} retained messages`;
    }
    total += bytes - (before ?? 0);
    retained.set(topic, bytes);
    return undefined;
  }

  return {
    authorizers,
    authenticate(next: AedesOptions['authenticate']): NonNullable<AedesOptions['authenticate']> {
      return function (this: unknown, client, username, password, done) {
        if (!client.clean) {
          limits.onRefused('persistent session (clean: false)', client);
          const err = new Error('persistent sessions are not kept') as AuthenticateError;
          err.returnCode = 2 as AuthenticateError['returnCode'];
          return done(err, false);
        }
        if (next) return next.call(this, client, username, password, done);
        done(null, true);
      };
    },
    /** A client's UNSUBSCRIBE: those filters no longer count against it. */
    unsubscribed(client: Client, topics: readonly string[]): void {
      const filters = held.get(client);
      for (const t of topics) filters?.delete(t);
    },
  };
}

/**
 * Two connected in-memory streams (Node 20 has no stream.duplexPair): what one writes the
 * other reads; ending one ends the other's reading; destroying one destroys both, as a
 * closed connection does.
 */
function duplexPair(): [Duplex, Duplex] {
  class Side extends Duplex {
    peer!: Side;
    override _read(): void {}
    override _write(chunk: Buffer, _enc: BufferEncoding, cb: (err?: Error | null) => void): void {
      this.peer.push(chunk);
      cb();
    }
    override _final(cb: (err?: Error | null) => void): void {
      this.peer.push(null);
      cb();
    }
    override _destroy(err: Error | null, cb: (err?: Error | null) => void): void {
      if (!this.peer.destroyed) this.peer.destroy();
      cb(err);
    }
  }
  const a = new Side();
  const b = new Side();
  a.peer = b;
  b.peer = a;
  return [a, b];
}

/**
 * Hands out mqemitter's places in a loop, not by recursion. Behind its 100 deliveries in
 * flight (aedes's `concurrency`) messages wait in a queue, and one that matches no
 * subscriber when its turn comes is done at once, in the call that freed its place, which
 * takes the next one: one client's single write (300 messages to a subscribed topic, then
 * 30,000 to nobody) recursed until the gateway's stack overflowed and the process died.
 * Without the bound (`concurrency: 0`) there was no queue, but nothing held a client's
 * read of 13,000 tiny messages from fanning out to every subscriber at once: 195 KB from
 * three clients took a 1 GB heap. So the bound stays, and a message that matches nobody
 * while places are being handed out waits for the loop below, in order.
 */
function flattenReleases(mq: unknown): void {
  type Parallel = (that: unknown, fns: unknown[], message: unknown, done: () => void) => void;
  const emitter = mq as { _parallel?: Parallel };
  const parallel = emitter._parallel;
  // mqemitter 6's internals; another version runs as it comes (the flood test would tell).
  if (typeof parallel !== 'function') return;
  let looping = false;
  const waiting: Parameters<Parallel>[] = [];
  emitter._parallel = (that, fns, message, done) => {
    // Subscribers: their deliveries end on a later turn (aedes: setImmediate), no recursion.
    if (fns.length > 0) return parallel(that, fns, message, done);
    if (looping) return void waiting.push([that, fns, message, done]);
    looping = true;
    try {
      parallel(that, fns, message, done);
      for (let next = waiting.shift(); next !== undefined; next = waiting.shift())
        parallel(...next);
    } finally {
      looping = false;
    }
  };
}
