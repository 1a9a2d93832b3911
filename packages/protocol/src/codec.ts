import { ProtocolError, type ProtocolErrorCode } from './errors';
import {
  PROTOCOL_VERSION,
  type BackendState,
  type Message,
  type MetricsReport,
  type RegistrationMessage,
  type StatusMessage,
} from './messages';
import {
  DEFAULT_MAX_CLOCK_SKEW_MS,
  DEFAULT_MAX_RETAINED_AGE_MS,
  DEFAULT_MAX_TRACKED_BACKENDS,
  ReplayGuard,
  isLastWill,
} from './replay';
import {
  assertKeyMaySign,
  assertValidKey,
  keyMaySign,
  signPayload,
  splitSignature,
  verifySignature,
  type SigningKey,
} from './signing';
import {
  DEFAULT_TOPIC_PREFIX,
  MESSAGE_KINDS,
  assertValidBackendId,
  assertValidPrefix,
  parseTopic,
  topicFor,
  type ParsedTopic,
} from './topics';
import { validateMessage } from './validate';

/**
 * A full metrics report is ~700 bytes. 8 KiB leaves room for growth while a
 * flood of huge payloads is rejected before any parsing. (The bound applies
 * once a payload is in memory; keeping larger packets off the wire is the
 * broker's and the MQTT connection's job, see docs/protocol.md "Size".)
 */
export const DEFAULT_MAX_PAYLOAD_BYTES = 8 * 1024;

export interface EncodedMessage<M extends Message = Message> {
  topic: string;
  payload: string;
  message: M;
}

/** Encodes a complete message. Throws ProtocolError if it would not decode. */
export function encodeMessage<M extends Message>(
  prefix: string,
  message: M,
  key?: SigningKey,
  maxPayloadBytes = DEFAULT_MAX_PAYLOAD_BYTES,
): EncodedMessage<M> {
  const failure = validateMessage(message);
  if (failure) {
    throw new ProtocolError(
      failure.code,
      `cannot encode ${message.kind ?? 'message'}: field ${failure.path}`,
    );
  }
  if (key) assertKeyMaySign(key, message.backendId);
  const topic = topicFor(prefix, message.backendId, message.kind);
  const json = JSON.stringify(message);
  const payload = key ? signPayload(topic, json, key) : json;
  if (Buffer.byteLength(payload) > maxPayloadBytes) {
    throw new ProtocolError(
      'LW_PROTO_TOO_LARGE',
      `encoded ${message.kind} is over ${maxPayloadBytes} bytes`,
    );
  }
  return { topic, payload, message };
}

export interface EncoderOptions {
  backendId: string;
  prefix?: string;
  /** Sign every message with this key. */
  key?: SigningKey;
  /** Clock for `ts` and `epochMs`; injectable for tests. */
  now?: () => number;
  maxPayloadBytes?: number;
}

/** A message without the header an encoder stamps (what Encoder.metrics and friends take). */
export type MessageBody<M extends Message> = Omit<
  M,
  'v' | 'kind' | 'backendId' | 'epochMs' | 'seq' | 'ts'
>;
/** The body of a metrics report: the agent's figures. */
export type MetricsBody = MessageBody<MetricsReport>;

/** One agent's encoder: stamps version, ids, (epochMs, seq) and ts on every message. */
export interface Encoder {
  readonly backendId: string;
  readonly epochMs: number;
  metrics(body: MessageBody<MetricsReport>): EncodedMessage<MetricsReport>;
  status(
    state: BackendState,
    extra?: { will?: boolean; reason?: string },
  ): EncodedMessage<StatusMessage>;
  registration(url: string, weight?: number): EncodedMessage<RegistrationMessage>;
}

export function createEncoder(opts: EncoderOptions): Encoder {
  const prefix = opts.prefix ?? DEFAULT_TOPIC_PREFIX;
  assertValidPrefix(prefix);
  assertValidBackendId(opts.backendId);
  if (opts.key) {
    assertValidKey(opts.key);
    // Every message would be refused: said once, where the agent is configured.
    assertKeyMaySign(opts.key, opts.backendId);
  }
  const now = opts.now ?? Date.now;
  const epochMs = now();
  let seq = 0;
  const stamp = <M extends Message>(kind: M['kind'], body: object): EncodedMessage<M> => {
    const message = {
      v: PROTOCOL_VERSION,
      kind,
      backendId: opts.backendId,
      epochMs,
      seq: seq++,
      ts: now(),
      ...body,
    } as M;
    return encodeMessage(prefix, message, opts.key, opts.maxPayloadBytes);
  };
  return {
    backendId: opts.backendId,
    epochMs,
    metrics: (body) => stamp<MetricsReport>('metrics', body),
    status: (state, extra = {}) =>
      stamp<StatusMessage>('status', {
        state,
        ...(extra.will ? { will: true } : {}),
        ...(extra.reason ? { reason: extra.reason } : {}),
      }),
    registration: (url, weight) =>
      stamp<RegistrationMessage>('register', weight === undefined ? { url } : { url, weight }),
  };
}

export interface DecoderOptions {
  prefix?: string;
  maxPayloadBytes?: number;
  /** Verification keys. With keys, unsigned messages are rejected unless requireSignature is false. */
  keys?: readonly SigningKey[];
  /**
   * Reject unsigned messages (default: true when keys are given). True without
   * keys rejects every message: unsigned ones as LW_PROTO_UNSIGNED, signed ones
   * as LW_PROTO_UNKNOWN_KEY (a gateway that was given no keys and does not
   * allow unsigned reports).
   */
  requireSignature?: boolean;
  maxClockSkewMs?: number;
  /** Retained messages (other than the Last Will) older than this are LW_PROTO_STALE. */
  maxRetainedAgeMs?: number;
  maxTrackedBackends?: number;
  now?: () => number;
}

export interface DecodeFailure {
  ok: false;
  code: ProtocolErrorCode;
  detail: string;
  backendId: string | undefined;
}

/** A message that passed every rule (Decoder.decode, Decoder.parse). */
export interface Decoded {
  ok: true;
  message: Message;
  keyId: string | undefined;
}

export type DecodeResult = Decoded | DecodeFailure;

/** A payload whose size, topic and signature passed, not yet parsed (Decoder.verify). */
export interface Verified {
  ok: true;
  topic: ParsedTopic;
  /** The JSON text, without the signature trailer. */
  body: string;
  /** Key id of the verified signature; undefined for an accepted unsigned payload. */
  keyId: string | undefined;
  /** The verified signature (base64url), when signed. */
  signature?: string;
}

export type VerifyResult = Verified | DecodeFailure;

export interface DecodeMeta {
  /** The MQTT retain flag of the delivered message. */
  retained?: boolean;
  /**
   * Judge the order rules without moving the backend's order state: the caller settles
   * every signed message that passes with accept() (it took it) or hold() (another agent
   * run than the one it admitted). Without it, a message that passes moves the order.
   */
  defer?: boolean;
}

export interface Decoder {
  /** Never throws: every failure is a result with a stable code. verify + parse. */
  decode(topic: string, payload: Buffer | string, meta?: DecodeMeta): DecodeResult;
  /**
   * The cheap half of decode: size, topic and signature (one HMAC), no JSON
   * parsing. A caller may rate-limit between the two halves by what it learns
   * here (backend id, signed or not). Never throws.
   */
  verify(topic: string, payload: Buffer | string, meta?: DecodeMeta): VerifyResult;
  /** The other half: JSON, schema, time and order rules. Never throws. */
  parse(verified: Verified, meta?: DecodeMeta): DecodeResult;
  /**
   * Drops replay state for a backend (e.g. when it is removed), once none of
   * its messages could pass the time rules again (ReplayGuard.forget).
   */
  forget(backendId: string): void;
  /** Drops the replay state of every backend past its retention (ReplayGuard.sweep). */
  sweep(): void;
  /**
   * The reader took a message parsed with `defer`: it moves its backend's order
   * (ReplayGuard.accept). Nothing for an unsigned message.
   */
  accept(decoded: Decoded): void;
  /**
   * The reader did not take a message parsed with `defer` as its backend's own (another
   * agent run than the one it admitted): remembered apart, so that run's messages stay
   * replays and the admitted run's go on (ReplayGuard.hold). Nothing for an unsigned message.
   */
  hold(decoded: Decoded, takenEpochMs?: number): void;
}

/**
 * A copy of `s` that holds no other string. V8 makes a slice of 13
 * characters or more a view of its parent, so a signature kept from a
 * payload (the decoder's copy cache, codec.ts) kept the whole payload alive:
 * up to 8 KiB each, and 300,000 topics of 8 of them held by a key holder's
 * padded messages would have been gigabytes.
 */
function detached(s: string): string {
  // Exact for text decoded from UTF-8 (no lone surrogates), as every payload is.
  return Buffer.from(s, 'utf8').toString('utf8');
}

/** Signatures remembered per topic (see `seen` in createDecoder). */
const SEEN_PER_TOPIC = 8;
/**
 * A live copy of a retained message this soon after it is the broker's subscribe race
 * (copyOf in createDecoder), not a replay: dropped quietly as the retained copy it is.
 */
const SUBSCRIBE_RACE_MS = 5_000;

export function createDecoder(opts: DecoderOptions = {}): Decoder {
  const prefix = opts.prefix ?? DEFAULT_TOPIC_PREFIX;
  assertValidPrefix(prefix);
  const maxBytes = opts.maxPayloadBytes ?? DEFAULT_MAX_PAYLOAD_BYTES;
  if (!Number.isSafeInteger(maxBytes) || maxBytes < 256) {
    throw new ProtocolError('LW_PROTO_INVALID_OPTION', 'maxPayloadBytes must be an integer >= 256');
  }
  const keys = new Map<string, Buffer>();
  /** The keys bound to some backends (SigningKey.backends), by id. */
  const scoped = new Map<string, SigningKey>();
  for (const key of opts.keys ?? []) {
    assertValidKey(key);
    keys.set(key.keyId, key.secret);
    if (key.backends !== undefined) scoped.set(key.keyId, key);
  }
  const requireSignature = opts.requireSignature ?? keys.size > 0;
  const maxClockSkewMs = opts.maxClockSkewMs ?? DEFAULT_MAX_CLOCK_SKEW_MS;
  if (!Number.isFinite(maxClockSkewMs) || maxClockSkewMs <= 0) {
    throw new ProtocolError('LW_PROTO_INVALID_OPTION', 'maxClockSkewMs must be a positive number');
  }
  const maxRetainedAgeMs = opts.maxRetainedAgeMs ?? DEFAULT_MAX_RETAINED_AGE_MS;
  if (!Number.isFinite(maxRetainedAgeMs) || maxRetainedAgeMs <= 0) {
    throw new ProtocolError(
      'LW_PROTO_INVALID_OPTION',
      'maxRetainedAgeMs must be a positive number',
    );
  }
  const now = opts.now ?? Date.now;
  const guard = new ReplayGuard({
    maxClockSkewMs,
    maxRetainedAgeMs,
    maxTrackedBackends: opts.maxTrackedBackends ?? DEFAULT_MAX_TRACKED_BACKENDS,
    now,
  });

  // Copies of signed messages already judged, per topic: a replay flood repeats one captured
  // message (or a few), and each copy used to cost an HMAC, a JSON.parse and the schema before
  // the guard refused it (~15 us; 9,600 copies a second took a sixth of a core). The HMAC
  // covers topic and body, so the same signature on the same topic is the same message, and
  // a copy is refused again for the same reason:
  // - accepted, or refused as a replay: a copy is a replay, retained or not (ReplayGuard
  //   orders retained messages too);
  // - refused live as older than the skew window: a live copy stays too old (a retained one
  //   may be judged by the longer retained bound, so it goes through the rules).
  // Only verified signatures are remembered (no one without a key can fill this), never a
  // Last Will (the guard may accept one again) nor a message from the future (time makes it
  // valid). SEEN_PER_TOPIC per topic, and at most 3 signatures per tracked backend in all
  // (300,000 by default, about 30 MB), the topics first remembered going first. Each is a
  // copy of the signature (detached): a slice kept its whole payload alive.
  const seen = new Map<
    string,
    Array<{ signature: string; liveOnly: boolean; retainedAtMs: number | undefined }>
  >();
  const maxSeen = 3 * (opts.maxTrackedBackends ?? DEFAULT_MAX_TRACKED_BACKENDS);
  let seenCount = 0;
  const seenKey = (t: ParsedTopic): string => `${t.backendId}/${t.kind}`;
  const remember = (
    key: string,
    signature: string,
    liveOnly: boolean,
    retainedAtMs?: number,
  ): void => {
    let ring = seen.get(key);
    if (ring !== undefined) {
      const i = ring.findIndex((e) => e.signature === signature);
      if (i >= 0 || ring.length >= SEEN_PER_TOPIC) {
        ring.splice(Math.max(i, 0), 1);
        seenCount--;
      }
    }
    while (seenCount >= maxSeen) {
      const oldest = seen.entries().next();
      if (oldest.done) break;
      seen.delete(oldest.value[0]);
      seenCount -= oldest.value[1].length;
      if (oldest.value[1] === ring) ring = undefined;
    }
    if (ring === undefined) {
      ring = [];
      seen.set(key, ring);
    }
    ring.push({ signature: detached(signature), liveOnly, retainedAtMs });
    seenCount++;
  };
  /**
   * Whether the message is a copy of one remembered: 'race' for a live copy of a message
   * first delivered retained within SUBSCRIBE_RACE_MS. An agent that publishes while the
   * gateway subscribes has its message sent both ways (the broker's retained copy for the
   * new subscription, and the live one), in either order: the quick start warned of a
   * replay once in about five starts.
   */
  const copyOf = (key: string, signature: string, retained: boolean): false | 'copy' | 'race' => {
    const ring = seen.get(key);
    if (ring === undefined) return false;
    for (const e of ring) {
      if (e.signature !== signature) continue;
      if (retained && e.liveOnly) return false;
      const race =
        !retained && e.retainedAtMs !== undefined && now() - e.retainedAtMs <= SUBSCRIBE_RACE_MS;
      return race ? 'race' : 'copy';
    }
    return false;
  };

  const fail = (code: ProtocolErrorCode, detail: string, backendId?: string): DecodeFailure => ({
    ok: false,
    code,
    detail,
    backendId,
  });

  const verify: Decoder['verify'] = (topic, payload, meta = {}) => {
    const size = typeof payload === 'string' ? Buffer.byteLength(payload) : payload.length;
    if (size > maxBytes) return fail('LW_PROTO_TOO_LARGE', `${size} bytes > ${maxBytes}`);
    const parsedTopic = parseTopic(prefix, topic);
    if (!parsedTopic.ok)
      return fail(parsedTopic.code, `topic ${JSON.stringify(topic.slice(0, 200))}`);
    const { backendId } = parsedTopic.value;

    const text = typeof payload === 'string' ? payload : payload.toString('utf8');
    const split = splitSignature(text);
    if (!split)
      return fail('LW_PROTO_MALFORMED_JSON', 'unrecognised trailer after the JSON body', backendId);
    // Signature before JSON.parse: a gateway that requires signatures spends
    // one HMAC, not a parse, on a forged message.
    let keyId: string | undefined;
    if (split.keyId !== undefined && (keys.size > 0 || requireSignature)) {
      const signature = split.signature ?? '';
      const copy = copyOf(seenKey(parsedTopic.value), signature, meta.retained === true);
      // The copy's body checked too (one HMAC, only this soon after a retained delivery): a
      // changed body under a seen signature is someone's replay, whenever it comes.
      if (copy === 'race' && !verifySignature(topic, split.body, split.keyId, signature, keys)) {
        return fail(
          'LW_PROTO_RETAINED_SUPERSEDED',
          'a live copy of a retained message just delivered (published while this gateway subscribed)',
          backendId,
        );
      }
      if (copy) {
        // A retained copy: the broker resends the topic's last message on every subscribe.
        return meta.retained === true
          ? fail(
              'LW_PROTO_RETAINED_SUPERSEDED',
              'a retained copy of a message already seen',
              backendId,
            )
          : fail('LW_PROTO_REPLAY', 'a copy of a message already seen', backendId);
      }
      // Before the HMAC: which backends a key may sign for is no secret.
      const scope = scoped.get(split.keyId);
      if (scope !== undefined && !keyMaySign(scope, backendId)) {
        return fail(
          'LW_PROTO_KEY_NOT_ALLOWED',
          `key id ${JSON.stringify(split.keyId)} may not sign for ${backendId}`,
          backendId,
        );
      }
      const bad = verifySignature(topic, split.body, split.keyId, signature, keys);
      if (bad) return fail(bad, `key id ${JSON.stringify(split.keyId.slice(0, 64))}`, backendId);
      keyId = split.keyId;
      return { ok: true, topic: parsedTopic.value, body: split.body, keyId, signature };
    } else if (requireSignature) {
      return fail('LW_PROTO_UNSIGNED', 'signature required', backendId);
    }
    return { ok: true, topic: parsedTopic.value, body: split.body, keyId };
  };

  const parse: Decoder['parse'] = (verified, meta = {}) => {
    const { backendId, kind } = verified.topic;
    let value: unknown;
    try {
      value = JSON.parse(verified.body);
    } catch (err) {
      return fail('LW_PROTO_MALFORMED_JSON', (err as Error).message.slice(0, 200), backendId);
    }
    const invalid = validateMessage(value, verified.topic);
    if (invalid) return fail(invalid.code, `${kind} field ${invalid.path}`, backendId);
    const message = value as Message;
    const checkMeta = { retained: meta.retained === true, signed: verified.keyId !== undefined };
    const replay =
      meta.defer === true ? guard.judge(message, checkMeta) : guard.check(message, checkMeta);
    if (verified.signature !== undefined && !isLastWill(message)) {
      const key = seenKey(verified.topic);
      if (
        replay === undefined ||
        replay === 'LW_PROTO_REPLAY' ||
        replay === 'LW_PROTO_RETAINED_SUPERSEDED' ||
        replay === 'LW_PROTO_OVERTAKEN'
      ) {
        remember(key, verified.signature, false, meta.retained === true ? now() : undefined);
      } else if (
        replay === 'LW_PROTO_CLOCK_SKEW' &&
        meta.retained !== true &&
        message.ts <= now()
      ) {
        remember(key, verified.signature, true);
      }
    }
    if (replay) {
      const current = guard.currentEpoch(backendId);
      // A live message of an earlier agent run than the one heard, sent just now: not a
      // captured message but another agent for this backend, or one restarted with its
      // clock behind. Said so, where "replay" read as an attack.
      const earlierRun =
        replay === 'LW_PROTO_REPLAY' && current !== undefined && message.epochMs < current
          ? `; an earlier agent run than the one heard (epochMs ${current}): a second agent for this backend, one restarted with its clock behind, or a replay`
          : '';
      return fail(
        replay,
        `epochMs ${message.epochMs} seq ${message.seq} ts ${message.ts}${earlierRun}`,
        backendId,
      );
    }
    return { ok: true, message, keyId: verified.keyId };
  };

  return {
    sweep: () => guard.sweep(),
    // Only what a verified signature vouches for moves the order: an unsigned message's
    // (epochMs, seq) could be anyone's.
    accept: (decoded) => {
      if (decoded.keyId !== undefined) guard.accept(decoded.message);
    },
    hold: (decoded, takenEpochMs) => {
      if (decoded.keyId !== undefined) guard.hold(decoded.message, takenEpochMs);
    },
    forget: (backendId) => {
      guard.forget(backendId);
      // Its copies are for nothing now: a gateway drops a forgotten backend's messages
      // before decoding them, and the guard judges any that still arrive. Kept, ordinary
      // discovery churn filled the cache towards its bound (0.55 KB a forgotten backend).
      for (const kind of MESSAGE_KINDS) {
        const key = seenKey({ backendId, kind });
        const ring = seen.get(key);
        if (ring === undefined) continue;
        seen.delete(key);
        seenCount -= ring.length;
      }
    },
    verify,
    parse,
    decode(topic, payload, meta = {}) {
      const verified = verify(topic, payload, meta);
      return verified.ok ? parse(verified, meta) : verified;
    },
  };
}
