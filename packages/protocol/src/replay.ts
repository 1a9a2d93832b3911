import type { ProtocolErrorCode } from './errors';
import type { Message } from './messages';

export const DEFAULT_MAX_CLOCK_SKEW_MS = 30_000;
/**
 * How old a retained message may be. Agents publish their status retained on
 * every (re)connect and state change, and repeat their state in every metrics
 * report, so a gateway that ignores an older retained status learns the state
 * from the next report, one interval later, instead of trusting a claim
 * (`offline`, `draining`) that may have outlived its agent by days.
 */
export const DEFAULT_MAX_RETAINED_AGE_MS = 60_000;
export const DEFAULT_MAX_TRACKED_BACKENDS = 100_000;
/**
 * How close behind the newest accepted message a live message overtaken in delivery may be:
 * sent at most this long before it (by the agent's clock) and received at most this long
 * after it (by the reader's), see ReplayGuard.judge (LW_PROTO_OVERTAKEN).
 */
export const OVERTAKEN_WINDOW_MS = 2_000;

export interface ReplayGuardOptions {
  /** Reject timestamps further than this from the local clock. */
  maxClockSkewMs: number;
  /** Reject retained messages (other than the Last Will) older than this. */
  maxRetainedAgeMs: number;
  maxTrackedBackends: number;
  now: () => number;
}

export interface CheckMeta {
  /** The MQTT retain flag of the delivered message. */
  retained: boolean;
  /** The message carried a signature the decoder verified. */
  signed: boolean;
}

/** An agent run's place: `(epochMs, seq)` of one of its messages. */
interface Mark {
  epochMs: number;
  seq: number;
}

interface Last {
  /**
   * The newest message the reader took (accept), or that check() passed: the backend's
   * order. Undefined while only held messages were seen.
   */
  taken: Mark | undefined;
  /**
   * Of the message that last moved `taken`: its `ts` (the agent's clock) and when it was
   * taken (the reader's clock). Undefined when `taken` was set by hold() (no message).
   */
  takenTs: number | undefined;
  takenAtMs: number;
  /** The newest `seq` taken per message kind (topic), in `taken`'s run. */
  takenByKind: Partial<Record<Message['kind'], number>>;
  /**
   * The newest message of the agent runs the reader did not take (hold): another run than
   * the one it admitted, whose registration it refused or has not seen yet. Their
   * messages, and those of any earlier run held before, are ordered by it and never move
   * `taken`, so a second agent for one id whose registration was refused can neither make
   * the admitted agent's messages replays nor have its own captured ones applied again.
   */
  held: Mark | undefined;
  seenAtMs: number;
}

/** `a` comes after `b` in the order of one backend's messages. */
function after(a: Mark, b: Mark): boolean {
  return a.epochMs > b.epochMs || (a.epochMs === b.epochMs && a.seq > b.seq);
}

/**
 * How long the guard must remember a backend's last accepted `(epochMs, seq)`
 * so that none of its earlier messages can be accepted again: a message is
 * acceptable until its `ts` plus `max(maxRetainedAgeMs, maxClockSkewMs)`, and
 * an accepted `ts` may lead the local clock by up to `maxClockSkewMs`.
 */
export function replayRetentionMs(
  opts: Pick<ReplayGuardOptions, 'maxClockSkewMs' | 'maxRetainedAgeMs'>,
): number {
  return Math.max(opts.maxRetainedAgeMs, opts.maxClockSkewMs) + opts.maxClockSkewMs;
}

/** The agent's Last Will: an `offline` status marked `will`, built when the agent connected. */
export function isLastWill(message: Message): boolean {
  return message.kind === 'status' && message.will === true && message.state === 'offline';
}

/**
 * Time and order rules of every decoded message (docs/protocol.md, "Signing
 * and replay protection"), checked in this order so nothing a message claims
 * about the future can advance any state:
 *
 * 1. Time, for every message, signed or not: `ts` and `epochMs` may not be
 *    more than `maxClockSkewMs` ahead of the local clock (an agent cannot have
 *    started, or sent, in the future); a live message may not be more than
 *    `maxClockSkewMs` old; a retained one (delivered at subscribe time, old by
 *    design [MQTT-3.3.1-8]) not more than `maxRetainedAgeMs` old
 *    (LW_PROTO_STALE).
 * 2. Order, for verified signed messages only: `(epochMs, seq)` must be
 *    strictly newer than the last accepted one of the backend. Only a verified
 *    signed message is remembered: an unsigned one can be forged by anyone on
 *    the broker, and if it could move the high-water mark a single forged
 *    `(epochMs, seq)` far ahead would make every genuine report a "replay".
 *    Unsigned messages are neither checked against nor recorded in this state.
 *    A reader that refuses a message's agent run only after parsing it (a gateway
 *    refusing a second agent's registration for an admitted id) judges (judge) and
 *    settles: accept() moves the order, hold() remembers the message apart as the
 *    newest of the runs it did not take. A message of another run than the taken
 *    one must then be newer than the held one too: that run's captured messages,
 *    and those of any run held before it, stay replays, while the taken run's go on.
 *
 * A backend's state is kept for `retentionMs(opts)` after its last accepted
 * message, `max(maxRetainedAgeMs, maxClockSkewMs) + maxClockSkewMs`: a
 * message the guard has seen had a `ts` at most `maxClockSkewMs` ahead of the
 * local clock when it was accepted, and stays acceptable until `ts` plus the
 * larger of the two age bounds (retained messages are judged by
 * `maxRetainedAgeMs`, and may be delivered again on any resubscribe). Only
 * then can the state be forgotten without opening a hole; forgetting it then
 * also lets an agent whose clock stepped backwards across a restart be heard
 * again. (It used to be forgotten after twice the skew window, 60 s, while a
 * retained copy from an agent 20 s ahead was acceptable for 80 s: replayed as
 * retained after the agent fell silent, a captured `draining` was accepted.)
 *
 * The Last Will is fixed when the agent connects, so its `ts` (and `seq`) are
 * old when it fires: it skips the staleness bounds (not the future bound) and
 * is judged by its epoch instead: it must come from the current agent run or a
 * newer one. Its effect is benign by design (the gateway keeps routing to the
 * backend on local signals), so an old will can do no more than the failure it
 * announces. It does not advance the sequence.
 */
export class ReplayGuard {
  /** Per backend, in order of the last accepted message (least recently heard first). */
  private readonly last = new Map<string, Last>();
  private readonly retentionMs: number;

  constructor(private readonly opts: ReplayGuardOptions) {
    this.retentionMs = replayRetentionMs(opts);
  }

  /**
   * The rules, and the order state moved by a message they accept (signed, not a Last
   * Will): judge() then accept(). A reader that may refuse a message's agent run after it
   * is parsed (a gateway refusing its registration) judges, and settles each signed
   * message the rules passed with accept() or hold().
   */
  check(message: Message, meta: CheckMeta): ProtocolErrorCode | undefined {
    const code = this.judge(message, meta);
    if (code === undefined && meta.signed) this.accept(message);
    return code;
  }

  /** The time and order rules, without moving the order state (check, accept, hold). */
  judge(message: Message, meta: CheckMeta): ProtocolErrorCode | undefined {
    const now = this.opts.now();
    const skew = this.opts.maxClockSkewMs;
    const isWill = isLastWill(message);
    if (message.ts > now + skew || message.epochMs > now + skew) return 'LW_PROTO_CLOCK_SKEW';
    if (!isWill) {
      if (meta.retained) {
        if (message.ts < now - this.opts.maxRetainedAgeMs) return 'LW_PROTO_STALE';
      } else if (message.ts < now - skew) {
        return 'LW_PROTO_CLOCK_SKEW';
      }
    }
    if (!meta.signed) return undefined;

    const last = this.live(message.backendId, now);
    // Not newer, and retained: the broker's copy of the topic's last message, which it
    // delivers again on every subscribe (every reconnect of this gateway). This gateway
    // has heard it, or newer, already: dropped as what it is, not as a replay, which the
    // operator's alert on LW_PROTO_REPLAY took for an attack once per backend on every
    // broker blip.
    const old = meta.retained ? 'LW_PROTO_RETAINED_SUPERSEDED' : 'LW_PROTO_REPLAY';
    const taken = last?.taken;
    if (isWill) {
      return taken && message.epochMs < taken.epochMs ? old : undefined;
    }
    if (taken && !after(message, taken)) {
      return !meta.retained && this.overtaken(message, last!, now) ? 'LW_PROTO_OVERTAKEN' : old;
    }
    // Another run than the taken one: after every held message too. A held run's own
    // messages, captured and sent again, and those of a run held before it (an earlier
    // refused run of the same misconfigured agent) are replays.
    const held = last?.held;
    if (held && message.epochMs !== taken?.epochMs && !after(message, held)) return old;
    return undefined;
  }

  /**
   * A live message of the taken run that is not newer than the taken one, but was
   * overtaken in delivery by it, not captured and sent again: MQTT orders the messages of
   * one topic, not those of one client across topics, and a broker may deliver an agent's
   * QoS 0 report ahead of the QoS 1 status it published just before (aedes, the quick
   * start's embedded broker, handles the packets of one read concurrently, and the QoS 1
   * path takes more turns: the quick start warned of a replay of `seq 1`, the agent's
   * first status, once in about 30 starts). It is one the reader has never taken (newer
   * than every taken message of its kind), sent at most OVERTAKEN_WINDOW_MS before the
   * taken one and received at most that long after it. Dropped all the same (the order
   * stays strict: the newer message carries the agent's state), as what it is, not as a
   * replay: a copy of a taken message, or a message sent again later, still is.
   */
  private overtaken(message: Message, last: Last, now: number): boolean {
    const taken = last.taken!;
    if (message.epochMs !== taken.epochMs || last.takenTs === undefined) return false;
    const kindSeq = last.takenByKind[message.kind];
    if (kindSeq !== undefined && message.seq <= kindSeq) return false;
    return (
      last.takenTs - message.ts <= OVERTAKEN_WINDOW_MS &&
      now - last.takenAtMs <= OVERTAKEN_WINDOW_MS
    );
  }

  /**
   * The reader took a signed message that judge() passed: it is the backend's order from
   * now on. A Last Will moves nothing.
   */
  accept(message: Message): void {
    if (isLastWill(message)) return;
    const last = this.touch(message.backendId);
    if (!last.taken || after(message, last.taken)) {
      if (last.taken?.epochMs !== message.epochMs) last.takenByKind = {};
      last.taken = { epochMs: message.epochMs, seq: message.seq };
      last.takenTs = message.ts;
      last.takenAtMs = last.seenAtMs;
    }
    if (message.epochMs === last.taken.epochMs) {
      const kindSeq = last.takenByKind[message.kind];
      if (kindSeq === undefined || message.seq > kindSeq)
        last.takenByKind[message.kind] = message.seq;
    }
    // A run taken at or past every held message: they are all before the order now.
    if (last.held && !after(last.held, last.taken!)) last.held = undefined;
  }

  /**
   * The reader did not take a signed message that judge() passed as the backend's own:
   * another agent run than the one it admitted (its registration refused, or not seen
   * yet). It is remembered as held, without moving the order: the taken run's messages go
   * on being accepted, and this one, or any earlier held one, is a replay from now on. A
   * message of the taken run is taken (accept). `takenEpochMs`: the run the reader took
   * (the one that admitted the backend), the order when the guard has none (its state
   * swept after a silence longer than the retention, say a broker outage) and this
   * message's run is newer: held first, a refused run's message made every message of the
   * admitted run, an earlier run, a replay, and the backend was forgotten at the end of
   * its lease.
   */
  hold(message: Message, takenEpochMs?: number): void {
    if (isLastWill(message)) return;
    const last = this.touch(message.backendId);
    // Only for a run newer than the one taken: a run with an earlier epoch (a restart on a
    // node whose clock is behind) made the taken one the order again each time the state
    // was swept, so its registration stayed "an earlier run" until the entry's lease ended.
    if (!last.taken && takenEpochMs !== undefined && takenEpochMs < message.epochMs) {
      last.taken = { epochMs: takenEpochMs, seq: -1 };
      last.takenTs = undefined;
      last.takenByKind = {};
    }
    if (last.taken?.epochMs === message.epochMs) return this.accept(message);
    if (!last.held || after(message, last.held)) {
      last.held = { epochMs: message.epochMs, seq: message.seq };
    }
  }

  /** The state of `backendId` while within its retention (an expired one is dropped). */
  private live(backendId: string, now: number): Last | undefined {
    const last = this.last.get(backendId);
    if (last && now - last.seenAtMs > this.retentionMs) {
      this.last.delete(backendId);
      return undefined;
    }
    return last;
  }

  /** The live state of `backendId`, made if needed, as heard now. */
  private touch(backendId: string): Last {
    const now = this.opts.now();
    let last = this.live(backendId, now);
    if (last) {
      // Moved to the end: the map stays ordered by last accepted message, so
      // eviction at the bound drops the backend heard least recently.
      this.last.delete(backendId);
    } else {
      if (this.last.size >= this.opts.maxTrackedBackends) this.evict(now);
      last = {
        taken: undefined,
        takenTs: undefined,
        takenAtMs: now,
        takenByKind: {},
        held: undefined,
        seenAtMs: now,
      };
    }
    last.seenAtMs = now;
    this.last.set(backendId, last);
    return last;
  }

  /** The agent run (epoch) last heard for `backendId`, while remembered. */
  currentEpoch(backendId: string): number | undefined {
    return this.last.get(backendId)?.taken?.epochMs;
  }

  /**
   * Drops a backend's state (it was removed), once nothing it refuses could
   * still be accepted: a state younger than the retention stays until a later
   * check or eviction finds it expired, so forgetting a backend never lets a
   * replay of its recent messages in (a genuine agent's next message is newer
   * and is accepted either way).
   */
  forget(backendId: string): void {
    const last = this.last.get(backendId);
    if (last && this.opts.now() - last.seenAtMs > this.retentionMs) this.last.delete(backendId);
  }

  get size(): number {
    return this.last.size;
  }

  /**
   * Drops every state past its retention. Without it a state went only when its backend
   * was checked again or at the bound: ids refused (maxBackends, a rate limit) or
   * forgotten within the retention kept 0.4-0.8 KB each for good (helper: +1.2 MB of
   * heap after 3,000 short-lived ids). The map is in order of the last accepted message,
   * so the expired states are at its front: the sweep stops at the first live one, and
   * each state is visited once. A gateway calls it once a second.
   */
  sweep(now = this.opts.now()): void {
    for (const [id, last] of this.last) {
      if (now - last.seenAtMs <= this.retentionMs) break;
      this.last.delete(id);
    }
  }

  private evict(now: number): void {
    // Scanning the whole map on every insert at the bound cost 1.4 ms a message at
    // 100,000 states, and a holder of a key that may sign for any id (unbound, or a
    // wildcard) kept it full with new ids at about 1,100 a second and stalled the
    // gateway's event loop for seconds: the sweep visits only the expired states.
    this.sweep(now);
    // Still full of live backends: drop the one heard least recently. Bounded
    // memory beats remembering everyone; the time rules still bound replays.
    if (this.last.size >= this.opts.maxTrackedBackends) {
      const oldest = this.last.keys().next();
      if (!oldest.done) this.last.delete(oldest.value);
    }
  }
}
