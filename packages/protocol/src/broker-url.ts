import { X509Certificate, createPrivateKey } from 'node:crypto';
import { createSecureContext } from 'node:tls';
import { parse } from 'node:url';

/**
 * A URL without its credentials: a broker URL may carry `user:password@`, and its query
 * may carry them too (a presigned `wss://` URL: AWS IoT's `X-Amz-Signature`, an Azure SAS
 * token), shown whole on the gateway's dashboard and in log lines before, and printed whole by the examples: each parameter keeps its
 * name, not its value, and the fragment goes.
 */
export function redactUrl(url: string): string {
  // Up to the last `@` before any query: a password may hold an `@` (mqtt.js takes
  // `mqtt://u:p@ss@host`; up to the first showed its end) or a `/` (a URL a validation
  // error refuses, echoed whole before). A path holding an `@` loses the host too.
  const shown = url.replace(/^([a-z][a-z0-9+.-]*:\/\/)[^?#]*@/i, '$1***@').replace(/#.*$/s, '');
  const q = shown.indexOf('?');
  if (q < 0) return shown;
  return shown.slice(0, q) + shown.slice(q).replace(/=[^&]*/g, '=***');
}

/**
 * True when a broker URL names a user that mqtt.js sends as the username by itself: it
 * reads the URL's `auth` with Node's legacy parser (decoded, so `a%3Ab` is `a:b`), and an
 * `auth` of the form `user:pass` sets both, its password over any given beside it. So only
 * a user alone counts, with no `:` in it (the gateway's and the agent's check that a
 * password has a username, and examples/gateway-server.ts). WHATWG's URL took `a%3Ab`
 * for a user while mqtt.js sent user `a` with the URL's password `b`.
 */
export function brokerUrlNamesUser(url: string): boolean {
  let auth: string | null;
  try {
    auth = parse(url).auth;
  } catch {
    return false;
  }
  // `:pass` alone (no user) went as the username ":pass".
  return auth !== null && auth !== '' && !auth.includes(':');
}

/**
 * Why a broker URL cannot be used as one connection's among several, or undefined: mqtt.js
 * takes a `clientId` in the URL's query over the client id it is given (its legacy parse,
 * a string only), so every gateway, worker or agent started from one URL (a template, an
 * environment variable, runWorkers) connected with the same id, and the broker closed the
 * older connection at each one's reconnect: they knocked each other off about once a
 * second, and reports arriving in the gaps were lost. The gateway's and the agent's
 * checks, each naming its own way to set an id.
 */
export function brokerUrlClientIdProblem(url: string, instead: string): string | undefined {
  let clientId: unknown;
  try {
    clientId = parse(url, true).query.clientId;
  } catch {
    return undefined; // the URL's own check says what is wrong with it
  }
  if (typeof clientId !== 'string') return undefined;
  return `the broker URL sets clientId, which mqtt.js gives every connection made from it (two with one id knock each other off the broker): ${instead}`;
}

/**
 * Why TLS options for a broker do not fit its URL, or undefined: `ca`, `cert`, `key` and
 * `rejectUnauthorized` beside an `mqtt://`, `tcp://` or `ws://` URL were ignored without a
 * word (the password went out in clear text to whoever listened), except that mqtt.js
 * quietly switched to TLS for a `cert` and `key`. The gateway's and the agent's checks.
 */
export function brokerTlsMismatch(
  url: string,
  tls: { ca?: unknown; cert?: unknown; key?: unknown; rejectUnauthorized?: unknown },
): string | undefined {
  const given = (['ca', 'cert', 'key', 'rejectUnauthorized'] as const).filter(
    (k) => tls[k] !== undefined,
  );
  if (given.length === 0) return undefined;
  let scheme: string;
  try {
    scheme = new URL(url).protocol;
  } catch {
    return undefined; // the URL's own check says what is wrong with it
  }
  if (scheme === 'mqtts:' || scheme === 'ssl:' || scheme === 'wss:') return undefined;
  return `${given.join(', ')} ${given.length === 1 ? 'is a TLS option' : 'are TLS options'}, but the broker URL is ${scheme}// (clear text): use mqtts:// or wss://`;
}

/**
 * Why TLS material cannot be used, or undefined: Node reads it only when it connects, so
 * a certificate and key that do not match, or a file name given for its contents, failed
 * every connection (and a throw at the first one ended a gateway). A CA with no PEM
 * certificate in it left an empty trust store. The message names no part of a key.
 */
export function tlsMaterialProblem(tls: {
  ca?: string | Buffer | (string | Buffer)[] | undefined;
  cert?: string | Buffer | undefined;
  key?: string | Buffer | undefined;
}): string | undefined {
  // Nothing given: nothing to read, and no secure context built at every construction.
  if (tls.ca === undefined && tls.cert === undefined && tls.key === undefined) return undefined;
  const cas = tls.ca === undefined ? [] : Array.isArray(tls.ca) ? tls.ca : [tls.ca];
  if (cas.some((ca) => !/-----BEGIN (TRUSTED )?CERTIFICATE-----/.test(String(ca))))
    return 'the CA holds no PEM certificate (-----BEGIN CERTIFICATE-----; a file name where its contents belong?)';
  try {
    createSecureContext({ ca: tls.ca, cert: tls.cert, key: tls.key });
  } catch (err) {
    const e = err as Error & { code?: string };
    const why =
      e.code === 'ERR_OSSL_X509_KEY_VALUES_MISMATCH'
        ? "the key is not the certificate's"
        : e.message.replace(/^error:[0-9A-F]+:/, '');
    return `the certificate, key or CA cannot be used (${e.code ?? 'error'}: ${why})`;
  }
  // OpenSSL compares a key with the certificate of its own type only: an EC key beside an
  // RSA certificate passed, and no client certificate was sent at all.
  if (tls.cert !== undefined && tls.key !== undefined) {
    let matches = false;
    try {
      matches = new X509Certificate(tls.cert).checkPrivateKey(createPrivateKey(tls.key));
    } catch {
      matches = false;
    }
    if (!matches)
      return "the certificate, key or CA cannot be used (the key is not the certificate's)";
  }
  return undefined;
}

/**
 * One readable line for an error of a broker connection (mqtt.js's `error` event), the same
 * in the agent's log and the gateway's. OpenSSL's messages carry a library-internal prefix, a
 * source path and a trailing newline ("808C...:error:0A000418:SSL
 * routines:ssl3_read_bytes:tlsv1 alert unknown ca:../deps/openssl/...:1601:SSL alert number
 * 48\n"); Node also gives the same failure as `code` and `reason`, which is what an operator
 * needs ("ERR_SSL_TLSV1_ALERT_UNKNOWN_CA: tlsv1 alert unknown ca").
 */
export function describeBrokerError(err: Error & { code?: unknown; reason?: unknown }): string {
  if (typeof err.reason === 'string' && typeof err.code === 'string') {
    return `${err.code}: ${err.reason}`;
  }
  const message = err.message.trim();
  // A certificate Node could not verify has its code apart from its message
  // (SELF_SIGNED_CERT_IN_CHAIN: "self-signed certificate in certificate chain"), the code
  // being what the docs and a search name.
  return typeof err.code === 'string' && !message.includes(err.code)
    ? `${err.code}: ${message}`
    : message;
}

/**
 * Whether a broker connection's error says the peer took the connection and then hung up
 * on it (a reset, or a write into one it had closed): before a CONNACK, what a TLS port
 * given as mqtt:// does (Mosquitto resets it), as a WebSocket port or a broker at its
 * connection limit closes it.
 */
export function isBrokerHangUp(err: Error & { code?: unknown }): boolean {
  return err.code === 'ECONNRESET' || err.code === 'EPIPE';
}

/**
 * What to check when a broker closes (or resets) a connection before its CONNACK: it was
 * never accepted, and nothing else says why.
 */
export const NO_CONNACK_HINT =
  'is it an MQTT port (not TLS or WebSocket), and does the broker allow this client id, ' +
  'protocol version and one more connection (or is it a proxy whose broker is down)?';
