/**
 * The opt-in decision header: which backend served a request and why the
 * strategy picked it, e.g. `b1; reason="least expected wait 3.2ms of 2"`.
 * Backend ids and reasons come from configuration and strategies, but a
 * discovered id is remote input: the value is reduced to visible ASCII so it
 * can never split a header (CR/LF) or break the quoted-string.
 */

/** Longest reason kept, characters: enough for a strategy's explanation, bounded for a header. */
export const MAX_DECISION_REASON_LENGTH = 200;

// RFC 9110 §5.6.2 token characters.
const TOKEN = /^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/;
// Anything outside visible ASCII and space: dropped (RFC 9110 §5.5 field values).
const NOT_VISIBLE = /[^\x20-\x7e]/g;

/** RFC 9110 §5.6.4 quoted-string: escape backslash and double quote. */
function quote(text: string): string {
  return `"${text.replace(/[\\"]/g, '\\$&')}"`;
}

/** Header value naming the backend (as a token, or quoted when it is not one) and, if given, the reason. */
export function formatDecisionHeader(backendId: string, reason?: string): string {
  const id = backendId.replace(NOT_VISIBLE, '');
  const idPart = TOKEN.test(id) ? id : quote(id);
  if (reason === undefined || reason === '') return idPart;
  const cleanReason = reason.replace(NOT_VISIBLE, ' ').slice(0, MAX_DECISION_REASON_LENGTH);
  return `${idPart}; reason=${quote(cleanReason)}`;
}
