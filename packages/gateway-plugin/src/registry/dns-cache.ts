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
 *
 * Only an outage falls back: silence, or a temporary failure (`EAI_AGAIN`,
 * a resolver timing out or refusing). A name the resolver says does not exist
 * (`ENOTFOUND`, `ENODATA`) fails at once, and an answer older than KEEP_MS is
 * not used: a deleted name kept its old address, whose port a reused pod IP
 * then answered for another service, health checks included (the session's
 * review of this change). A name never resolved fails as before.
 */
import { lookup as dnsLookup, type LookupAddress, type LookupAllOptions } from 'node:dns';

/**
 * How long a connection waits for a lookup before it takes the last good answer, ms: below
 * the connect and health-check timeouts, which run from before the lookup (a
 * `connectTimeoutMs` or `healthCheck.timeoutMs` under it leaves the fallback no time).
 */
export const STALE_AFTER_MS = 500;
/** The oldest last good answer used, ms: past it a name fails as before. */
export const KEEP_MS = 5 * 60_000;
/** Lookup failures that say the resolver is out, not that the name is gone. */
const OUTAGE_CODES = new Set([
  'EAI_AGAIN',
  'ETIMEOUT',
  'ESERVFAIL',
  'ECONNREFUSED',
  'EREFUSED',
  'ECANCELLED',
]);
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
  keepMs?: number;
  lookup?: LookupAll;
  now?: () => number;
}

interface Kept {
  addresses: LookupAddress[];
  atMs: number;
}

export function createCachedLookup(o: CachedLookupOptions = {}): ConnectLookup {
  const staleAfterMs = o.staleAfterMs ?? STALE_AFTER_MS;
  const keepMs = o.keepMs ?? KEEP_MS;
  const lookupAll: LookupAll = o.lookup ?? ((h, opts, cb) => dnsLookup(h, opts, cb));
  const now = o.now ?? (() => performance.now());
  /** The last good answer of each name. */
  const last = new Map<string, Kept>();
  /** Lookups under way: the connections waiting for each. */
  const waiting = new Map<string, AllCallback[]>();

  return (hostname, options, callback) => {
    const f = options.family;
    const family = f === 'IPv4' ? 4 : f === 'IPv6' ? 6 : Number(f ?? 0) || 0;
    const key = `${family}/${options.hints ?? 0}/${hostname}`;
    const entry = last.get(key);
    const kept = entry !== undefined && now() - entry.atMs < keepMs ? entry.addresses : undefined;
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
      if (kept !== undefined && err && OUTAGE_CODES.has(err.code ?? '')) return reply(null, kept);
      reply(err ?? notFound(hostname), []);
    };
    const queued = waiting.get(key);
    if (queued) return void queued.push(done);
    waiting.set(key, [done]);
    const settle = (err: NodeJS.ErrnoException | null, addresses: LookupAddress[]): void => {
      const callbacks = waiting.get(key) ?? [];
      waiting.delete(key);
      if (!err && addresses.length > 0) {
        last.delete(key);
        last.set(key, { addresses, atMs: now() });
        if (last.size > MAX_NAMES) last.delete(last.keys().next().value!);
      }
      for (const cb of callbacks) cb(err, addresses ?? []);
    };
    try {
      lookupAll(hostname, { all: true, family, hints: options.hints }, settle);
    } catch (err) {
      // dns.lookup validates its arguments by throwing: the name must not stay "under
      // way" for good, every later connection joining a lookup that never answers.
      process.nextTick(settle, err as NodeJS.ErrnoException, []); // answered later, as a lookup is
    }
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
