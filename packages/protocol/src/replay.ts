import type { ProtocolErrorCode } from './errors';
import type { Message } from './messages';

export const DEFAULT_MAX_CLOCK_SKEW_MS = 30_000;
export const DEFAULT_MAX_TRACKED_BACKENDS = 100_000;

export interface ReplayGuardOptions {
  /** Reject timestamps further than this from the local clock. */
  maxClockSkewMs: number;
  /** Skew is checked only for signed traffic: unsigned clocks are not worth trusting or punishing. */
  checkClockSkew: boolean;
  maxTrackedBackends: number;
  now: () => number;
}

interface Last {
  epochMs: number;
  seq: number;
  seenAtMs: number;
}

/**
 * Drops replayed and reordered messages per backend.
 *
 * Order is (epochMs, seq): a restarted agent has a newer epoch. A message must
 * be strictly newer than the last accepted one. With signing on, it must also
 * be within the skew window, so only messages younger than the window could be
 * replayed at all, and the state of a backend silent for longer than twice the
 * window can be forgotten without opening a hole. Forgetting also lets an agent
 * whose clock stepped backwards across a restart be heard again.
 *
 * Two exceptions, both from how MQTT delivers:
 * - retained messages arrive at subscribe time and may be old by design
 *   [MQTT-3.3.1-8]; they skip the staleness bound (not the future bound);
 * - the Last Will is fixed when the agent connects, so its seq and ts are old
 *   when it fires; a will (`status`, `will: true`, `offline`) need only come
 *   from the current or a newer epoch. A replayed will can only mark metrics
 *   stale, which is what the failure it announces does anyway.
 */
export class ReplayGuard {
  private readonly last = new Map<string, Last>();

  constructor(private readonly opts: ReplayGuardOptions) {}

  check(message: Message, retained: boolean): ProtocolErrorCode | undefined {
    const now = this.opts.now();
    const skew = this.opts.maxClockSkewMs;
    const isWill =
      message.kind === 'status' && message.will === true && message.state === 'offline';
    if (this.opts.checkClockSkew) {
      if (message.ts > now + skew) return 'LW_PROTO_CLOCK_SKEW';
      if (!retained && !isWill && message.ts < now - skew) return 'LW_PROTO_CLOCK_SKEW';
    }
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
