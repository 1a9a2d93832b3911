/**
 * Token buckets on the control channel: how much work the gateway spends on
 * messages, so a flood on the broker (forged, replayed, or a broken agent)
 * cannot take the event loop that also proxies requests. Two stages
 * (Balancer.receive):
 *
 * 1. `total`, before anything but the MQTT parse: a cap on all messages,
 *    high enough (20 000/s) that a flood below it never costs a genuine
 *    report; above it the gateway protects its CPU and drops at random.
 * 2. Per backend and per class, after the signature check (one HMAC, no JSON):
 *    verified signed messages and unsigned ones have separate buckets, so a
 *    forger without the key can never use up a genuine agent's budget. A
 *    signed message is charged after its replay check too (replays of
 *    captured reports do not count against the agent), before it is applied
 *    (the expensive part: eligibility, load estimate). Backend ids the
 *    gateway does not know share one bucket per class, so random ids cannot
 *    grow the map or starve anyone else. With discovery on, the signed one's
 *    burst is at least `discovery.maxBackends` (`unknownSignedBurst`): the
 *    only signed messages of unknown ids it is charged for are registrations
 *    (Balancer.receive drops the rest before), and on (re)subscribe the
 *    broker delivers every retained registration at once; with a burst of
 *    40, the 41st and later were dropped, and since the replay guard had
 *    recorded them, those backends waited for their agents' next renewal
 *    (20 s). The rate stays `perBackendPerSec`, and only a key holder can
 *    use the burst, once per refill, and no further than maxBackends admits.
 *
 * Defaults: an agent reports once per interval (1 s by default, 100 ms at
 * the least: packages/health-agent/src/options.ts) plus a status on
 * (re)connect and state changes, so 20/s with a burst of 40 is twice the
 * fastest agent. docs/gateway.md ("Control channel limits") says when to
 * change them.
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
  totalPerSec: 20_000,
  totalBurst: 20_000,
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
export type Limited = 'backend' | 'unknown-backend' | undefined;

export class MessageLimiter {
  private readonly perBackend = new Map<string, TokenBucket>();
  private readonly unknown: [TokenBucket, TokenBucket];
  private readonly total: TokenBucket;

  /**
   * @param unknownSignedBurst - burst of the bucket shared by verified signed
   *   messages of unknown backend ids (registrations), when larger than
   *   `perBackendBurst`: discovery.maxBackends.
   */
  constructor(
    private readonly limits: MessageLimits,
    nowMs: number,
    unknownSignedBurst = 0,
  ) {
    const bucket = (burst: number): TokenBucket =>
      new TokenBucket(limits.perBackendPerSec, burst, nowMs);
    this.unknown = [
      bucket(limits.perBackendBurst),
      bucket(Math.max(limits.perBackendBurst, unknownSignedBurst)),
    ];
    this.total = new TokenBucket(limits.totalPerSec, limits.totalBurst, nowMs);
  }

  /** Stage 1: charges one message to the gateway-wide cap. False: drop it. */
  admitTotal(nowMs: number): boolean {
    return this.total.take(nowMs);
  }

  /** A backend that left: its buckets go (its id now counts as unknown). */
  forget(backendId: string): void {
    this.perBackend.delete(`s:${backendId}`);
    this.perBackend.delete(`u:${backendId}`);
  }

  /**
   * Stage 2: charges one message to its backend's bucket of its class.
   * `knownBackendId` is the topic's backend id when the gateway knows that
   * backend, undefined otherwise.
   */
  admit(knownBackendId: string | undefined, signed: boolean, nowMs: number): Limited {
    if (knownBackendId === undefined) {
      return this.unknown[signed ? 1 : 0].take(nowMs) ? undefined : 'unknown-backend';
    }
    const key = (signed ? 's:' : 'u:') + knownBackendId;
    let bucket = this.perBackend.get(key);
    if (bucket === undefined) {
      bucket = new TokenBucket(this.limits.perBackendPerSec, this.limits.perBackendBurst, nowMs);
      this.perBackend.set(key, bucket);
    }
    return bucket.take(nowMs) ? undefined : 'backend';
  }
}
