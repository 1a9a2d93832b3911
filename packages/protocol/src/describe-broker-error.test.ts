/**
 * The broker's connection errors as the gateway and the agent log them: one line, with the
 * code an operator searches for.
 */
import { describeBrokerError as describeError, isBrokerHangUp } from './broker-url';

const err = (message: string, fields: Record<string, unknown>): Error =>
  Object.assign(new Error(message), fields);

describe('describeError', () => {
  it.each([
    // A certificate Node could not verify: the code was left out.
    [
      err('self-signed certificate in certificate chain', { code: 'SELF_SIGNED_CERT_IN_CHAIN' }),
      'SELF_SIGNED_CERT_IN_CHAIN: self-signed certificate in certificate chain',
    ],
    // OpenSSL's alerts: the code and reason, not the library's prefix and source path.
    [
      err('808C:error:0A000418:SSL routines:ssl3_read_bytes:tlsv1 alert unknown ca:x.c:1601\n', {
        code: 'ERR_SSL_TLSV1_ALERT_UNKNOWN_CA',
        reason: 'tlsv1 alert unknown ca',
      }),
      'ERR_SSL_TLSV1_ALERT_UNKNOWN_CA: tlsv1 alert unknown ca',
    ],
    // A message that names its code already says it once.
    [
      err('connect ECONNREFUSED 127.0.0.1:1883', { code: 'ECONNREFUSED' }),
      'connect ECONNREFUSED 127.0.0.1:1883',
    ],
    [err('connack timeout\n', {}), 'connack timeout'],
  ])('%p', (e, line) => {
    expect(describeError(e)).toBe(line);
  });
});

describe('isBrokerHangUp', () => {
  it.each([
    ['read ECONNRESET', 'ECONNRESET', true],
    ['write EPIPE', 'EPIPE', true],
    ['connect ECONNREFUSED 127.0.0.1:1883', 'ECONNREFUSED', false],
    ['self-signed certificate in certificate chain', 'SELF_SIGNED_CERT_IN_CHAIN', false],
    ['connack timeout', undefined, false],
  ])('%s', (message, code, hangUp) => {
    expect(isBrokerHangUp(err(message, { code }))).toBe(hangUp);
  });
});
