import { parse } from 'node:url';

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
