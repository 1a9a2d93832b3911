import { ProtocolError } from './errors';

/** Bumped only with an incompatible change of topics or payloads. */
export const TOPIC_VERSION = 'v1';
export const DEFAULT_TOPIC_PREFIX = 'loadwise';
export const MAX_BACKEND_ID_LENGTH = 64;

export type MessageKind = 'metrics' | 'status' | 'register';
export const MESSAGE_KINDS: readonly MessageKind[] = ['metrics', 'status', 'register'];

// A backend id is one topic level. It may not hold the level separator or the
// wildcards [MQTT-4.7.1-1], and it starts with an alphanumeric so it can never
// start a topic with '$' (reserved for the broker [MQTT-4.7.2-1]).
const BACKEND_ID_RE = /^[A-Za-z0-9][A-Za-z0-9._:@-]{0,63}$/;
// A prefix is one or more levels of the same alphabet, without wildcards.
const PREFIX_RE = /^[A-Za-z0-9][A-Za-z0-9._:@-]*(\/[A-Za-z0-9][A-Za-z0-9._:@-]*)*$/;

export function isValidBackendId(id: unknown): id is string {
  return typeof id === 'string' && BACKEND_ID_RE.test(id);
}

export function assertValidPrefix(prefix: string): void {
  if (typeof prefix !== 'string' || prefix.length > 200 || !PREFIX_RE.test(prefix)) {
    throw new ProtocolError(
      'LW_PROTO_INVALID_OPTION',
      `topic prefix ${JSON.stringify(prefix)} must be levels of [A-Za-z0-9._:@-] separated by '/', without wildcards or a leading '/'`,
    );
  }
}

export function assertValidBackendId(id: string): void {
  if (!isValidBackendId(id)) {
    throw new ProtocolError(
      'LW_PROTO_INVALID_BACKEND_ID',
      `backend id ${JSON.stringify(id)} must be 1-${MAX_BACKEND_ID_LENGTH} characters of [A-Za-z0-9._:@-], starting with a letter or digit`,
    );
  }
}

/** `<prefix>/v1/backends/`: what every topic of the backends under `prefix` begins with (not validated). */
export function backendsTopicRoot(prefix: string): string {
  return `${prefix}/${TOPIC_VERSION}/backends/`;
}

/** `<prefix>/v1/backends/<backendId>/<kind>` */
export function topicFor(prefix: string, backendId: string, kind: MessageKind): string {
  assertValidPrefix(prefix);
  assertValidBackendId(backendId);
  return `${backendsTopicRoot(prefix)}${backendId}/${kind}`;
}

/** The filter a gateway subscribes to: every kind of every backend under the prefix. */
export function subscriptionFilter(prefix: string, kind: MessageKind | '+' = '+'): string {
  assertValidPrefix(prefix);
  return `${backendsTopicRoot(prefix)}+/${kind}`;
}

export interface ParsedTopic {
  backendId: string;
  kind: MessageKind;
}

export type ParseTopicResult =
  | { ok: true; value: ParsedTopic }
  | { ok: false; code: 'LW_PROTO_BAD_TOPIC' | 'LW_PROTO_INVALID_BACKEND_ID' };

/** Parses a topic without allocating an array: this runs once per message. */
export function parseTopic(prefix: string, topic: string): ParseTopicResult {
  const head = backendsTopicRoot(prefix);
  if (!topic.startsWith(head)) return { ok: false, code: 'LW_PROTO_BAD_TOPIC' };
  const slash = topic.indexOf('/', head.length);
  if (slash < 0) return { ok: false, code: 'LW_PROTO_BAD_TOPIC' };
  const kind = topic.slice(slash + 1);
  if (kind !== 'metrics' && kind !== 'status' && kind !== 'register') {
    return { ok: false, code: 'LW_PROTO_BAD_TOPIC' };
  }
  const backendId = topic.slice(head.length, slash);
  if (!BACKEND_ID_RE.test(backendId)) return { ok: false, code: 'LW_PROTO_INVALID_BACKEND_ID' };
  return { ok: true, value: { backendId, kind } };
}
