/**
 * Name resolution for backends addressed by name (`http://api.internal:8080`):
 * every new connection still looks the name up (a pod replaced under the same
 * name is reached at once, as before), but when the lookup fails, or gives no
 * answer within STALE_AFTER_MS, the last good answer is used, as Envoy keeps
 * a cluster's last hosts when its resolver fails.
 *
 * Why: with the resolver down, every new connection waited out
 * `connectTimeoutMs` for a lookup that never came back and failed; pooled
 * connections alone still worked. In a review's run every request needing a
 * new connection got 503 after about 10 s (two connect timeouts), a healthy
 * backend was ejected, and the log said LW_GW_CONNECT_TIMEOUT. Lookups of one
 * name that overlap share one (Node's lookups run on libuv's four pool
 * threads, and one that hangs holds a thread for the resolver's whole timeout).
 * A name never resolved fails as before.
 */
import { lookup as dnsLookup, type LookupAddress, type LookupAllOptions } from 'node:dns';

/** How long a connection waits for a lookup before it takes the last good answer, ms. */
export const STALE_AFTER_MS = 1_000;
/** Names whose last answer is kept, at most (backends by name): the oldest goes first. */
const MAX_NAMES = 1_024;

type AllCallback = (err: NodeJS.ErrnoException | null, addresses: LookupAddress[]) => void;
/** dns.lookup with `all: true`, the one form this asks (a test passes its own). */
export type LookupAll = (
  hostname: string,
  options: LookupAllOptions,
  callback: AllCallback,
) => void;

/** The `lookup` option of net.connect / http.request: either callback shape. */
export type ConnectLookup = (
  hostname: string,
  options: { family?: number | string; hints?: number; all?: boolean },
  callback: (
    err: NodeJS.ErrnoException | null,
    address: string | LookupAddress[],
    family?: number,
  ) => void,
) => void;

export interface CachedLookupOptions {
  staleAfterMs?: number;
  lookup?: LookupAll;
}

export function createCachedLookup(o: CachedLookupOptions = {}): ConnectLookup {
  const staleAfterMs = o.staleAfterMs ?? STALE_AFTER_MS;
  const lookupAll: LookupAll = o.lookup ?? ((h, opts, cb) => dnsLookup(h, opts, cb));
  /** The last good answer of each name. */
  const last = new Map<string, LookupAddress[]>();
  /** Lookups under way: the connections waiting for each. */
  const waiting = new Map<string, AllCallback[]>();

  return (hostname, options, callback) => {
    const f = options.family;
    const family = f === 'IPv4' ? 4 : f === 'IPv6' ? 6 : Number(f ?? 0) || 0;
    const key = `${family}/${options.hints ?? 0}/${hostname}`;
    const kept = last.get(key);
    let settled = false;
    const reply = (err: NodeJS.ErrnoException | null, addresses: LookupAddress[]): void => {
      if (settled) return;
      settled = true;
      if (timer) clearTimeout(timer);
      if (err) return callback(err, options.all === true ? [] : '');
      if (options.all === true) return callback(null, addresses);
      callback(null, addresses[0]!.address, addresses[0]!.family);
    };
    // The resolver silent: the last good answer, the lookup left to finish for the next.
    const timer =
      kept === undefined ? undefined : setTimeout(() => reply(null, kept), staleAfterMs);
    timer?.unref();
    const done: AllCallback = (err, addresses) => {
      if (!err && addresses.length > 0) return reply(null, addresses);
      if (kept !== undefined) return reply(null, kept);
      reply(err ?? notFound(hostname), []);
    };
    const queued = waiting.get(key);
    if (queued) return void queued.push(done);
    waiting.set(key, [done]);
    lookupAll(hostname, { all: true, family, hints: options.hints }, (err, addresses) => {
      const callbacks = waiting.get(key) ?? [];
      waiting.delete(key);
      if (!err && addresses.length > 0) {
        last.delete(key);
        last.set(key, addresses);
        if (last.size > MAX_NAMES) last.delete(last.keys().next().value!);
      }
      for (const cb of callbacks) cb(err, addresses ?? []);
    });
  };
}

function notFound(hostname: string): NodeJS.ErrnoException {
  return Object.assign(new Error(`getaddrinfo ENOTFOUND ${hostname}`), {
    code: 'ENOTFOUND',
    hostname,
  });
}

/** The lookup every backend addressed by name connects with (pool and health checks). */
export const backendLookup: ConnectLookup = createCachedLookup();
