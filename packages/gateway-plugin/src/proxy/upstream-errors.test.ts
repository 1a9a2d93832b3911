import { codedError, isLocalResourceError } from './upstream-errors';

describe('isLocalResourceError', () => {
  it.each(['EMFILE', 'ENFILE', 'ENOBUFS', 'ENOMEM'])(
    '%s: the gateway ran out, not the backend',
    (code) => {
      expect(isLocalResourceError(codedError('connect failed', code))).toBe(true);
    },
  );

  it.each(['EADDRNOTAVAIL', 'ECONNREFUSED', 'EHOSTUNREACH', 'ETIMEDOUT', 'ECONNRESET'])(
    '%s: about the destination, charged to the backend and retried elsewhere',
    (code) => {
      // EADDRNOTAVAIL on a connect is one destination's (no source address for it, or the
      // ports towards it used up): taken as the gateway's, a backend that always failed so
      // was never ejected and half the requests of a two-backend fleet got 503.
      expect(isLocalResourceError(codedError('connect failed', code))).toBe(false);
    },
  );

  it('an error without a code is not one', () => {
    expect(isLocalResourceError(new Error('x'))).toBe(false);
  });
});
