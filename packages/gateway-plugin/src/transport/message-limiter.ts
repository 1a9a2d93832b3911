/**
 * Token buckets in front of the decoder: how many control-channel messages
 * the gateway spends work on, per backend and in total. A flood on the broker
 * (thousands of messages a second, forged or from a broken agent) must not
 * turn into thousands of signature checks, JSON parses and eligibility
 * recomputes a second on the event loop that also proxies requests.
 *
 * A message is charged to its backend's bucket first and to the total bucket
 * only if its backend's bucket admitted it: a flood on one backend's topic
 * drains that backend's bucket and never the shared one, so the other
 * backends' reports keep getting through. Backend ids the gateway does not
 * know (not configured, not yet discovered, or not a loadwise topic at all)
 * share one bucket, so random ids cannot grow the map or starve anyone else.
 *
 * Defaults: an agent reports once per interval (1 s by default, 100 ms at
 * the least: packages/health-agent/src/options.ts) plus a status on
 * (re)connect and state changes, so 20/s with a burst of 40 is twice the
 * fastest agent; 1000/s in total covers 1000 agents at the default interval
 * or 100 at the fastest. docs/gateway.md says when to raise them.
 */
export interface MessageLimits {
  perBackendPerSec: number;
  perBackendBurst: number;
  totalPerSec: number;
  totalBurst: number;
}

export const DEFAULT_MESSAGE_LIMITS: MessageLimits = {
  perBackendPerSec: 20,
  perBackendBurst: 40,
  totalPerSec: 1000,
  totalBurst: 2000,
};

/** A token bucket: `burst` tokens, refilled at `ratePerSec`; one token per message. */
export class TokenBucket {
  private tokens: number;
  private stampMs: number;

  constructor(
    private readonly ratePerSec: number,
    private readonly burst: number,
    nowMs: number,
  ) {
    this.tokens = burst;
    this.stampMs = nowMs;
  }

  take(nowMs: number): boolean {
    const elapsed = nowMs - this.stampMs;
    // A clock that went backwards refills nothing (and is not an error).
    if (elapsed > 0) {
      this.tokens = Math.min(this.burst, this.tokens + (elapsed * this.ratePerSec) / 1000);
      this.stampMs = nowMs;
    }
    if (this.tokens < 1) return false;
    this.tokens -= 1;
    return true;
  }
}

/** Which bucket refused a message, or undefined when it was admitted. */
export type Limited = 'backend' | 'unknown-backend' | 'total' | undefined;

export class MessageLimiter {
  private readonly perBackend = new Map<string, TokenBucket>();
  private readonly unknown: TokenBucket;
  private readonly total: TokenBucket;

  constructor(
    private readonly limits: MessageLimits,
    nowMs: number,
  ) {
    this.unknown = new TokenBucket(limits.perBackendPerSec, limits.perBackendBurst, nowMs);
    this.total = new TokenBucket(limits.totalPerSec, limits.totalBurst, nowMs);
  }

  /**
   * Charges one message. `knownBackendId` is the topic's backend id when the
   * gateway knows that backend, undefined otherwise.
   */
  admit(knownBackendId: string | undefined, nowMs: number): Limited {
    if (knownBackendId === undefined) {
      if (!this.unknown.take(nowMs)) return 'unknown-backend';
    } else {
      let bucket = this.perBackend.get(knownBackendId);
      if (bucket === undefined) {
        bucket = new TokenBucket(this.limits.perBackendPerSec, this.limits.perBackendBurst, nowMs);
        this.perBackend.set(knownBackendId, bucket);
      }
      if (!bucket.take(nowMs)) return 'backend';
    }
    return this.total.take(nowMs) ? undefined : 'total';
  }
}
