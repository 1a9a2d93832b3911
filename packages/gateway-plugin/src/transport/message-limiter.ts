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
 *    (the expensive part: eligibility, load estimate). Unsigned messages of
 *    backend ids the gateway does not know share one bucket, so random ids
 *    cannot grow the map. Signed ones of unknown ids (with discovery on, only
 *    registrations: Balancer.receive drops the rest before) have a bucket
 *    per signing key, and the keys are the configured ones (a fixed set).
 *    They shared one bucket: the holder of one agent's key, bound to its own
 *    id and kept to its own topics by the broker, sent registrations the
 *    gateway refused (an address outside allowedRanges, so its id stayed
 *    unknown), and at 90-900 msg/s every other new agent's registration was
 *    dropped for as long as the flood lasted (admitted at its next renewal,
 *    20 s, after the flood; its reports dropped as LW_GW_UNKNOWN_BACKEND
 *    meanwhile). A key's burst is as many registrations as it may sign at
 *    once (`registrationBurst`), never less than `perBackendBurst`: the
 *    number of ids it is bound to, or `discovery.maxBackends` for a key that
 *    may sign for any id (unbound, or a prefix). On (re)subscribe the broker
 *    delivers every retained registration at once; with a burst of 40 the
 *    41st and later were dropped and, since the replay guard had recorded
 *    them, those backends waited for their agents' next renewal (20 s). The
 *    rate stays `perBackendPerSec` per key. A key's holder can still starve
 *    the agents that share its key (one key for a whole fleet), no others.
 *
 * Defaults: an agent reports once per interval (1 s by default, 100 ms at
 * the least: packages/health-agent/src/options.ts) plus a status on
 * (re)connect and state changes, so 20/s with a burst of 40 is twice the
 * fastest agent. docs/gateway.md ("Control channel limits") says when to
 * change them.
 */
import type { SigningKey } from '@loadwise/protocol';

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
export type Limited = 'backend' | 'unknown-backend' | 'key' | undefined;

/**
 * How many registrations `key` may sign at once, at most `maxBackends`: one per id
 * of its list, or `maxBackends` when it may sign for any id (unbound, or a prefix
 * such as `web-*`), as one key shared by a whole fleet does.
 */
export function registrationBurst(key: Pick<SigningKey, 'backends'>, maxBackends: number): number {
  const scope = key.backends;
  if (scope === undefined || scope.some((s) => s.endsWith('*'))) return maxBackends;
  return Math.min(new Set(scope).size, maxBackends);
}

export class MessageLimiter {
  private readonly perBackend = new Map<string, TokenBucket>();
  /** Unsigned messages of unknown ids; signed ones of an unknown id by a key not listed. */
  private readonly unknown: [TokenBucket, TokenBucket];
  /** Signed messages of unknown ids (registrations), per key id: one per configured key. */
  private readonly perKey = new Map<string, TokenBucket>();
  private readonly total: TokenBucket;

  /**
   * @param keys - the configured keys: each gets its own bucket for the signed
   *   messages of unknown ids it signs, with a burst of `registrationBurst`.
   * @param maxBackends - discovery.maxBackends (0: discovery is off).
   */
  constructor(
    private readonly limits: MessageLimits,
    nowMs: number,
    keys: ReadonlyArray<Pick<SigningKey, 'keyId' | 'backends'>> = [],
    maxBackends = 0,
  ) {
    const bucket = (burst: number): TokenBucket =>
      new TokenBucket(limits.perBackendPerSec, Math.max(limits.perBackendBurst, burst), nowMs);
    this.unknown = [bucket(0), bucket(0)];
    for (const key of keys) this.perKey.set(key.keyId, bucket(registrationBurst(key, maxBackends)));
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
   * backend, undefined otherwise; `keyId` the verified key id of a signed
   * message, undefined for an unsigned one.
   */
  admit(knownBackendId: string | undefined, keyId: string | undefined, nowMs: number): Limited {
    const signed = keyId !== undefined;
    if (knownBackendId === undefined) {
      const byKey = signed ? this.perKey.get(keyId) : undefined;
      if (byKey !== undefined) return byKey.take(nowMs) ? undefined : 'key';
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
