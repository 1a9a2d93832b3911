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

interface Last {
  epochMs: number;
  seq: number;
  seenAtMs: number;
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
 *
 * Because every accepted message is within the skew window, only messages
 * younger than the window could be replayed at all, and the state of a
 * backend silent for longer than twice the window can be forgotten without
 * opening a hole; forgetting also lets an agent whose clock stepped backwards
 * across a restart be heard again.
 *
 * The Last Will is fixed when the agent connects, so its `ts` (and `seq`) are
 * old when it fires: it skips the staleness bounds (not the future bound) and
 * is judged by its epoch instead: it must come from the current agent run or a
 * newer one. Its effect is benign by design (the gateway keeps routing to the
 * backend on local signals), so an old will can do no more than the failure it
 * announces. It does not advance the sequence.
 */
export class ReplayGuard {
  private readonly last = new Map<string, Last>();

  constructor(private readonly opts: ReplayGuardOptions) {}

  check(message: Message, meta: CheckMeta): ProtocolErrorCode | undefined {
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

    let last = this.last.get(message.backendId);
    if (last && now - last.seenAtMs > 2 * skew) {
      this.last.delete(message.backendId);
      last = undefined;
    }
    if (isWill) {
      return last && message.epochMs < last.epochMs ? 'LW_PROTO_REPLAY' : undefined;
    }
    if (last) {
      const newer =
        message.epochMs > last.epochMs ||
        (message.epochMs === last.epochMs && message.seq > last.seq);
      if (!newer) return 'LW_PROTO_REPLAY';
      last.epochMs = message.epochMs;
      last.seq = message.seq;
      last.seenAtMs = now;
      return undefined;
    }
    if (this.last.size >= this.opts.maxTrackedBackends) this.evict(now);
    this.last.set(message.backendId, { epochMs: message.epochMs, seq: message.seq, seenAtMs: now });
    return undefined;
  }

  forget(backendId: string): void {
    this.last.delete(backendId);
  }

  get size(): number {
    return this.last.size;
  }

  private evict(now: number): void {
    for (const [id, last] of this.last) {
      if (now - last.seenAtMs > 2 * this.opts.maxClockSkewMs) this.last.delete(id);
    }
    // Still full of live backends: drop the oldest inserted. Bounded memory
    // beats remembering everyone; the skew window still bounds replays.
    if (this.last.size >= this.opts.maxTrackedBackends) {
      const oldest = this.last.keys().next();
      if (!oldest.done) this.last.delete(oldest.value);
    }
  }
}
