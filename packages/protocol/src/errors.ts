/**
 * Error catalogue of @loadwise/protocol. Codes are stable: gateways count
 * dropped messages by code, and docs/protocol.md lists every one (a test checks
 * that the two agree).
 */
export const PROTOCOL_ERRORS = {
  LW_PROTO_TOO_LARGE: 'payload exceeds the size bound',
  LW_PROTO_BAD_TOPIC: 'topic is not a loadwise topic under the configured prefix',
  LW_PROTO_INVALID_BACKEND_ID: 'backend id is empty, too long, or contains a reserved character',
  LW_PROTO_MALFORMED_JSON: 'payload is not valid JSON',
  LW_PROTO_UNKNOWN_VERSION: 'payload version is not one this decoder understands',
  LW_PROTO_UNKNOWN_KIND: 'message kind is not metrics, status or register',
  LW_PROTO_TOPIC_MISMATCH: 'backend id or kind in the payload differs from the topic',
  LW_PROTO_MISSING_FIELD: 'a required field is missing',
  LW_PROTO_WRONG_TYPE: 'a field has the wrong type',
  LW_PROTO_NOT_FINITE: 'a number is NaN or Infinity',
  LW_PROTO_NEGATIVE: 'a count, size or duration is negative',
  LW_PROTO_OUT_OF_RANGE:
    'a number is outside its range (utilization above 1, non-integer count, ...)',
  LW_PROTO_INVALID_VALUE: 'a string field has a value outside its allowed set or format',
  LW_PROTO_UNSIGNED: 'signatures are required and the message carries none',
  LW_PROTO_BAD_SIGNATURE: 'signature does not match the topic and payload',
  LW_PROTO_UNKNOWN_KEY: 'signature names a key id the verifier does not hold',
  LW_PROTO_KEY_NOT_ALLOWED: "the signing key may not sign for this backend (the key's backends)",
  LW_PROTO_CLOCK_SKEW: 'timestamp is outside the allowed clock-skew window',
  LW_PROTO_STALE: 'a retained message is older than its freshness limit (maxRetainedAgeMs)',
  LW_PROTO_REPLAY: 'sequence number is not newer than one already accepted for this backend',
  LW_PROTO_RETAINED_SUPERSEDED:
    "a retained message not newer than one already accepted for this backend (the broker's copy, resent on every subscribe)",
  LW_PROTO_OVERTAKEN:
    'a live message delivered behind a newer one of its agent run, sent and received within 2 s of it: not a replay',
  LW_PROTO_INVALID_OPTION: 'an option passed to a protocol function is invalid',
} as const;

export type ProtocolErrorCode = keyof typeof PROTOCOL_ERRORS;

/** Thrown only by constructors and encoders (programming errors), never by decode. */
export class ProtocolError extends Error {
  readonly code: ProtocolErrorCode;
  constructor(code: ProtocolErrorCode, detail: string) {
    super(`${code}: ${detail}`);
    this.name = 'ProtocolError';
    this.code = code;
  }
}
