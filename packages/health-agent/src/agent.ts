import { EventEmitter } from 'node:events';
import type { MqttClient } from 'mqtt';
import {
  DEFAULT_MAX_CLOCK_SKEW_MS,
  createEncoder,
  describeBrokerError,
  isBrokerHangUp,
  NO_CONNACK_HINT,
  topicFor,
  type BackendState,
  type CgroupMetrics,
  type EncodedMessage,
  type Encoder,
  type MetricsReport,
  type QueueMetrics,
} from '@loadwise/protocol';
import { AgentError } from './errors';
import { EarlyReporter, outstandingOf } from './early-report';
import { connectBroker, defaultClientId, lastWillOption } from './mqtt-publisher';
import { probe, type ProbeResult } from './probe';
import { QUEUE_SOURCES, createQueueReader } from './queue';
import type { QueueReading, QueueSourceReader, RiseReading } from './queue/types';
import { CgroupSampler } from './samplers/cgroup';
import { HostSampler } from './samplers/host';
import { ProcessSampler, type ProcessSample } from './samplers/process';
import { createScheduler, type Scheduler } from './scheduler';
import { dropInvalidBlocks } from './report-guard';
import { healthVerdict } from './verdict';
import { withoutPassword } from './without-password';
import {
  SAMPLE_SHARE_OF_INTERVAL,
  resolveAgentOptions,
  type AgentOptions,
  type ResolvedAgentOptions,
} from './options';

/**
 * How often an advertising agent (`advertiseUrl`) registers again: well
 * within a gateway's maxRetainedAgeMs (60 s by default), so a gateway that
 * starts reads a retained registration it accepts, and far within
 * discovery.forgetAfterMs (10 min), whose lease each registration renews.
 */
export const REGISTRATION_RENEW_MS = 20_000;

/**
 * Longest stop() waits, after the grace period, for the broker to take the
 * offline status (and the registration clear) and the clean disconnect:
 * min(grace, 2 s), at least 300 ms. A broker that stops acking, or a connection
 * that drops on the way, then gets a forced end: SIGTERM must end the process.
 */
export function stopFlushMs(graceMs: number): number {
  return Math.max(300, Math.min(graceMs, 2000));
}

export type MetricsBody = Omit<
  MetricsReport,
  'v' | 'kind' | 'backendId' | 'epochMs' | 'seq' | 'ts'
>;

/** The outstanding requests of the last published report: an early report's rise is measured from it. */
interface Published {
  outstanding: number | undefined;
  /** performance.now() when it went out: the early reporter's gap runs on the monotonic clock. */
  atMs: number;
}

/** The last scheduled sample, published or not: an early report repeats all but its queue and traffic. */
interface Sampled {
  body: MetricsBody;
  /** performance.now() when it was taken. */
  atMs: number;
}

/** Typed events of an agent (`agent.on('sample', ...)`). */
export interface AgentEvents {
  /**
   * Every report: taken on schedule, or early (`early`: outstanding requests
   * rose, early-report.ts); `published` is false when it was dropped (broker unreachable).
   */
  sample: [report: MetricsReport, info: { published: boolean; early?: boolean }];
  /** Connected (or reconnected) to the broker; the status was just published. */
  connect: [];
  /** Lost the broker; mqtt.js keeps retrying every reconnectPeriodMs. */
  offline: [];
  /** Lifecycle state changed (online → draining → offline). */
  state: [state: BackendState];
  /** A sample or source failed in a way worth logging (queue source down, host read failed, ...). */
  warning: [message: string];
  /** Broker or TLS errors reported by mqtt.js; the agent keeps running. Without a listener they become warnings. */
  error: [error: Error];
  /** A scheduled tick was skipped because the previous sample was still running. */
  overlap: [];
}

export interface Agent extends EventEmitter<AgentEvents> {
  readonly backendId: string;
  readonly options: ResolvedAgentOptions;
  readonly state: BackendState;
  /** True while the MQTT connection is up. */
  readonly connected: boolean;
  readonly stats: {
    published: number;
    dropped: number;
    overlaps: number;
    connects: number;
    /** Early reports published (also counted in `published`). */
    early: number;
    /**
     * Agent runs started over because the clock stepped back by more than the
     * gateways' skew window behind the run's start (`epochMs`): each is a new
     * epoch, sequence from 0, and a new Last Will (LW_AGENT_CLOCK_BEHIND_RUN warning).
     */
    newRuns: number;
  };
  /** Connects (in the background; retries forever) and starts the schedule. */
  start(): Promise<void>;
  /** Takes one sample now, without publishing it. */
  sample(): Promise<MetricsBody>;
  /** Takes one sample now and stamps it as the agent would publish it (uses a sequence number). */
  sampleReport(): Promise<MetricsReport>;
  /** Planned maintenance: publish `draining` (retained) and keep reporting with state draining. */
  drain(reason?: string): Promise<void>;
  /** Ends planned maintenance: publish `online` (retained) again; a no-op unless draining by drain(). */
  undrain(): Promise<void>;
  /** `draining`, wait graceMs, `offline` (retained), disconnect cleanly. */
  stop(opts?: { graceMs?: number }): Promise<void>;
}

class HealthAgent extends EventEmitter<AgentEvents> implements Agent {
  readonly options: ResolvedAgentOptions;
  readonly stats = {
    published: 0,
    dropped: 0,
    overlaps: 0,
    connects: 0,
    early: 0,
    newRuns: 0,
  };
  /** The current run's encoder: replaced by runEncoder() when the clock steps back past its epoch. */
  private encoder: Encoder;
  private readonly host: HostSampler;
  private readonly process: ProcessSampler | undefined;
  private readonly cgroup: CgroupSampler | undefined;
  private readonly queue: QueueSourceReader | undefined;
  private readonly scheduler: Scheduler;
  private client: MqttClient | undefined;
  private _state: BackendState = 'online';
  private drainReason: string | undefined;
  private started = false;
  private stopping: Promise<void> | undefined;
  private lastProcessPid: number | undefined;
  private primed: Promise<void> | undefined;
  private readonly early: EarlyReporter | undefined;
  private published: Published | undefined;
  private sampled: Sampled | undefined;
  private registrationTimer: NodeJS.Timeout | undefined;
  /** withdrawSuperseded() is removing a publish: its callback's error is no failure. */
  private withdrawing = false;

  constructor(input: AgentOptions) {
    super();
    const o = resolveAgentOptions(input);
    this.options = o;
    this.encoder = createEncoder({ backendId: o.backendId, prefix: o.prefix, key: o.signingKey });
    this.host = new HostSampler({ source: o.hostSource, procRoot: o.procRoot });
    if (o.service) {
      this.process = new ProcessSampler({
        pid: o.service.pid,
        pidFile: o.service.pidFile,
        procRoot: o.procRoot,
      });
    }
    if (o.cgroup) {
      this.cgroup = new CgroupSampler({
        root: o.cgroup.root,
        procRoot: o.procRoot,
        pid: () => this.lastProcessPid,
      });
    }
    if (o.queue) {
      this.queue = createQueueReader(QUEUE_SOURCES, o.queue, { procRoot: o.procRoot });
    }
    this.scheduler = createScheduler({
      intervalMs: o.cron ? undefined : o.intervalMs,
      cron: o.cron,
      offsetMs: o.offsetMs,
      tick: () => this.tick(),
      onSkip: () => {
        this.stats.overlaps++;
        this.emit('overlap');
      },
    });
    const watch = this.queue?.waitForRise;
    if (o.early && watch && o.broker) {
      const queue = this.queue!;
      this.early = new EarlyReporter({
        source: { waitForRise: watch.bind(queue) },
        rise: o.early.rise,
        minGapMs: o.early.minGapMs,
        waitMs: o.intervalMs,
        retryMs: Math.min(o.intervalMs, 1000),
        last: () => {
          const p = this.published;
          return p?.outstanding === undefined
            ? undefined
            : { outstanding: p.outstanding, atMs: p.atMs };
        },
        publish: (reading) => this.publishEarly(reading),
        onError: (err) => this.emit('warning', `early-report watch failed: ${err.message}`),
      });
    }
  }

  get backendId(): string {
    return this.options.backendId;
  }

  get state(): BackendState {
    return this._state;
  }

  get connected(): boolean {
    return this.client?.connected === true;
  }

  /** First CPU readings so the first real sample has a delta. */
  private prime(): Promise<void> {
    this.primed ??= (async () => {
      await Promise.all([
        this.host.prime().catch(() => undefined),
        this.sampleService().catch(() => undefined),
      ]);
    })();
    return this.primed;
  }

  async start(): Promise<void> {
    if (this.started) return;
    if (this.stopping)
      throw new AgentError('LW_AGENT_NOT_STARTED', 'agent was stopped; create a new one');
    this.started = true;
    await this.prime();
    // stop() during the priming: connecting now would leave a client (and timers) nobody ends.
    if (this.stopping) return;
    const b = this.options.broker;
    if (b) {
      const clientId = b.clientId ?? defaultClientId(this.backendId);
      const client = connectBroker(b, clientId, this.lastWill());
      this.client = client;
      // Whether this connection attempt was accepted, and whether it failed in a way that says
      // why of its own: a broker that closes before its CONNACK (a TLS or WebSocket port, a
      // connection limit, a client id or protocol version it refuses) says nothing else, and
      // the agent logged only "connection lost" while it never was connected. A reset is such
      // a close too (Mosquitto's TLS port given as mqtt:// resets the connection): the hint
      // was given only when no error came first, so never there.
      let accepted = false;
      let explained = false;
      client.on('connect', () => {
        accepted = true;
        this.stats.connects++;
        // Retained status on every (re)connect: a broker restart may have lost
        // retained state, and the Last Will may have replaced it meanwhile.
        this.publishStatus();
        this.publishRegistration();
        this.emit('connect');
      });
      // Before mqtt.js reconnects (reconnectPeriodMs after this): see withdrawSuperseded.
      client.on('close', () => {
        this.withdrawSuperseded(client);
        if (!accepted && !explained && !client.disconnecting && !this.stopping)
          this.emit(
            'warning',
            `broker ${withoutPassword(b.url)} closed the connection before accepting it (no CONNACK): ` +
              NO_CONNACK_HINT,
          );
        accepted = false;
        explained = false;
      });
      client.on('offline', () => this.emit('offline'));
      // An EventEmitter 'error' without a listener throws; an embedding app
      // that listens only for 'warning' must not crash on ECONNREFUSED.
      client.on('error', (err) => {
        if (!isBrokerHangUp(err)) explained = true;
        if (this.listenerCount('error') > 0) this.emit('error', err);
        // With its code, as the gateway logs it (SELF_SIGNED_CERT_IN_CHAIN: ...).
        else this.emit('warning', `broker: ${describeBrokerError(err)}`);
      });
    }
    if (b && this.options.advertiseUrl !== undefined) {
      this.registrationTimer = setInterval(
        () => this.publishRegistration(),
        REGISTRATION_RENEW_MS,
      ).unref();
    }
    this.scheduler.start();
    this.early?.start();
  }

  /** The Last Will of the current run: the broker publishes it if the agent vanishes. */
  private lastWill(): EncodedMessage {
    return this.runEncoder().status('offline', { will: true, reason: 'agent connection lost' });
  }

  /**
   * The encoder of the current run, which stamps every message. A run's `epochMs` is the
   * clock when it started: an agent started while its clock was fast (booted before NTP
   * synced) kept that epoch after the clock was stepped back, and every gateway dropped
   * all its messages (LW_PROTO_CLOCK_SKEW: epochMs ahead of their clock by more than
   * maxClockSkewMs) until the agent was restarted. Once the clock is that far behind the
   * epoch, the agent starts a new run: a new epoch (sequence from 0) and a new Last Will,
   * on a new connection, whose `connect` publishes the retained status and registration as
   * a start does. No gateway with a correct clock accepted the future epoch, so the older
   * epoch of the new run cannot make its messages replays there.
   */
  private runEncoder(): Encoder {
    const now = Date.now();
    const ahead = this.encoder.epochMs - now;
    if (ahead <= DEFAULT_MAX_CLOCK_SKEW_MS) return this.encoder;
    const o = this.options;
    this.encoder = createEncoder({ backendId: o.backendId, prefix: o.prefix, key: o.signingKey });
    this.stats.newRuns++;
    this.emit(
      'warning',
      `LW_AGENT_CLOCK_BEHIND_RUN: the clock stepped back ${Math.round(ahead / 1000)} s behind this agent run's start; gateways drop messages whose epochMs is more than ${DEFAULT_MAX_CLOCK_SKEW_MS / 1000} s ahead of them: starting a new run (epochMs ${this.encoder.epochMs})`,
    );
    const c = this.client;
    // The broker holds the Last Will given at CONNECT: a new one needs a new connection.
    // reconnect() ends this one cleanly (the broker discards the old will [MQTT-3.14.4-3])
    // and connects again with the new one; a client offline now connects with it when it
    // retries. Not while stopping: stop() leaves on the connection it has.
    if (c && !this.stopping) {
      c.options.will = lastWillOption(this.lastWill());
      if (c.connected) c.reconnect();
    }
    return this.encoder;
  }

  /**
   * Drops the status and registration publishes a lost connection left unacknowledged.
   * mqtt.js keeps an unacknowledged QoS 1 publish and sends it again on the next
   * connection, before anything published after it, and emits `connect`, on which the
   * agent publishes its current status, only once the broker has acknowledged all of
   * them. A `draining` the broker never acknowledged (it froze, the path went silent)
   * followed by an undrain while the agent was cut off reached every subscriber before
   * the `online` of now, and a gateway took it: its (epochMs, seq) was newer than any it
   * had heard, so the replay guard passed it, and the backend left rotation (after a
   * drain, came back) until the current status came. Every connect publishes the current
   * status and registration, so these are superseded: none is sent again. Not while the
   * client ends (stop(), a new run's reconnect): its publishes, the offline status last,
   * are the newest there are.
   */
  private withdrawSuperseded(c: MqttClient): void {
    // stop() began: its publishes (draining, the registration cleared, offline) are the
    // newest there are, and it waits for them; a connection lost meanwhile must not drop
    // them (the registration stayed retained, and the Last Will said "connection lost").
    if (c.disconnecting || this.stopping) return;
    const topics = new Set([
      topicFor(this.options.prefix, this.backendId, 'status'),
      topicFor(this.options.prefix, this.backendId, 'register'),
    ]);
    for (const key of Object.keys(c.outgoing)) {
      const id = Number(key);
      c.outgoingStore.get({ messageId: id }, (err, packet) => {
        if (!err && packet?.cmd === 'publish' && topics.has(packet.topic)) {
          // Its callback runs now, with "Message removed": not a failure to report.
          this.withdrawing = true;
          try {
            c.removeOutgoingMessage(id);
          } finally {
            this.withdrawing = false;
          }
        }
      });
    }
  }

  /** Discovery: the signed, retained registration (advertiseUrl), while not offline. */
  private publishRegistration(): void {
    const url = this.options.advertiseUrl;
    const c = this.client;
    if (url === undefined || !c?.connected || this._state === 'offline') return;
    const encoder = this.runEncoder();
    if (!open(c)) return; // a new run: registered again on its connect
    const msg = encoder.registration(url);
    c.publish(msg.topic, msg.payload, { qos: 1, retain: true }, (err) => {
      if (err && !this.withdrawing)
        this.emit('warning', `registration publish failed: ${err.message}`);
    });
  }

  private publishStatus(): void {
    const c = this.client;
    if (!c?.connected) return; // re-sent on the next connect; never queued to arrive late
    const encoder = this.runEncoder();
    if (!open(c)) return; // a new run: its status goes out on its connect
    const msg = encoder.status(this._state, this.drainReason ? { reason: this.drainReason } : {});
    c.publish(msg.topic, msg.payload, { qos: 1, retain: true }, (err) => {
      if (err && !this.withdrawing) this.emit('warning', `status publish failed: ${err.message}`);
    });
  }

  private setState(state: BackendState, reason?: string): void {
    if (this._state === state) return;
    this._state = state;
    this.drainReason = reason;
    this.emit('state', state);
    this.publishStatus();
  }

  async drain(reason = 'planned maintenance'): Promise<void> {
    if (this._state !== 'online') return;
    this.setState('draining', reason.slice(0, 200));
  }

  async undrain(): Promise<void> {
    // Not while stopping: stop() also reports draining, on its way to offline.
    if (this._state !== 'draining' || this.stopping) return;
    this.setState('online');
  }

  private async tick(): Promise<void> {
    let body: MetricsBody;
    try {
      body = await this.sample();
    } catch (err) {
      this.emit('warning', `sample failed: ${(err as Error).message}`);
      return;
    }
    if (this.stopping && this._state === 'offline') return;
    const encoded = this.encodeReport(body, 'sample');
    if (!encoded) return;
    // Kept whether or not it goes out: after a broker outage the first early
    // report must carry the health and CPU read during it, not those of
    // before it.
    this.sampled = { body, atMs: performance.now() };
    const published = this.send(encoded.topic, encoded.payload);
    if (published) {
      this.published = { outstanding: outstandingOf(body.queue), atMs: performance.now() };
    }
    this.emit('sample', encoded.message, { published });
  }

  /** Drops the optional blocks of `body` that break a protocol rule (report-guard.ts), with a warning. */
  private guard(body: MetricsBody, what: string): void {
    for (const block of dropInvalidBlocks(body)) {
      this.emit('warning', `${what} sent without ${block}: a reading out of the protocol's range`);
    }
  }

  /** `body` guarded and encoded; undefined (with a warning) if it still cannot be. */
  private encodeReport(body: MetricsBody, what: string): EncodedMessage<MetricsReport> | undefined {
    this.guard(body, what);
    try {
      return this.runEncoder().metrics(body);
    } catch (err) {
      this.emit('warning', `cannot encode ${what}: ${(err as Error).message}`);
      return undefined;
    }
  }

  /** Publishes a metrics payload if connected; counts it as published or dropped. */
  private send(topic: string, payload: string | Buffer): boolean {
    const c = this.client;
    // Connected-at-send only: with queueQoSZero off mqtt.js would drop it anyway,
    // and the count of dropped samples is worth reporting. Not while the client
    // leaves the connection (a new run's reconnect): mqtt.js refuses it then.
    const published = open(c);
    if (published) {
      c!.publish(topic, payload, { qos: 0, retain: false });
      this.stats.published++;
    } else {
      this.stats.dropped++;
    }
    return published;
  }

  /**
   * An early report: the fresh queue and traffic of `reading`, the rest as the
   * last scheduled sample said it (host, process and cgroup CPU are rates over
   * an interval; re-reading them after a few ms would say nothing new and cost
   * /proc reads). None while that sample is more than two intervals old (the
   * sampling fails or hangs): its figures would go out as new.
   */
  private publishEarly(reading: RiseReading): boolean {
    const last = this.sampled;
    if (!this.published || !last || (this.stopping && this._state === 'offline')) return false;
    if (performance.now() - last.atMs > 2 * this.options.intervalMs) return false;
    const body: MetricsBody = { ...last.body, state: this._state, early: true };
    if (reading.queue) body.queue = reading.queue as QueueMetrics;
    if (reading.traffic) body.traffic = reading.traffic;
    const limit = this.options.concurrencyLimit ?? reading.concurrencyLimit;
    if (limit !== undefined) body.concurrencyLimit = limit;
    // Guarded before the verdict, as a sample is: a queue the report cannot carry is no queue
    // to call full.
    this.guard(body, 'early report');
    // The verdict again, from this queue: a burst that filled the tracker's queue went out
    // as `queued: 4` (full) beside the last sample's "up". A down verdict stands as it was
    // (its causes are the probe's and the process's, which an early report does not read);
    // the probe's figures are the last sample's.
    const h = last.body.health;
    if (h.verdict !== 'down') {
      const probed = h.probeLatencyMs !== undefined || h.probeStatus !== undefined;
      body.health = healthVerdict(
        body,
        this.options.thresholds,
        probed ? { ok: true, latencyMs: h.probeLatencyMs, status: h.probeStatus } : undefined,
        [],
        body.queue ? reading.maxQueue : undefined,
      );
    }
    const encoded = this.encodeReport(body, 'early report');
    if (!encoded) return false;
    const published = this.send(encoded.topic, encoded.payload);
    if (published) {
      this.stats.early++;
      this.published = { outstanding: outstandingOf(body.queue), atMs: performance.now() };
    }
    this.emit('sample', encoded.message, { published, early: true });
    return published;
  }

  async sample(): Promise<MetricsBody> {
    await this.prime();
    const o = this.options;
    const down: string[] = [];
    const startedMs = performance.now();
    const queueRead = this.queue?.read().catch((err: Error): QueueReading | undefined => {
      this.emit('warning', `queue source (${o.queue?.source}) failed: ${err.message}`);
      return undefined;
    });
    // The kernel source counts every connection to the backend's port: read beside the
    // probe, it counted the probe's own as an open connection and, not yet accepted, as
    // accept backlog (an idle app at 250 ms showed a backlog in 6 of 36 reports, a busy one
    // in 25; gateways add the backlog to outstanding). It is read first, in a few ms, and the
    // probe gets what is left of the sample's share of the interval (options.ts).
    const p = o.probe;
    const probed = !p
      ? Promise.resolve<ProbeResult | undefined>(undefined)
      : this.queue?.countsConnections && queueRead
        ? queueRead.then(() => {
            // At least half the share whatever the read took: a slow table read (a host
            // with many sockets) left the probe a few ms, and a healthy backend was `down`
            // (an 800 ms read at 1 s: "timed out after 86 ms"). Such a sample may then run
            // past the share by the read's excess over its half.
            const share = o.intervalMs * SAMPLE_SHARE_OF_INTERVAL;
            const left = Math.floor(share - (performance.now() - startedMs));
            const timeoutMs = Math.min(p.timeoutMs, Math.max(left, Math.floor(share / 2)));
            return probe({ ...p, timeoutMs: Math.max(1, timeoutMs) });
          })
        : probe(p);
    const [host, [proc, cgroup], queue, probeResult] = await Promise.all([
      this.host.sample(),
      this.sampleService((err) => this.emit('warning', `cgroup read failed: ${err.message}`)),
      queueRead,
      probed,
    ]);
    const body: MetricsBody = {
      intervalMs: o.intervalMs,
      state: this._state,
      host,
      health: { verdict: 'up' },
    };
    if (proc?.ok) {
      body.process = proc.metrics;
    } else if (proc) {
      down.push(proc.reason);
    }
    if (cgroup) body.cgroup = cgroup;
    if (queue?.queue) body.queue = queue.queue as QueueMetrics;
    if (queue?.traffic) body.traffic = queue.traffic;
    const limit = o.concurrencyLimit ?? queue?.concurrencyLimit;
    if (limit !== undefined) body.concurrencyLimit = limit;
    // The verdict is judged on the figures the report carries: guarded first. Judged on the
    // raw reading, a tracker's `queued: 1e308` (or 9.5) beside `maxQueue: 10` went out as
    // `degraded`, "request queue full (1e+308)", in a report whose queue block the guard had
    // dropped as out of range: a queue unknown, said full, and penalised by the gateways.
    this.guard(body, 'sample');
    body.health = healthVerdict(
      body,
      o.thresholds,
      probeResult,
      down,
      body.queue ? queue?.maxQueue : undefined,
    );
    return body;
  }

  /**
   * The service's process, then its cgroup (v2), which follows the pid that read found. Read
   * side by side, the priming and the first report's cgroup reads came before any pid was
   * known: the first report paired the service's process with another group's limits (the
   * agent's own unit's, 0.1 core, with --service-pid-file). A cgroup read that fails is
   * undefined, after `onCgroupError`.
   */
  private async sampleService(
    onCgroupError?: (err: Error) => void,
  ): Promise<[ProcessSample | undefined, CgroupMetrics | undefined]> {
    const proc = await this.process?.sample();
    if (proc?.ok) this.lastProcessPid = proc.metrics.pid;
    const cgroup = await this.cgroup?.sample().catch((err: Error) => {
      onCgroupError?.(err);
      return undefined;
    });
    return [proc, cgroup];
  }

  async sampleReport(): Promise<MetricsReport> {
    const body = await this.sample();
    this.guard(body, 'sample');
    return this.runEncoder().metrics(body).message;
  }

  stop(opts: { graceMs?: number } = {}): Promise<void> {
    this.stopping ??= this.doStop(opts.graceMs ?? this.options.drainGraceMs);
    return this.stopping;
  }

  private async doStop(graceMs: number): Promise<void> {
    const c = this.client;
    if (this.started && c) {
      if (this._state === 'online') this.setState('draining', 'agent stopping');
      // Keep reporting (state draining) through the grace period, so gateways
      // see in-flight requests finish, then say offline and leave.
      if (graceMs > 0) await new Promise((r) => setTimeout(r, graceMs).unref());
    }
    clearInterval(this.registrationTimer);
    this.scheduler.stop();
    await this.early?.stop();
    this.queue?.close?.();
    this._state = 'offline';
    this.emit('state', 'offline');
    if (c) {
      // QoS 1 waits for a PUBACK and a clean end for the outgoing queue and the
      // broker's close: a broker that stops acking would hold stop() for good.
      let timer: NodeJS.Timeout | undefined;
      const clean = await Promise.race([
        this.leaveCleanly(c),
        new Promise<false>((resolve) => {
          timer = setTimeout(() => resolve(false), stopFlushMs(graceMs));
        }),
      ]);
      clearTimeout(timer);
      if (!clean) await forceEnd(c);
    }
  }

  /** Offline status, registration cleared, clean DISCONNECT; false when not connected for it. */
  private async leaveCleanly(c: MqttClient): Promise<boolean> {
    if (c.connected && this.options.advertiseUrl !== undefined) {
      // An empty retained payload clears the registration [MQTT-3.3.1-10]: a gateway
      // that starts later does not add a backend that is gone.
      const topic = topicFor(this.options.prefix, this.backendId, 'register');
      await c.publishAsync(topic, '', { qos: 1, retain: true }).catch(() => undefined);
    }
    if (c.connected) {
      const msg = this.runEncoder().status('offline', { reason: 'agent stopped' });
      await c.publishAsync(msg.topic, msg.payload, { qos: 1, retain: true }).catch(() => undefined);
    }
    // A clean DISCONNECT: the broker discards the Last Will [MQTT-3.14.4-3].
    // Not when the broker is unreachable: forceEnd() then.
    if (!c.connected) return false;
    await new Promise<void>((resolve) => c.end(false, {}, () => resolve()));
    return true;
  }
}

/** Connected, and not leaving the connection (mqtt.js refuses a publish while it does). */
function open(c: MqttClient | undefined): c is MqttClient {
  return c?.connected === true && !c.disconnecting;
}

/**
 * Ends the connection now, without DISCONNECT (the broker publishes the Last
 * Will, offline). end(true) is a no-op while a clean end is pending (mqtt.js
 * answers at once when already disconnecting): the stream is destroyed under it.
 */
function forceEnd(c: MqttClient): Promise<void> {
  return new Promise<void>((resolve) => {
    const stream = c.stream;
    if (!c.disconnecting) c.end(true, {}, () => resolve());
    else if (!stream || stream.closed) resolve();
    else {
      stream.once('close', () => resolve());
      stream.destroy();
    }
  });
}

/** Creates an agent (validates every option now; throws AgentError LW_AGENT_INVALID_OPTION). */
export function createAgent(options: AgentOptions): Agent {
  return new HealthAgent(options);
}
