/**
 * The stateful balancer behind `loadBalance(opts)`: owns the backends, the
 * strategy, the MQTT source, health (passive and active), admission and the
 * proxy, and ties their lifecycles together. The per-request path lives in
 * proxy/request-flow.ts; this file is wiring, wire messages and state.
 */
import { BlockList, isIP, type Socket } from 'node:net';
import {
  createDecoder,
  type Decoder,
  type Message,
  type ProtocolErrorCode,
  redactUrl,
  type RegistrationMessage,
} from '@loadwise/protocol';
import { GatewayError, shown, type DropReason } from './errors';
import { BalancerEmitter, type BalancerEvents } from './events';
import type { BalancerHandle } from './handle';
import { DrainRate } from './admission/drain-rate';
import { AcceptQueueMonitor } from './admission/accept-queue';
import { OverloadMonitor } from './admission/overload-monitor';
import { RetryBudget } from './admission/retry-budget';
import { WaitQueue } from './admission/wait-queue';
import { ActiveChecker, HEALTH_CHECK_JITTER } from './health/active-checker';
import { OutlierDetector } from './health/outlier-detector';
import { createEndpointLoad, createLoadCohort, type LoadCohort } from './load';
import {
  createGatewayMetrics,
  TrafficWindow,
  type BalancerSnapshot,
  type GatewayMetrics,
} from './observability';
import { checkBackendUrl, closeOptions, readyOptions } from './options-validate';
import {
  DEFAULT_CLOSE_GRACE_MS,
  DEFAULT_READY_TIMEOUT_MS,
  DEFAULTS,
  type CloseOptions,
  type ReadyOptions,
  type ResolvedOptions,
} from './options';
import type { FlowHost } from './proxy/flow-host';
import { ProxyEngine } from './proxy/proxy-engine';
import { acquireLoopDelay, releaseLoopDelay, type LoopDelay } from './load/loop-delay';
import { LoopGuard } from './proxy/loop-guard';
import { RequestFlow } from './proxy/request-flow';
import { RateLimitedLog } from './rate-limited-log';
import { Backend } from './registry/backend';
import { urlHost } from './registry/backend-tls';
import { unmapped } from './proxy/listen-address';
import { Registry, STALE_LINES } from './registry/registry';
import { NamedServers } from './registry/named-servers';
import { portOf, serverOf } from './registry/server';
import { backendLookup } from './registry/dns-cache';
import { ipv6Groups } from './ipv6-groups';
import { buildSnapshot } from './snapshot';
import { createStrategy } from './strategies';
import type { Endpoint, PickContext, Strategy } from './strategies/types';
import { MessageLimiter } from './transport/message-limiter';
import { MqttSource, RETAINED_SETTLE_MAX_MS } from './transport/mqtt-source';
import { attachEventLog, writeLog } from './observability/event-log';

/** Why discovery takes a backend out (the `backend-removed` event's reason). */
type RemovalReason = BalancerEvents['backend-removed'][0]['reason'];

const FRESHNESS_SWEEP_MS = 1000;
/**
 * How long a departed discovered backend (its agent stopped, or presumed gone) holds its
 * address against other ids: three of the agent's 20 s registration renewals, time for
 * its agent to restart in place.
 */
const DEPARTED_HOLD_MS = 60_000;
/** How long close() waits, after cutting, for the cut requests' answers to go out. */
const CUT_SETTLE_MS = 1000;
/**
 * Saturated picks choose() excludes and picks again before it tests every
 * backend. With a share f of backends saturated, P2C returns a saturated one
 * with probability about f² (both samples saturated), so five in a row is
 * about f¹⁰: the full test runs only when nearly all are saturated.
 */
const SATURATED_REPICKS = 4;

export class Balancer implements BalancerHandle, FlowHost {
  readonly events: BalancerEmitter;
  readonly strategy: Strategy;
  readonly registry: Registry;
  readonly outlier: OutlierDetector;
  readonly checker: ActiveChecker | undefined;
  readonly budget: RetryBudget | undefined;
  readonly queue: WaitQueue;
  readonly drainRate: DrainRate;
  readonly overload: OverloadMonitor | undefined;
  /** The event loop's lateness: the tie band of latency-based picks (load/loop-delay.ts). */
  private readonly loopDelay: LoopDelay | undefined;
  readonly acceptQueue: AcceptQueueMonitor | undefined;
  readonly metrics: GatewayMetrics;
  readonly traffic = new TrafficWindow();
  readonly engine: ProxyEngine;
  readonly flow: RequestFlow;
  readonly now: () => number;
  /**
   * The wall clock, for what is compared with other hosts' clocks (report timestamps,
   * epochs) or shown as a date; `now` (monotonic, clock.ts) for everything else.
   */
  readonly wallNow: () => number;
  closed = false;
  /** close() was called: new requests are refused while in-flight ones finish. */
  draining = false;
  private readonly cohort: LoadCohort = createLoadCohort();
  private readonly decoder: Decoder;
  private readonly limiter: MessageLimiter;
  /** The "no keys, unsigned refused" warning is logged once, not per message. */
  private warnedUnsigned = false;
  private readonly source: MqttSource | undefined;
  private readonly log: RateLimitedLog;
  private readonly allowed: BlockList | undefined;
  /** Loopback and NAT64 ranges that discovery.allowedRanges names explicitly. */
  private readonly explicit: ExplicitlyAllowed | undefined;
  /** With discovery: the configured backends addressed by name, and their addresses. */
  private readonly namedServers: NamedServers | undefined;
  private readonly sweepTimer: NodeJS.Timeout;
  /**
   * Discovery's lease clock (ms): the time that counts as an agent's silence
   * (forgetSilent). It runs while the broker connection is up and stands
   * still while it is down, so an outage pauses every lease and a reconnect
   * restarts none; a sweep period in which the gateway-wide message cap
   * dropped anything is not counted either, since a flood may have dropped
   * the agents' renewals with the rest.
   */
  private leaseMs = 0;
  /** `now` when leaseMs last advanced; undefined while the broker is down. */
  private leaseMarkMs: number | undefined;
  /** The gateway-wide message cap dropped something since leaseMs last advanced. */
  private capDropped = false;
  private saturated = false;
  private closing: Promise<void> | undefined;
  /** ready() calls still waiting: close() rejects them with LW_GW_CLOSED. */
  private readonly readyWaiters = new Set<() => void>();

  constructor(readonly options: ResolvedOptions) {
    const o = options;
    this.now = o.now;
    this.wallNow = o.now === DEFAULTS.now ? Date.now : o.now;
    this.log = new RateLimitedLog(o.logger, o.now);
    this.events = new BalancerEmitter((err) =>
      writeLog(
        o.logger,
        'error',
        { event: 'listener-threw' },
        `event listener threw: ${String(err)}`,
      ),
    );
    // Every state change becomes a structured, levelled log line.
    attachEventLog(this.events, o.logger, this.log);
    if (!o.backendTls.rejectUnauthorized) {
      // Once, here: unverified backends are a setting, not an event, and a
      // line per connection would bury everything else.
      writeLog(
        o.logger,
        'warn',
        { event: 'backend-tls-unverified' },
        'backendTls.rejectUnauthorized is false: https backends are not verified, so anyone ' +
          'who can intercept the traffic to them can read and change every request (testing only).',
      );
    }
    const b = o.broker;
    if (typeof b === 'object' && 'url' in b && b.rejectUnauthorized === false) {
      // The same for the broker: it went unsaid, and an impostor broker was sent the
      // credentials and could feed the gateway any report its keys would sign.
      writeLog(
        o.logger,
        'warn',
        { event: 'broker-tls-unverified' },
        'broker.rejectUnauthorized is false: the broker is not verified, so anyone who can ' +
          'intercept the traffic to it gets broker.username and broker.password and sees ' +
          'every report (testing only).',
      );
    }
    this.strategy = createStrategy(o.strategy, {
      random: o.random,
      now: o.now,
      ...o.strategyOptions,
    });
    this.decoder = this.makeDecoder();
    // Registrations are charged per signing key, so one key's flood cannot keep another
    // key's agents out; every retained registration arrives at once on (re)subscribe, so
    // a key that may sign for a whole fleet has room for it (registrationBurst).
    this.limiter = new MessageLimiter(o.messageLimits, o.now(), o.keys, o.discovery?.maxBackends);
    this.registry = new Registry(
      this.strategy,
      this.events,
      o.outlier.panicThresholdPercent,
      o.now,
    );
    // A backend came back (restored, checked up, agent online): waiting
    // requests may go now. A microtask, so a recompute in the middle of one
    // request's failure handling does not start others inside it.
    this.registry.onEligibleChange = () => {
      if (this.queue.length > 0) queueMicrotask(() => this.drainQueue());
    };
    this.outlier = new OutlierDetector(o.outlier, this.registry, this.events, o.now);
    this.events.on('backend-ejected', ({ id }) => this.metrics.onEjection(id));
    this.checker =
      o.healthCheck && new ActiveChecker(o.healthCheck, this.registry, o.now, o.random);
    this.budget = o.retry && new RetryBudget(o.retry, o.now);
    this.queue = new WaitQueue(o.saturation.queueSize, o.saturation.queueTimeoutMs);
    this.drainRate = new DrainRate(o.now);
    this.metrics = createGatewayMetrics({
      getSnapshot: () => this.snapshot(),
      ...(o.metricsRegistry ? { registry: o.metricsRegistry } : {}),
      ...(o.service !== undefined ? { service: o.service } : {}),
      ...(o.metricsPrefix !== undefined ? { prefix: o.metricsPrefix } : {}),
    });
    this.flow = new RequestFlow(this);
    const flow = this.flow;
    this.engine = new ProxyEngine(
      {
        onStart: (req, target) => flow.onStart(req, target),
        onProxyReq: (p, req, target) => flow.onProxyReq(p, req, target),
        onProxyRes: (p, req, res) => flow.onProxyRes(p, req, res),
        onError: (err, req, res, target) => flow.onError(err, req, res, target),
        targetOf: (req) => flow.targetOf(req),
        onPrepareError: (err, req, res) => flow.onPrepareError(err, req, res),
      },
      o.changeOrigin,
    );
    if (o.discovery) {
      this.allowed = new BlockList();
      for (const range of o.discovery.allowedRanges) {
        const [addr, bits] = range.split('/') as [string, string];
        this.allowed.addSubnet(addr, Number(bits), isIP(addr) === 6 ? 'ipv6' : 'ipv4');
      }
      this.explicit = explicitlyAllowed(o.discovery.allowedRanges);
    }
    for (const b of o.backends) this.addBackend(b.id, new URL(b.url), b.weight, 'config', false);
    this.registry.recompute();
    if (o.discovery) {
      const named = new NamedServers(
        o.backends.map((b) => ({ id: b.id, url: new URL(b.url) })),
        backendLookup,
        this.now,
        (id, port, addresses) => this.namedServerResolved(id, port, addresses),
      );
      if (named.any) {
        this.namedServers = named;
        named.refresh();
      }
    }
    this.overload =
      o.overload &&
      new OverloadMonitor(o.overload, (overloaded, eventLoopDelayMs) =>
        this.events.emit('overload', { overloaded, eventLoopDelayMs }),
      );
    const aq = o.acceptQueue;
    this.acceptQueue =
      aq &&
      new AcceptQueueMonitor(
        aq,
        (shedding, depth, limit) => this.events.emit('accept-queue', { shedding, depth, limit }),
        {
          inFlight: () => flow.active,
          random: o.random,
          onBacklogExceeded: (depth, limit) =>
            writeLog(
              o.logger,
              'warn',
              { event: 'accept-queue-backlog', depth, limit },
              `${depth} connections wait to be accepted, more than a backlog of ${limit} allows: ` +
                'the server listens with a larger backlog than acceptQueue.backlog says, so the ' +
                `gateway sheds (503) from ${Math.ceil(aq.shedAt * limit)} queued connections. ` +
                'Set acceptQueue.backlog to the backlog you listen with.',
            ),
        },
      );
    // Real time only: a lateness measured on the wall clock means nothing
    // against an injected clock (simulations, tests).
    this.loopDelay = o.now === DEFAULTS.now ? acquireLoopDelay() : undefined;
    this.sweepTimer = setInterval(() => this.sweep(), FRESHNESS_SWEEP_MS);
    this.sweepTimer.unref();
    this.source =
      o.broker === undefined
        ? undefined
        : new MqttSource(
            o.broker,
            o.topicPrefix,
            {
              onPacket: (topic, payload, retained) => this.receive(topic, payload, retained),
              onPacketTooLarge: (bytes, from) =>
                this.drop(
                  'LW_GW_PACKET_TOO_LARGE',
                  `embedded broker disconnected ${from ?? 'a client'}: packet of ${bytes}+ bytes > ${o.messageLimits.maxPacketBytes}`,
                  undefined,
                ),
              onBrokerRefused: (reason, from) =>
                this.drop(
                  'LW_GW_BROKER_LIMIT',
                  `embedded broker refused ${from ?? 'a client'}: ${reason}`,
                  undefined,
                ),
              onConnected: (url) => {
                this.advanceLease(this.now(), true);
                this.events.emit('broker-connected', {
                  url: url === undefined ? url : redactUrl(url),
                });
              },
              // Once per outage, not per reconnect attempt (mqtt-source.ts); logged by event-log.ts.
              // Events carry the URL without its credentials: an app that logs events as
              // they come (docs/gateway.md) printed the broker's password.
              onUnreachable: (url, error) =>
                this.events.emit('broker-unreachable', {
                  url: url === undefined ? url : redactUrl(url),
                  error,
                }),
              onLost: (error) => {
                this.advanceLease(this.now(), false);
                this.events.emit('broker-lost', { error });
              },
            },
            o.messageLimits.maxPacketBytes,
          );
    if (this.source) this.watchBroker(this.source);
  }

  private makeDecoder(): Decoder {
    const o = this.options;
    try {
      return createDecoder({
        prefix: o.topicPrefix,
        keys: o.keys,
        // Without keys too: then nothing is accepted, until keys or allowUnsigned are set.
        requireSignature: !o.allowUnsigned,
        maxClockSkewMs: o.maxClockSkewMs,
        maxRetainedAgeMs: o.maxRetainedAgeMs,
        maxPayloadBytes: o.maxPayloadBytes,
        now: this.wallNow,
      });
    } catch (err) {
      throw new GatewayError('LW_GW_INVALID_OPTION', (err as Error).message);
    }
  }

  /** URL of the broker (the embedded one's, once started), without its credentials. */
  get brokerUrl(): string | undefined {
    const url = this.source?.url;
    return url === undefined ? url : redactUrl(url);
  }

  get metricsRegistry(): BalancerHandle['metricsRegistry'] {
    return this.metrics.registry;
  }

  get brokerConnected(): boolean | null {
    return this.source ? this.source.isConnected : null;
  }

  /**
   * Resolves once the broker (embedded or remote) is connected, has
   * acknowledged the subscription to the agents' topics and sent the retained
   * messages it brings (mqtt-source.ts settleThenSubscribed); at once without a
   * broker. If that is not so within `timeoutMs`, resolves anyway with one
   * warning (naming the URL and the last error, a refused subscription too),
   * or with `requireBroker` rejects with LW_GW_BROKER_UNREACHABLE; the balancer
   * keeps reconnecting and routing on local signals meanwhile. A broker
   * outage must not become a gateway outage: every recipe awaits ready()
   * before it listens, so a rejection kept a restarted gateway (or each
   * worker of a pool, until the pool gave up) from ever listening while the
   * broker was down, though the gateway routes without it. An embedded
   * broker that cannot start is a fault of this process's configuration and
   * always rejects.
   */
  ready(options?: ReadyOptions): Promise<void> {
    let opts: ReadyOptions;
    try {
      opts = readyOptions(options);
    } catch (err) {
      return Promise.reject(err as GatewayError);
    }
    // Closing or closed: nothing will connect. An embedded broker's ready() used to resolve
    // here and a URL broker's to wait out the timeout (unref'd, so a script awaiting only
    // it exited 0 in silence).
    if (this.closing) return Promise.reject(closedError());
    const source = this.source;
    if (!source) return Promise.resolve();
    const timeoutMs = opts.timeoutMs ?? DEFAULT_READY_TIMEOUT_MS;
    return new Promise<void>((resolve, reject) => {
      // Settles once, whichever comes first: the broker, the timeout or close().
      const settle = (err?: Error): void => {
        clearTimeout(timer);
        this.readyWaiters.delete(onClose);
        this.brokerWaiters.delete(settle);
        if (err) reject(err);
        else resolve();
      };
      const onClose = (): void => settle(closedError());
      this.readyWaiters.add(onClose);
      // Subscribed when the time is up: the retained messages the subscribe brings are still
      // coming (mqtt-source.ts settleThenSubscribed), and a short timeoutMs warned of, or
      // with requireBroker refused, a broker that had answered. Once more, for as long as
      // that wait can last.
      let waitedForRetained = false;
      const expire = (): void => {
        if (source.isConnected && !waitedForRetained) {
          waitedForRetained = true;
          timer = setTimeout(expire, RETAINED_SETTLE_MAX_MS);
          timer.unref();
          return;
        }
        const why = source.lastErrorMessage ?? 'no answer';
        const sentence = `broker ${redactUrl(source.url ?? '(starting)')} not connected and subscribed after ${timeoutMs} ms: ${why}`;
        if (opts.requireBroker === true) {
          return settle(new GatewayError('LW_GW_BROKER_UNREACHABLE', sentence));
        }
        this.logLine(
          'ready-without-broker',
          `${sentence}; ready on local signals, still reconnecting`,
          {
            event: 'ready-without-broker',
            code: 'LW_GW_BROKER_UNREACHABLE',
          },
        );
        settle();
      };
      // Infinity: no timer (Node would fire one that long after 1 ms).
      let timer = timeoutMs === Infinity ? undefined : setTimeout(expire, timeoutMs);
      timer?.unref();
      if (this.brokerOutcome) return settle(this.brokerOutcome.err);
      this.brokerWaiters.add(settle);
    });
  }

  /**
   * The calls of ready() still waiting for the broker. One handler on the
   * source's promise settles them all: one per call stayed attached to that
   * promise after its own timeout settled the call, and a readiness probe
   * calling ready() while the broker had never been reached grew the heap by
   * about 850 bytes a call (85 MB after 100,000), for good.
   */
  private readonly brokerWaiters = new Set<(err?: Error) => void>();

  /** Calls of ready() waiting for the broker now (tests). */
  get readyCallsWaiting(): number {
    return this.brokerWaiters.size;
  }

  /** How the source's readiness settled, once it has: later calls settle at once. */
  private brokerOutcome: { err?: Error } | undefined;

  /** Settles the waiting calls of ready() when the source's readiness settles (constructor). */
  private watchBroker(source: MqttSource): void {
    const settleAll = (err?: Error): void => {
      this.brokerOutcome = { err };
      for (const settle of [...this.brokerWaiters]) settle(err);
    };
    source.ready.then(
      () => settleAll(),
      (err: unknown) =>
        // An embedded broker that cannot listen (EADDRINUSE, a host that does not resolve)
        // rejects with the system's error: the documented code, with it as the cause.
        settleAll(
          err instanceof GatewayError
            ? err
            : Object.assign(
                new GatewayError(
                  'LW_GW_BROKER_UNREACHABLE',
                  `broker ${redactUrl(source.url ?? '(embedded)')} did not start: ${err instanceof Error ? err.message : String(err)}`,
                ),
                { cause: err },
              ),
        ),
    );
  }

  /**
   * A warning outside the state changes (a failed attempt, a refused
   * request), at most once per key per 10 s (rate-limited-log.ts); `fields`
   * start with `event`, as the state changes' lines do.
   */
  logLine(key: string, message: string, fields: { event: string; [field: string]: unknown }): void {
    this.log.warn(key, message, fields);
  }

  readonly loops = new LoopGuard();

  /**
   * A request came back through backend `id` (proxy/loop-guard.ts). Proof that the backend
   * is this gateway: the request came on one of this gateway's own connections to it (its
   * source address and port are those of a socket in the backend's pool). A header alone
   * is no proof: backends see it, and whoever learnt the id could take any backend out.
   */
  loopedBack(id: string, socket: Socket): boolean {
    const b = this.registry.get(id);
    if (!b || !ownConnection(b, socket)) return false;
    this.loopsBack(b, 'a request sent to it came back');
    return true;
  }

  /**
   * A server the balancer serves on became known (a request reached it): a discovered
   * backend registered before at that server's own address goes out of rotation, as one
   * registering there now is refused (onRegistration).
   */
  listenerNoted(): void {
    for (const b of this.registry.backends.values()) {
      if (b.origin !== 'discovery' || b.loopsBack) continue;
      if (this.flow.listensAt(urlHost(b.target), portOf(b.target)))
        this.loopsBack(b, 'it registered the address this gateway listens at');
    }
  }

  private loopsBack(b: Backend, how: string): void {
    if (b.loopsBack) return;
    b.loopsBack = true;
    writeLog(
      this.options.logger,
      'error',
      { event: 'backend-loops-back', backend: b.id, url: b.target.href },
      `backend ${b.id} (${b.target.href}) is this gateway itself: ${how} ` +
        `(${b.origin === 'discovery' ? 'its registration' : 'its configured URL'} names ` +
        "the gateway's own listener). It is out of rotation for good.",
    );
    // Out of the eligible set; backend-down says why.
    this.registry.recompute();
  }

  private addBackend(
    id: string,
    url: URL,
    weight: number,
    origin: 'config' | 'discovery',
    recompute = true,
  ): Backend {
    const load = createEndpointLoad({ now: this.now, cohort: this.cohort, ...this.options.load });
    const backend = new Backend(
      id,
      url,
      weight,
      load,
      origin,
      this.options.agent,
      this.options.backendTls,
      (bytes) =>
        this.logLine(
          `upstream:${id}:idle-bytes`,
          `${id} (${url.href}) sent ${bytes} bytes on an idle pooled connection (the tail of an answer it had framed shorter, or one nobody asked for); its connections are retired`,
          { event: 'upstream-bytes-while-idle', backend: id, bytes },
        ),
    );
    backend.addedAtLeaseMs = this.leaseNow(this.now());
    this.engine.register(backend);
    this.registry.add(backend, origin === 'discovery', recompute);
    this.checker?.watch(backend);
    return backend;
  }

  /**
   * One message as the broker delivered it (transport/mqtt-source.ts calls
   * this for every one). The cheap checks come first so a flood costs as
   * little as possible (transport/message-limiter.ts): the gateway-wide cap;
   * then size, topic and signature (decoder.verify: one HMAC, no JSON); then
   * the backend's bucket for its class, unsigned before parsing, signed after
   * the replay check (so only genuine, new messages use an agent's budget);
   * then the allow-list and the rules of onMessage. Never throws; every
   * message is applied or dropped by code.
   * @internal
   */
  receive(topic: string, payload: Buffer, retained: boolean): void {
    if (this.closed) return;
    // An empty retained payload clears a retained message [MQTT-3.3.1-10]: not an error.
    if (payload.length === 0) return;
    const nowMs = this.now();
    if (!this.limiter.admitTotal(nowMs)) {
      this.capDropped = true;
      return this.drop('LW_GW_RATE_LIMITED', 'message rate of the gateway exceeded', undefined);
    }
    const verified = this.decoder.verify(topic, payload, { retained });
    if (!verified.ok) return this.drop(verified.code, verified.detail, verified.backendId);
    const id = verified.topic.backendId;
    const backend = this.registry.get(id);
    const known = backend !== undefined ? id : undefined;
    const signed = verified.keyId !== undefined;
    // Nothing to apply (onMessage would drop it) and so nothing to charge: a signed
    // report or status of an unknown id, dropped before it is parsed. It is either a
    // replay of something genuine or a key holder's: charged, it used up the bucket its
    // key's registrations need; parsed, it gave the replay guard and the
    // decoder's copy cache an entry per made-up id, which a key that may sign for any
    // id (unbound, or a wildcard) filled at the gateway-wide rate.
    if (signed && backend === undefined && verified.topic.kind !== 'register') {
      return this.drop('LW_GW_UNKNOWN_BACKEND', 'not configured', id);
    }
    // The same for a registration while discovery is off (onRegistration refuses it).
    if (signed && verified.topic.kind === 'register' && !this.discoveryOn()) {
      return this.drop('LW_GW_REGISTRATION_REJECTED', 'discovery is off', id);
    }
    if (!signed && this.limited(known, id, undefined, nowMs)) return;
    // The order rules are judged here and settled below, once it is known whose message
    // this is (defer).
    const result = this.decoder.parse(verified, { retained, defer: true });
    if (!result.ok) return this.drop(result.code, result.detail, result.backendId);
    try {
      this.take(result.message, result.keyId, backend, known, retained, nowMs);
    } finally {
      // A message of another agent run than the one that admitted a discovered backend is
      // held apart from the backend's order (ReplayGuard.hold), unless it admitted its run
      // (a registration that moved the id, or took it over in place). Taken into the
      // order, a second agent's run that the gateway refused made every later message of
      // the admitted agent a replay, and the healthy backend was forgotten at the end of
      // its lease; held, that run's messages (and those of any run held before it) stay
      // replays, and the admitted run's go on. Everything else is the backend's order.
      // The admitting run is the order if the guard has none (its state swept).
      const entry = this.registry.get(id);
      if (otherRun(entry, result.message.epochMs)) this.decoder.hold(result, entry!.runEpochMs);
      else this.decoder.accept(result);
    }
  }

  /** A message that passed the decoder's rules: its checks in receive(), then onMessage. */
  private take(
    message: Message,
    keyId: string | undefined,
    backend: Backend | undefined,
    known: string | undefined,
    retained: boolean,
    nowMs: number,
  ): void {
    const id = message.backendId;
    if (keyId !== undefined) {
      // Nor a will that changes nothing: a replay of something genuine (the replay
      // rules pass wills, registry.ts willChangesNothing), which charged would use up
      // the agent's own bucket.
      if (
        backend !== undefined &&
        message.kind === 'status' &&
        message.will === true &&
        Registry.willChangesNothing(backend)
      ) {
        return this.drop(
          retained ? 'LW_PROTO_RETAINED_SUPERSEDED' : 'LW_PROTO_REPLAY',
          'a Last Will that changes nothing (the agent is lost already, or took the backend offline)',
          id,
        );
      }
      if (this.limited(known, id, keyId, nowMs)) return;
    }
    this.onMessage(message, keyId, nowMs, retained);
  }

  /**
   * Charges the backend's bucket (an unknown id's signed message: its key's); true (and
   * counted) when the message is dropped. `keyId`: the verified key, undefined if unsigned.
   */
  private limited(
    known: string | undefined,
    id: string,
    keyId: string | undefined,
    nowMs: number,
  ): boolean {
    const limited = this.limiter.admit(known, keyId, nowMs);
    if (limited === undefined) return false;
    const which =
      limited === 'backend'
        ? `backend ${id}`
        : limited === 'key'
          ? `unknown backends signed by key ${keyId}`
          : 'unknown backends';
    this.drop(
      'LW_GW_RATE_LIMITED',
      `${keyId !== undefined ? 'signed' : 'unsigned'} message rate of ${which} exceeded`,
      id,
    );
    return true;
  }

  private onMessage(
    message: Message,
    keyId: string | undefined,
    receivedAtMs: number,
    retained = false,
  ): void {
    if (message.kind === 'register') return this.onRegistration(message, keyId, retained);
    const backend = this.registry.get(message.backendId);
    // The allow-list: a report may change how much traffic a configured (or
    // discovered) backend gets, never add one (HAProxy agent-check rule).
    if (!backend) return this.drop('LW_GW_UNKNOWN_BACKEND', 'not configured', message.backendId);
    if (keyId === undefined) {
      // Unsigned, and allowed (allowUnsigned): anyone on the broker could have
      // sent it, so it may make the backend look busier, within a bound, and
      // nothing else (registry/unsigned-report.ts, SECURITY.md).
      if (message.kind === 'status') {
        return this.drop(
          'LW_GW_UNSIGNED_IGNORED',
          `unsigned status ${message.state} ignored: only signed messages change eligibility`,
          message.backendId,
        );
      }
      this.registry.applyUnsigned(backend, message, receivedAtMs, this.options.unsignedMaxPenalty);
      return;
    }
    if (otherRun(backend, message.epochMs)) {
      // Another agent run than the one that admitted this discovered entry: a run whose
      // registration was refused is another instance than the one at this entry's address
      // (applied, its reports described a server that was not the one routed to, and
      // renewed the lease of a dead entry for good), and one that has not registered yet
      // is not this entry's until its registration moves it or takes it over. Only the
      // last refused run was checked: a captured Last Will of an earlier refused run put
      // the admitted backend offline again after each of its reports, and a second
      // agent's `online` before its refused registration undid the admitted agent's
      // `offline`. A restarted agent's first reports wait for its registration (it sends
      // one at once), and its first report after it sets the state.
      const refused = message.epochMs === backend.refusedEpochMs;
      if (!refused && message.kind === 'metrics')
        this.supersedeIfQuiet(backend, message.intervalMs, message.epochMs, receivedAtMs);
      return this.drop(
        refused ? 'LW_GW_REGISTRATION_REJECTED' : 'LW_GW_UNKNOWN_BACKEND',
        refused
          ? `${message.kind} of an agent run whose registration was refused: not applied`
          : `${message.kind} of an agent run that has not registered: not applied`,
        message.backendId,
      );
    }
    backend.heardAtLeaseMs = this.leaseNow(receivedAtMs);
    if (backend.agentSilent) {
      backend.agentSilent = false;
      if (backend.checkDown) this.registry.recomputeSoon();
    }
    backend.signedBy = keyId;
    // The admitting run is heard again: it was only quiet (supersedeIfQuiet).
    this.unsupersede(backend);
    this.registry.applyMessage(backend, message, receivedAtMs);
    if (this.queue.length > 0) this.drainQueue();
  }

  /**
   * A signed report of another agent run than the one that admitted `backend`, not yet
   * registered: when the admitting run has been silent for SUPERSEDE_INTERVALS report
   * intervals (the longer of the two runs', 1 s for one that reported nothing here), the
   * agent has moved on and the entry's address is a dead run's (Backend.supersededBy): out
   * of rotation until a registration of another run takes it over or moves it. Not while
   * the admitting run is heard: two live agents sharing an id (an overlap in a deploy)
   * would take the backend out in turn. Not on a status: an agent restarted in place sends
   * its status just before its registration, and the backend went down and up again, its
   * learned figures reset, for nothing.
   */
  private supersedeIfQuiet(
    backend: Backend,
    otherIntervalMs: number,
    epochMs: number,
    receivedAtMs: number,
  ): void {
    if (backend.supersededBy !== undefined) return;
    // The longer of the two runs' intervals: a deploy overlap where the admitting run
    // reports every 10 s and the new one every second took the backend out for 3 s.
    const intervalMs = Math.max(
      backend.lastReport?.intervalMs ?? SUPERSEDE_DEFAULT_INTERVAL_MS,
      otherIntervalMs,
    );
    const quietMs = this.leaseNow(receivedAtMs) - backend.heardAtLeaseMs;
    if (quietMs <= SUPERSEDE_INTERVALS * intervalMs) return;
    backend.supersededBy = epochMs;
    writeLog(
      this.options.logger,
      'warn',
      { event: 'backend-superseded', backend: backend.id, url: backend.target.href },
      `backend ${backend.id}: another run of its agent reports, unregistered yet, and the run ` +
        `that registered ${backend.target.href} has been silent for ${Math.round(quietMs)} ms: ` +
        'out of rotation until a registration of the new run',
    );
    this.registry.recompute();
  }

  /** Back in rotation if supersedeIfQuiet took `backend` out. */
  private unsupersede(backend: Backend): void {
    if (backend.supersededBy === undefined) return;
    backend.supersededBy = undefined;
    this.registry.recompute();
  }

  /** Registrations may add backends: discovery is configured, with its address ranges. */
  private discoveryOn(): boolean {
    return (
      this.options.discovery !== undefined &&
      this.allowed !== undefined &&
      this.explicit !== undefined
    );
  }

  private onRegistration(
    message: RegistrationMessage,
    keyId: string | undefined,
    retained: boolean,
  ): void {
    const id = message.backendId;
    const d = this.options.discovery;
    if (!d || !this.allowed || !this.explicit)
      return this.drop('LW_GW_REGISTRATION_REJECTED', 'discovery is off', id);
    if (keyId === undefined)
      return this.drop('LW_GW_REGISTRATION_REJECTED', 'registration is not signed', id);
    const existing = this.registry.get(id);
    // Another agent run than the one that admitted the entry: the replay guard has already
    // refused an earlier run's messages while the admitting run is remembered, and a
    // captured registration goes stale within the skew and retained-age bounds, so a run
    // that gets here is a live one. Not only a newer epoch: a pod rescheduled onto a node
    // whose clock is a few seconds behind starts a run with a smaller epochMs, was never
    // allowed to move the id, and its reports renewed the dead entry for good.
    const other = otherRun(existing, message.epochMs);
    const reject = (why: string): void => {
      // Another agent run of a known id that may not take it over (its address breaks a
      // rule) is another instance: its messages must not keep the entry alive, nor be read
      // as the entry's (onMessage). The admitting run marks nothing.
      if (other && existing) {
        existing.refusedEpochMs = message.epochMs;
        // The run that superseded the entry is another instance, not the backend's agent
        // moving on: the entry stands on its own run again (served on local signals).
        if (existing.supersededBy === message.epochMs) this.unsupersede(existing);
      }
      this.drop('LW_GW_REGISTRATION_REJECTED', why, id);
    };
    const url = checkBackendUrl(message.url);
    // Which rule (not http(s), port 0), with the url as sent (cut at 80 characters).
    if (typeof url === 'string') return reject(`registration url ${shown(message.url)}: ${url}`);
    if (d.requireTls && url.protocol !== 'https:')
      return reject(`registration url ${shown(message.url)} is not https (discovery.requireTls)`);
    const host = urlHost(url);
    const family = isIP(host);
    // IP literals only: a name would be resolved later, outside the check.
    if (family === 0) return reject(`host ${host} is not an IP address`);
    const special = specialAddress(host, family, this.explicit);
    if (special) return reject(`address ${host} is ${special}`);
    if (!this.allowed.check(host, family === 6 ? 'ipv6' : 'ipv4'))
      return reject(`address ${host} is outside the allowed ranges`);
    const port = portOf(url);
    if (d.allowedPorts.length > 0 && !d.allowedPorts.includes(port))
      return reject(`port ${port} is not allowed`);
    // The gateway's own listener, as far as it knows one (a request has reached it): the loop
    // guard finds such a backend only when a request comes back through the balancer, and
    // with the balancer mounted (`app.use('/api', lb)`) or a base path in the URL it came
    // back to the app's own routes instead, one that trusted loopback callers answered
    // (a review of discovery, 18 of 20 requests).
    if (this.flow.listensAt(host, port))
      return reject(`${url.origin} is this gateway's own listener`);
    if (existing && existing.target.href === url.href) {
      // The agent's periodic registration renews a discovered backend's lease; another run
      // at the same address (a restart in place) takes the entry over as it is.
      if (existing.origin === 'discovery') {
        if (other) {
          existing.runEpochMs = message.epochMs;
          existing.refusedEpochMs = undefined;
          this.unsupersede(existing);
        }
        existing.heardAtLeaseMs = this.leaseNow(this.now());
      }
      return;
    }
    // A known id at a new address. Only another agent run of a discovered backend may move
    // it (a StatefulSet pod rescheduled: stable id, new IP): refusing it for good routed
    // every request to the dead address while the new run's messages renewed its lease
    // (100 % 503 with one backend). The admitting run may not (a confused or second agent
    // sharing its run), nor may anything move a configured backend.
    if (existing && !other) {
      return reject(
        existing.origin === 'config'
          ? 'a configured backend cannot change its address'
          : 'a known backend cannot change its address (only another agent run may move it)',
      );
    }
    // A configured backend addressed by name is the same server at the address it
    // resolves to (registry/named-servers.ts).
    const named = this.namedServers?.match(host, port);
    if (named && !named.resolved)
      return reject(
        `${url.origin} cannot be told apart from backend ${named.id} yet: ${named.hostname} is not resolved`,
      );
    if (named)
      return reject(
        `${url.origin} is the server of backend ${named.id} (${named.hostname}) already`,
      );
    // Two ids for one server would split its load estimate into two halves that each look
    // idle (configuration refuses it too: LW_GW_DUPLICATE_BACKEND). The server, not the
    // URL: `http://10.1.2.3:8080//` or `.../x` beside a configured `http://10.1.2.3:8080`
    // was added, so a registration could take another backend's server. Looked up, not
    // scanned: a scan of every backend per registration cost 357 ms over 3,000.
    const server = serverOf(url);
    const sameServer = this.registry.atServer(server);
    // A departed backend (its agent stopped, or presumed gone) holds its address against
    // other ids for DEPARTED_HOLD_MS, long enough for its agent to restart: a key for
    // another id could otherwise take a server whose agent was only restarting, and its
    // new run was refused for good. After that the address goes to whoever registers it
    // (a rolling deploy reusing addresses: held for the whole 10-minute lease, a new id at
    // a reused address was refused, every request 503).
    if (sameServer && sameServer !== existing && this.releasable(sameServer))
      this.forget(sameServer, 'evicted');
    else if (sameServer && sameServer !== existing)
      return reject(`${url.origin} is the server of backend ${sameServer.id} already`);
    // The same for the address of one evicted for its slot.
    const reserved = this.reservedServers.get(server);
    if (reserved && reserved.id !== id && this.leaseNow(this.now()) < reserved.untilLeaseMs)
      return reject(`${url.origin} is reserved for backend ${reserved.id}, which left lately`);
    if (existing) this.retire(existing, 'moved');
    else if (this.registry.discoveredCount >= d.maxBackends && !this.evictDeparted())
      return reject('discovery.maxBackends reached');
    // At most discovery.maxWeight: the weight divides the backend's score, and one key holder
    // that claimed 1e6 took every request of a three-backend fleet (a review of discovery).
    const weight = Math.min(Math.max(message.weight ?? 1, 0.01), d.maxWeight);
    // The eligible set is recomputed once per burst (registry.ts recomputeSoon), not per
    // registration: every retained one comes at once when the gateway subscribes.
    const added = this.addBackend(id, url, weight, 'discovery', false);
    this.registry.recomputeSoon();
    added.heardAtLeaseMs = this.leaseNow(this.now());
    added.runEpochMs = message.epochMs;
    // Back (here or elsewhere): its old address is held for it no longer.
    const held = this.reservedFor.get(id);
    if (held !== undefined) this.unreserve(held);
    this.events.emit('backend-added', { id, url: url.href });
    // Admitted from the burst of retained messages a subscribe brings, in which its retained
    // status (the Last Will of a crashed pod) may have come first and been dropped unparsed
    // (an unknown id): the broker sends the retained messages again once the burst is over
    // (mqtt-source.ts resendRetained), and its status is judged now.
    if (retained) this.source?.resendRetained();
  }

  /**
   * A configured backend's name now resolves to `addresses`: a discovered backend of another
   * id at one of them is that server again, admitted while the name had no answer or another
   * one. It is let go (its requests finish on their connections), and its agent's next
   * registration is refused.
   */
  private namedServerResolved(id: string, port: number, addresses: ReadonlySet<string>): void {
    for (const host of addresses) {
      const b = this.registry.atServer(`${host}:${port}`);
      if (!b || b.origin !== 'discovery' || b.id === id) continue;
      this.forget(b, 'configured-server');
    }
  }

  /** A departed discovered backend, idle, whose address it no longer holds against other ids. */
  private releasable(b: Backend): boolean {
    return (
      b.origin === 'discovery' &&
      idle(b) &&
      (departed(b) || b.presumedGone) &&
      this.leaseMs - b.heardAtLeaseMs >= DEPARTED_HOLD_MS
    );
  }

  /**
   * maxBackends is reached: forgets the discovered backend that left (its agent said
   * `offline`, or its Last Will came) heard from least recently, with nothing in flight.
   * False when there is none: every slot is taken by a backend that may still serve.
   */
  private evictDeparted(): boolean {
    let oldest: Backend | undefined;
    for (const b of this.registry.backends.values()) {
      if (b.origin !== 'discovery' || !idle(b)) continue;
      // Stopped by its agent (signed offline), or presumed gone (agent lost and failing
      // checks): not a backend whose agent died while it still serves.
      if (!departed(b) && !b.presumedGone) continue;
      if (!oldest || b.heardAtLeaseMs < oldest.heardAtLeaseMs) oldest = b;
    }
    if (!oldest) return false;
    // An expired reservation of another id at this address, not yet swept, goes first with
    // its id's entry (left in reservedFor, it stayed for good).
    const server = serverOf(oldest.target);
    this.unreserve(server);
    this.reservedServers.set(server, {
      id: oldest.id,
      untilLeaseMs: oldest.heardAtLeaseMs + DEPARTED_HOLD_MS,
    });
    this.reservedFor.set(oldest.id, server);
    this.forget(oldest, 'evicted');
    return true;
  }

  /** Servers (serverOf) of evicted backends, held for their ids for DEPARTED_HOLD_MS (releasable). */
  private readonly reservedServers = new Map<string, { id: string; untilLeaseMs: number }>();
  /** The address held for an evicted id: admitted again, it releases it. */
  private readonly reservedFor = new Map<string, string>();

  /** Ends the reservation of `server`, in both maps. */
  private unreserve(server: string): void {
    const r = this.reservedServers.get(server);
    if (r === undefined) return;
    this.reservedServers.delete(server);
    if (this.reservedFor.get(r.id) === server) this.reservedFor.delete(r.id);
  }

  /**
   * Takes a discovered backend out for good: not picked, checked or shown; its metric
   * series, rate bucket and remembered copies go (the replay guard keeps what it must,
   * ReplayGuard.forget). `recompute: false` leaves the eligible set to the caller.
   */
  private forget(b: Backend, reason: Exclude<RemovalReason, 'moved'>, recompute = true): void {
    this.retire(b, reason, recompute);
    this.traffic.forget(b.id);
    this.limiter.forget(b.id);
    this.decoder.forget(b.id);
    this.metrics.forgetBackend(b.id);
  }

  /**
   * Takes a backend out of the registry at once; its pool is closed once the requests,
   * WebSockets and streams it carries have ended (sweep), so a backend that moved or left
   * cuts none of them: they finish, or fail, on their own connections.
   */
  private retire(b: Backend, reason: RemovalReason, recompute = true): void {
    this.registry.remove(b, recompute);
    this.engine.unregister(b);
    this.checker?.unwatch(b);
    // Out of the registry: the failures of the requests still on it (a moved backend's old
    // address dying) no longer eject it, which emitted backend-ejected for the id's live
    // entry with no backend-restored to follow.
    b.retired = true;
    b.clearEjection();
    if (idle(b)) b.close();
    else this.retired.add(b);
    const silentMs = this.leaseMs - b.heardAtLeaseMs;
    this.events.emit('backend-removed', { id: b.id, url: b.target.href, silentMs, reason });
  }

  /** Backends taken out with requests still on them: closed by the sweep once idle. */
  private readonly retired = new Set<Backend>();

  /**
   * Requests still on backends taken out of the registry (moved, forgotten, removed): part
   * of what the gateway proxies now, though no registry entry counts them any more.
   */
  retiredInFlight(): number {
    let n = 0;
    for (const b of this.retired) n += b.load.inFlight;
    return n;
  }

  private drop(
    code: ProtocolErrorCode | DropReason,
    detail: string,
    backendId: string | undefined,
  ): void {
    this.metrics.onInvalidMessage(code);
    // Details quote what the message held (a JSON error, a topic): printable ASCII only in a log.
    detail = detail.replace(/[^\x20-\x7e]/g, '?');
    // The default posture meeting unsigned agents: one clear line here, not one per report.
    const unsignedRefused = code === 'LW_PROTO_UNSIGNED' && this.options.keys.length === 0;
    // What the broker resends on every subscribe, and a genuine message it delivered behind a
    // newer one of its agent (ReplayGuard, LW_PROTO_OVERTAKEN): counted, never a warning.
    const quiet =
      unsignedRefused || code === 'LW_PROTO_RETAINED_SUPERSEDED' || code === 'LW_PROTO_OVERTAKEN';
    this.events.emit('invalid-message', { code, backendId, detail, quiet });
    if (unsignedRefused) {
      if (this.warnedUnsigned) return;
      this.warnedUnsigned = true;
      writeLog(
        this.options.logger,
        'warn',
        { event: 'unsigned-refused', backend: backendId ?? null },
        `refusing unsigned reports (first from ${backendId ?? 'unknown'}): no signing keys are configured. ` +
          'Set keys (and sign agents with --key-file), or allowUnsigned: true to accept unsigned ' +
          "reports that can only lower a backend's share (SECURITY.md). Further refusals are counted " +
          'as LW_PROTO_UNSIGNED in loadwise_invalid_messages_total, not logged.',
      );
    }
  }

  /**
   * Eligibility, saturation and the pick, for one attempt (proxy/request-flow.ts
   * dispatch). A Backend, or why there is none: 'none' (nothing eligible),
   * 'all-tried' (a retry that tried every eligible backend), 'saturated'
   * (every untried one is saturated: the request waits). The pick's reason,
   * when the decision header asks for one, is left in `chosenReason`.
   *
   * O(choices), not O(backends): the strategy picks first and only its pick is
   * tested for saturation. A saturated pick is excluded and the strategy picks
   * again, up to SATURATED_REPICKS times; only then, when nearly every backend
   * is saturated, is each one tested (the exact "are all saturated?" answer),
   * so a request waits or is shed exactly when every backend is saturated.
   */
  choose(
    nowMs: number,
    tried: ReadonlySet<Endpoint> | undefined,
    hashKey: string | undefined,
  ): Backend | 'none' | 'all-tried' | 'saturated' {
    const eligible = this.registry.eligible;
    if (eligible.length === 0) return 'none';
    const ctx = this.pickContext;
    ctx.nowMs = nowMs;
    ctx.hashKey = hashKey;
    ctx.exclude = tried;
    ctx.explain = this.options.decisionHeader !== undefined;
    ctx.measurementNoiseMs = this.loopDelay?.valueMs ?? 0;
    let extra: Set<Endpoint> | undefined;
    const retry = tried !== undefined && tried.size > 0;
    for (let round = 0; round <= SATURATED_REPICKS; round++) {
      const pick = this.strategy.pick(ctx);
      if (pick === undefined) return round === 0 ? 'all-tried' : 'saturated';
      const backend = this.registry.get(pick.endpoint.id);
      if (backend === undefined) return 'saturated';
      if (!this.isSaturated(backend, nowMs, retry)) {
        this.chosenReason = pick.reason;
        return backend;
      }
      extra ??= new Set(tried);
      extra.add(pick.endpoint);
      ctx.exclude = extra;
    }
    // Nearly everything sampled was saturated: test every untried backend once.
    let untried = 0;
    for (const b of eligible) {
      if (tried?.has(b.endpoint)) continue;
      untried++;
      if (this.isSaturated(b, nowMs, retry)) extra!.add(b.endpoint);
    }
    if (untried === 0) return 'all-tried';
    const pick = this.strategy.pick(ctx);
    const backend = pick && this.registry.get(pick.endpoint.id);
    if (!pick || !backend) return 'saturated';
    this.chosenReason = pick.reason;
    return backend;
  }

  /** The pick's reason of the last choose() that found a backend (decision header). */
  chosenReason: string | undefined;

  /** A WebSocket upgrade's backend: the strategy's pick, counted as a pick (upgrade-flow.ts). */
  pickUpgrade(
    nowMs: number,
    hashKey: string | undefined,
    exclude?: ReadonlySet<Endpoint>,
  ): Backend | undefined {
    if (this.registry.eligible.length === 0) return undefined;
    const pick = this.strategy.pick({ nowMs, hashKey, exclude });
    const backend = pick && this.registry.get(pick.endpoint.id);
    if (!backend) return undefined;
    this.metrics.onPick(backend.id, this.strategy.name);
    this.traffic.record(backend.id, nowMs);
    return backend;
  }

  /** A failed attempt has nowhere else to go: panic, or every eligible backend was tried. */
  nothingLeftToTry(tried: ReadonlySet<Endpoint> | undefined): boolean {
    if (this.registry.panic) return true;
    for (const b of this.registry.eligible) if (!tried?.has(b.endpoint)) return false;
    return true;
  }
  /** choose()'s context, reused: picks are synchronous and no strategy keeps it. */
  private readonly pickContext: PickContext = {
    nowMs: 0,
    hashKey: undefined,
    exclude: undefined,
    explain: false,
  };

  /** The bookkeeping of an attempt sent to `backend` (request-flow.ts startAttempt). */
  attemptStarted(backend: Backend, nowMs: number): void {
    backend.requests++;
    backend.load.onRequestStart(nowMs);
    this.metrics.onPick(backend.id, this.strategy.name);
    this.traffic.record(backend.id, nowMs);
  }

  /** The attempt's response head arrived (request-flow.ts onProxyRes). */
  attemptAnswered(backend: Backend): void {
    backend.load.onResponseHead();
  }

  loopDelayedMs(fromMs: number, eventMs: number): number {
    // Only on the gateway's own clock (an injected one has no sampler): see the constructor.
    return this.loopDelay?.delayedMs(fromMs, eventMs) ?? 0;
  }

  /** An attempt ended; `cancelled`: no latency or error sample (request-flow.ts endAttempt). */
  attemptEnded(
    backend: Backend,
    nowMs: number,
    latencyMs: number,
    ok: boolean,
    overloaded: boolean,
    cancelled: boolean,
    refused = false,
  ): void {
    if (cancelled) backend.load.onRequestCancel(nowMs);
    else backend.load.onRequestEnd(nowMs, latencyMs, ok, overloaded, refused);
    if (ok && !cancelled) backend.lastAnsweredAtMs = nowMs;
    this.drainRate.onCompletion();
    // A slot freed: let the oldest waiter go.
    if (this.queue.length > 0) this.drainQueue();
  }

  /** Saturated: see docs/gateway.md ("Saturation"). */
  isSaturated(backend: Backend, nowMs: number, retry = false): boolean {
    const s = this.options.saturation;
    const inFlight = backend.load.inFlight;
    if (inFlight >= s.maxInFlightPerBackend) return true;
    // What its agent says it serves at once, and as many again waiting in it, while its
    // fresh report finds every slot busy (EndpointLoad.saturationBound): beyond that a first
    // attempt waits in the gateway's bounded, timed queue, and goes to whichever backend
    // frees a slot first. Bounded by the pool alone (256), three backends of 8 slots
    // at twice their capacity held 256 requests each, 248 queued inside each backend (3.2 s,
    // no timeout the gateway could apply), and the first 503 came after 7 s. Never for a
    // retry, which does not queue: one backend crashing under load sent its retries to 503
    // at the others' bound.
    if (!retry) {
      const bound = backend.load.saturationBound?.(nowMs);
      if (bound !== undefined && inFlight >= bound) return true;
    }
    // Never by expected wait with none of this gateway's requests on it: the wait includes
    // the service time, so a backend slower than maxExpectedWaitMs was saturated while
    // idle, and with nothing in flight nothing ever completed to lower the estimate: every
    // request waited queueTimeoutMs for a 503, for good. One request at a time still goes.
    return (
      s.maxExpectedWaitMs !== undefined &&
      backend.load.inFlight > 0 &&
      backend.load.expectedWaitMs(nowMs, false) > s.maxExpectedWaitMs
    );
  }

  /**
   * Retry-After when nothing is eligible (or every backend was tried): until the first
   * ejection expires, within [1, 60] s, when every backend is ejected. One out for another
   * reason (down by its checks, draining, offline) or not out at all (tried already) may
   * serve at its next report or check: 1 s. Counting only the ejections told clients to
   * wait 30 s while a drained backend was back a second later. An ejected backend seen
   * down meanwhile may be back at its next passing checks or report, which end its
   * ejection early (outlier-detector.ts): "Retry-After: 30" went out while both backends of
   * a crash were back 2.6 s after it.
   */
  noBackendRetryAfterSec(nowMs: number): number {
    const hc = this.options.healthCheck;
    let soonest = Infinity;
    for (const b of this.registry.backends.values()) {
      if (b.ejectedUntilMs === undefined) return 1;
      let until = b.ejectedUntilMs - nowMs;
      if (b.verdictDown) until = Math.min(until, 1_000);
      else if (b.checkDown && hc)
        until = Math.min(until, hc.intervalMs * (1 + HEALTH_CHECK_JITTER) * hc.healthyThreshold);
      soonest = Math.min(soonest, until);
    }
    return soonest === Infinity ? 1 : Math.min(60, Math.max(1, Math.ceil(soonest / 1000)));
  }

  drainQueue(): void {
    this.queue.drain();
    this.queueChanged();
  }

  /** Emits `saturation` on transitions of "requests are waiting". */
  queueChanged(): void {
    const saturated = this.queue.length > 0;
    if (saturated === this.saturated) return;
    this.saturated = saturated;
    this.events.emit('saturation', { saturated, queued: this.queue.length });
  }

  private sweep(): void {
    const nowMs = this.now();
    this.namedServers?.refresh();
    const stale = this.registry.sweepFreshness(nowMs);
    // A lapsed verdict no longer speaks (Backend.verdictLapsed; docs/gateway.md, "Which
    // backends are eligible"): with active checks, healthyThreshold full checks that pass
    // take it back (active-checker.ts record); without them, local signals alone decide.
    if (!this.checker) {
      let cleared = false;
      for (const b of this.registry.backends.values()) {
        if (!b.verdictDown || !b.verdictLapsed(nowMs)) continue;
        b.verdictDown = false;
        cleared = true;
      }
      if (cleared) this.registry.recompute();
    }
    if (stale.length > STALE_LINES) {
      this.logLine(
        'metrics-stale-many',
        `reports of ${stale.length} backends went stale at once (${listIds(stale)}); routing on local signals${this.source?.isConnected === false ? ' while the broker is away' : ''}`,
        { event: 'metrics-stale-many', backends: stale.length },
      );
    }
    if (this.leaseMarkMs !== undefined) this.advanceLease(nowMs, true);
    this.markSilentAgents();
    this.warnNeverHeard();
    this.forgetSilent();
    this.decoder.sweep();
    if (this.queue.length > 0) this.drainQueue();
  }

  /**
   * Discovered backends whose agents have sent nothing signed for SILENT_INTERVALS report
   * intervals (SILENT_MIN_MS at least) on the lease clock (Backend.agentSilent): with
   * failing checks too, they are presumed gone. A broker that crashed sends no Last Will
   * for an agent that died while it was down: three of four pods killed during an
   * outage kept the gateway in panic, spreading requests over their dead addresses,
   * until their leases ended 10 minutes later. The lease clock stands still while the
   * broker is away, so an outage makes no agent silent.
   */
  private markSilentAgents(): void {
    if (this.options.discovery === undefined) return;
    let changed = false;
    for (const b of this.registry.backends.values()) {
      if (b.origin !== 'discovery') continue;
      const intervalMs = b.lastReport?.intervalMs ?? SUPERSEDE_DEFAULT_INTERVAL_MS;
      const silent =
        this.leaseMs - b.heardAtLeaseMs > Math.max(SILENT_INTERVALS * intervalMs, SILENT_MIN_MS);
      if (silent === b.agentSilent) continue;
      b.agentSilent = silent;
      if (b.checkDown) changed = true;
    }
    if (changed) this.registry.recompute();
  }

  /**
   * One line, once per backend, for backends no report of which ever reached
   * this gateway in NEVER_HEARD_MS of broker connection (subscribed): agents
   * on another topic prefix or service, or a broker ACL that accepts the
   * subscription and delivers nothing. Nothing was said, not even at `info`:
   * a backend that never reported never went stale.
   */
  private warnNeverHeard(): void {
    if (this.source?.isConnected !== true) return;
    const silent: Backend[] = [];
    const unsignedOnly: Backend[] = [];
    for (const b of this.registry.backends.values()) {
      if (b.everFresh || b.neverHeardWarned || this.leaseMs - b.addedAtLeaseMs < NEVER_HEARD_MS)
        continue;
      b.neverHeardWarned = true;
      (b.heardUnsigned ? unsignedOnly : silent).push(b);
    }
    if (unsignedOnly.length > 0) {
      // Heard, but only unsigned (allowUnsigned): the topic prefix and the broker are
      // fine, and the line above sent an operator of the documented trial looking there.
      const n = unsignedOnly.length;
      this.logLine(
        'unsigned-only',
        `only unsigned reports from ${n === 1 ? 'backend' : `${n} backends`} ${listIds(unsignedOnly)} in ${NEVER_HEARD_MS / 1000} s: allowUnsigned lets them only raise a backend's expected wait (at most ×${this.options.unsignedMaxPenalty}), so ${n === 1 ? 'it is' : 'they are'} routed on local signals and the status shows no report. Give the agents a key (--key-file) this gateway holds (keys) to route on their reports`,
        { event: 'unsigned-only', backends: n },
      );
    }
    if (silent.length === 0) return;
    this.logLine(
      'never-heard',
      `no report from ${silent.length === 1 ? 'backend' : `${silent.length} backends`} ${listIds(silent)} in ${NEVER_HEARD_MS / 1000} s connected to the broker: routing ${silent.length === 1 ? 'it' : 'them'} on local signals. Check that their agents run with this gateway's topic prefix (${JSON.stringify(this.options.topicPrefix)}) and that the broker delivers their topics to this gateway`,
      { event: 'never-heard', backends: silent.length },
    );
  }

  /** Moves the lease clock to `nowMs` (leaseMs), then marks the broker up or down. */
  private advanceLease(nowMs: number, up: boolean): void {
    this.leaseMs = this.leaseNow(nowMs);
    this.capDropped = false;
    this.leaseMarkMs = up ? nowMs : undefined;
  }

  /** The lease clock at `nowMs`. */
  private leaseNow(nowMs: number): number {
    const mark = this.leaseMarkMs;
    if (mark === undefined || this.capDropped) return this.leaseMs;
    return this.leaseMs + Math.max(0, nowMs - mark);
  }

  /**
   * Discovery's lease: a discovered backend whose agent has sent nothing
   * signed (report, status, registration) for discovery.forgetAfterMs on the
   * lease clock is forgotten, so a fleet that scales in and out does not
   * fill maxBackends with dead entries for good, nor keep checking (and,
   * once the address is reused, routing to) hosts that are gone. A backend
   * with requests in flight, a WebSocket or a stream open waits for a later sweep.
   */
  private forgetSilent(): void {
    for (const b of this.retired) {
      if (!idle(b)) continue;
      this.retired.delete(b);
      b.close();
      // Forgotten while requests were still on it: their answers made its metric series
      // again, for a backend the gateway no longer has, and nothing removed them.
      if (!this.registry.get(b.id)) this.metrics.forgetBackend(b.id);
    }
    if (this.options.discovery === undefined) return;
    const after = this.options.discovery.forgetAfterMs;
    let removed = 0;
    for (const b of this.registry.backends.values()) {
      if (b.origin !== 'discovery' || !idle(b)) continue;
      if (after === undefined || this.leaseMs - b.heardAtLeaseMs < after) continue;
      // One recompute for the sweep, after the loop: one per backend forgotten cost
      // 0.9 s when 3,000 leases ended together.
      this.forget(b, 'silent', false);
      removed++;
    }
    if (removed > 0) this.registry.recompute();
    for (const [server, r] of this.reservedServers)
      if (this.leaseMs >= r.untilLeaseMs) this.unreserve(server);
  }

  snapshot(): BalancerSnapshot {
    return buildSnapshot(this);
  }

  get brokerSource(): MqttSource | undefined {
    return this.source;
  }

  on<K extends keyof BalancerEvents>(
    event: K,
    listener: (...args: BalancerEvents[K]) => void,
  ): this {
    // eslint-disable-next-line @typescript-eslint/no-explicit-any
    this.events.on(event, listener as any);
    return this;
  }

  off<K extends keyof BalancerEvents>(
    event: K,
    listener: (...args: BalancerEvents[K]) => void,
  ): this {
    // eslint-disable-next-line @typescript-eslint/no-explicit-any
    this.events.off(event, listener as any);
    return this;
  }

  /**
   * Graceful close: new requests get 503 LW_GW_DRAINING at once; requests in
   * flight (or waiting for a slot) get up to `graceMs` to finish; then
   * everything stops: timers, health checks, queue (waiters get 503
   * LW_GW_CLOSED), broker, pools (a request still running is cut). No event
   * fires once it resolves.
   */
  close(options?: CloseOptions): Promise<void> {
    let opts: CloseOptions;
    try {
      opts = closeOptions(options);
    } catch (err) {
      return Promise.reject(err as GatewayError);
    }
    this.closing ??= (async () => {
      this.draining = true;
      this.flow.draining();
      if (opts.server) this.flow.noteServers(opts.server);
      for (const reject of this.readyWaiters) reject();
      this.readyWaiters.clear();
      await this.flow.idle(opts.graceMs ?? DEFAULT_CLOSE_GRACE_MS);
      this.flow.graceOver();
      this.closed = true;
      this.flow.upgrades.closeAll();
      this.events.mute();
      clearInterval(this.sweepTimer);
      this.namedServers?.close();
      if (this.loopDelay) releaseLoopDelay(this.loopDelay);
      this.checker?.close();
      this.overload?.close();
      this.acceptQueue?.close();
      this.queue.close();
      this.queueChanged();
      try {
        await this.source?.close();
      } finally {
        this.engine.close();
        this.registry.close();
        for (const b of this.retired) b.close();
        this.retired.clear();
        this.metrics.release();
      }
      // The requests just cut are answered (503 LW_GW_CLOSED) on a later tick, when their
      // backend request reports the destroyed socket. Resolving before that let a caller's
      // `process.exit()` reset those clients instead.
      await this.flow.idle(CUT_SETTLE_MS, false);
      this.flow.forgetServers();
    })();
    return this.closing;
  }
}

export { reportedBound } from './load/report-digest';

/**
 * Another agent run than the one that admitted discovered backend `b` (its registration's
 * `epochMs`): not the entry's own. A configured backend, or an unknown id, has no admitting
 * run.
 */
function otherRun(b: Backend | undefined, epochMs: number): boolean {
  return b?.origin === 'discovery' && b.runEpochMs !== undefined && epochMs !== b.runEpochMs;
}

/** No request in flight, no WebSocket open, no stream in the lane. */
function idle(b: Backend): boolean {
  return b.load.inFlight === 0 && b.openUpgrades === 0 && b.openStreams === 0;
}

/**
 * A discovered backend whose agent took it offline by its own signed word (a stop: the
 * signed `offline`): it deregistered. Not its Last Will (agentLost), which says the agent
 * died and keeps the backend routed on local signals.
 */
function departed(b: Backend): boolean {
  return b.origin === 'discovery' && b.agentState === 'offline' && !b.agentLost;
}

/** Report intervals of silence of the admitting run after which another run supersedes it. */
const SUPERSEDE_INTERVALS = 3;
/** The report interval assumed when no report gives one (the agent's default). */
const SUPERSEDE_DEFAULT_INTERVAL_MS = 1000;
/** Report intervals of silence (on the lease clock) after which an agent is silent. */
const SILENT_INTERVALS = 3;
/**
 * The least silence that makes an agent silent, whatever its interval: an agent
 * reconnecting after a broker restart (its retries, then its first report) is not
 * silent, nor one whose report was dropped by a rate bound once or twice.
 */
const SILENT_MIN_MS = 15_000;

/** Broker-connected time after which a backend never heard from is said (warnNeverHeard). */
const NEVER_HEARD_MS = 30_000;

/** Up to five ids, then how many more. */
function listIds(backends: readonly Backend[]): string {
  const shown = backends.slice(0, 5).map((b) => b.id);
  return backends.length > 5
    ? `${shown.join(', ')} and ${backends.length - 5} more`
    : shown.join(', ');
}

/** What ready() rejects with once close() has begun. */
export function closedError(): GatewayError {
  return new GatewayError('LW_GW_CLOSED', 'ready() on a balancer that is closing or closed');
}

/**
 * The allowed ranges that lie inside loopback (127.0.0.0/8, ::1/128) and
 * inside NAT64's well-known prefix (64:ff9b::/96): an address of those blocks
 * is admitted only inside one of these (specialAddress).
 */
interface ExplicitlyAllowed {
  loopback: BlockList;
  nat64: BlockList;
}

type Rule = [addr: string, bits: number, family: 'ipv4' | 'ipv6'];

function blockOf(rules: readonly Rule[]): BlockList {
  const list = new BlockList();
  for (const [addr, bits, family] of rules) list.addSubnet(addr, bits, family);
  return list;
}

const LOOPBACK: Rule[] = [
  ['127.0.0.0', 8, 'ipv4'],
  ['::1', 128, 'ipv6'],
];
const NAT64: Rule[] = [['64:ff9b::', 96, 'ipv6']];
const NAT64_BLOCK = blockOf(NAT64);
/**
 * Prefixes that wrap an IPv4 address in another way, refused outright (register
 * the IPv4 address): IPv4-compatible `::a.b.c.d` (deprecated, RFC 4291 §2.5.5.1,
 * `[::169.254.169.254]` under `::/0`) and NAT64's local-use 64:ff9b:1::/48
 * (RFC 8215), whose embedding depends on the operator's prefix length.
 */
const WRAPPED_IPV4_BLOCK = blockOf([
  ['::', 96, 'ipv6'],
  ['64:ff9b:1::', 48, 'ipv6'],
]);
/**
 * Instance metadata services outside the link-local block, refused whatever the ranges:
 * AWS's over IPv6 (Nitro, fd00:ec2::254, inside a unique-local range such as fc00::/7),
 * Alibaba Cloud's (100.100.100.200, inside the shared 100.64.0.0/10) and Oracle Cloud's
 * legacy one (192.0.0.192). A key holder registered its id at one, and the gateway sent its
 * clients' requests there (`/latest/meta-data/iam/...` where IMDSv1 answers).
 */
const METADATA_BLOCK = blockOf([
  ['fd00:ec2::254', 128, 'ipv6'],
  ['100.100.100.200', 32, 'ipv4'],
  ['192.0.0.192', 32, 'ipv4'],
]);
const METADATA = 'a cloud instance metadata address';

/**
 * The ranges that lie inside `rules`' blocks (prefix at least as long, network
 * address inside): `127.0.0.0/8` or `127.0.0.1/32` name loopback, while
 * `0.0.0.0/0`, which merely contains it, does not.
 */
function rangesInside(ranges: readonly string[], rules: readonly Rule[]): BlockList {
  const blocks = blockOf(rules);
  const inside: Rule[] = [];
  for (const range of ranges) {
    const [addr, bits] = range.split('/') as [string, string];
    const family = isIP(addr) === 6 ? 'ipv6' : 'ipv4';
    const prefix = Number(bits);
    if (rules.some(([, b, f]) => f === family && prefix >= b) && blocks.check(addr, family))
      inside.push([addr, prefix, family]);
  }
  return blockOf(inside);
}

function explicitlyAllowed(ranges: readonly string[]): ExplicitlyAllowed {
  return { loopback: rangesInside(ranges, LOOPBACK), nat64: rangesInside(ranges, NAT64) };
}

/**
 * Why a registration may not target this address, or undefined. A broad
 * range (`0.0.0.0/0`, `::/0`) also covers the link-local block, where clouds
 * serve instance metadata and credentials (169.254.169.254), the unspecified
 * and multicast addresses, which are no backend; and node's BlockList
 * matches an IPv4-mapped IPv6 address (`::ffff:169.254.169.254`) against
 * IPv6 rules, so `::/0` let any IPv4 host in under another spelling. An
 * agent registers its plain IPv4 address. These are refused whatever the
 * ranges say.
 *
 * Loopback (127.0.0.0/8, `::1`) is the gateway's own host: its status page,
 * its embedded broker, anything listening locally. NAT64's well-known prefix
 * (64:ff9b::/96) reaches whatever IPv4 address it embeds, 169.254.169.254
 * included. An address of either block is refused unless it is inside a
 * range that itself lies in the block (`explicit`), as a gateway with its
 * backends on its own host lists `127.0.0.0/8`; and a NAT64 address is
 * refused whatever the ranges when its IPv4 address would be (link-local,
 * unspecified, multicast; loopback unless so allowed).
 */
function specialAddress(
  host: string,
  family: number,
  explicit: ExplicitlyAllowed,
): string | undefined {
  const loopback = (addr: string, f: 'ipv4' | 'ipv6'): string | undefined =>
    explicit.loopback.check(addr, f)
      ? undefined
      : "loopback (the gateway's own host: list a range inside 127.0.0.0/8 or ::1/128 to allow it)";
  if (family === 4) {
    const [a, b] = host.split('.').map(Number) as [number, number];
    if (a === 169 && b === 254) return 'link-local (instance metadata lives there)';
    if (METADATA_BLOCK.check(host, 'ipv4')) return METADATA;
    if (a === 0) return 'unspecified';
    if (a >= 224) return 'multicast or reserved';
    if (a === 127) return loopback(host, 'ipv4');
    return undefined;
  }
  // WHATWG URL has normalised the literal: lower case, `::ffff:a9fe:a9fe` for every spelling.
  if (host.startsWith('::ffff:')) return 'IPv4-mapped (register the IPv4 address)';
  if (/^fe[89ab][0-9a-f]:/.test(host)) return 'link-local';
  if (/^ff[0-9a-f]{2}:/.test(host)) return 'multicast';
  if (host === '::') return 'unspecified';
  if (host === '::1') return loopback(host, 'ipv6');
  if (METADATA_BLOCK.check(host, 'ipv6')) return METADATA;
  if (WRAPPED_IPV4_BLOCK.check(host, 'ipv6'))
    return 'IPv4-compatible or local-use NAT64 (register the IPv4 address)';
  if (NAT64_BLOCK.check(host, 'ipv6')) {
    const g = ipv6Groups(host);
    const v4 = [g[6]! >> 8, g[6]! & 255, g[7]! >> 8, g[7]! & 255].join('.');
    const embedded = specialAddress(v4, 4, explicit);
    if (embedded) return `NAT64 of ${v4}, ${embedded}`;
    if (!explicit.nat64.check(host, 'ipv6'))
      return 'NAT64 (64:ff9b::/96: register the IPv4 address, or list a range inside 64:ff9b::/96)';
  }
  return undefined;
}

/**
 * `socket` (a request's, as the gateway received it) is the other end of one of `b`'s pooled
 * connections: the same four addresses and ports, crossed. A TCP connection's four are
 * unique on a host. The client's end alone was not proof: Linux gives one local port to
 * connections to different destinations, so a client on the gateway's host could get the
 * port of a pooled connection (about 4,000 tries, 0.2 s) and, with the id a backend echoed,
 * take that backend out.
 */
function ownConnection(b: Backend, socket: Socket): boolean {
  const port = socket.remotePort;
  const address = unmapped(socket.remoteAddress);
  const localPort = socket.localPort;
  const localAddress = unmapped(socket.localAddress);
  for (const list of Object.values(b.agent.sockets)) {
    for (const s of list ?? []) {
      if (
        s.localPort === port &&
        s.remotePort === localPort &&
        unmapped(s.localAddress) === address &&
        unmapped(s.remoteAddress) === localAddress
      )
        return true;
    }
  }
  return false;
}
