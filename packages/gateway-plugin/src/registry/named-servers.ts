/**
 * The addresses of configured backends addressed by name, for discovery's "one id per
 * server". A registration names an IP literal; a configured backend may name a host
 * (`http://api-1.internal:8080`). Compared as text, `http://10.0.0.5:8080` registered for
 * another id was another server than `api-1.internal:8080` resolving to 10.0.0.5: a key
 * holder took a second id on a configured backend's server (a review: 165 of 300
 * requests on that one server, its load estimate split into two halves that each looked
 * idle), which docs/gateway.md says is refused.
 *
 * The names are looked up as the backends' connections look them up (registry/dns-cache.ts),
 * again every REFRESH_MS. A lookup that fails for an outage keeps the answer before. Until a
 * name has had an answer, a registration on its port cannot be told apart from it, and is
 * refused for now (its agent registers again every 20 s), however the lookup fails: a name
 * that does not exist yet (a Service created after the gateway) let a key holder take its
 * server, and keep it once the name resolved. A name that resolved and then does not exist
 * (deleted) has no address. Each answer that changes a name's addresses is passed to
 * `onChange`, so that a discovered backend at one of them can be let go. Addresses compare
 * as server keys (server.ts serverHost: every loopback address is one).
 */
import { isIP } from 'node:net';
import type { LookupAddress } from 'node:dns';
import type { ConnectLookup } from './dns-cache';
import { portOf, serverHost } from './server';

/** How often the names are looked up again, ms. */
export const REFRESH_MS = 30_000;

interface Named {
  id: string;
  hostname: string;
  port: number;
  /** The last answer's addresses (server keys); undefined until a lookup answered. */
  addresses?: Set<string>;
  /** A lookup is under way: one at a time per name, however many registrations ask. */
  looking?: boolean;
}

export type NamedServerMatch =
  | { id: string; hostname: string; resolved: true }
  | { id: string; hostname: string; resolved: false };

export class NamedServers {
  private readonly byPort = new Map<number, Named[]>();
  private lastRefreshMs = -Infinity;
  private closed = false;

  constructor(
    backends: ReadonlyArray<{ id: string; url: URL }>,
    private readonly lookup: ConnectLookup,
    private readonly now: () => number,
    /** A name's addresses changed: the configured backend `id` is the server at each, on `port`. */
    private readonly onChange: (
      id: string,
      port: number,
      addresses: ReadonlySet<string>,
    ) => void = () => {},
  ) {
    for (const { id, url } of backends) {
      const hostname = url.hostname;
      // An IP literal is compared as the server key already (registry/server.ts).
      if (isIP(hostname.replace(/^\[|\]$/g, '')) !== 0) continue;
      const port = portOf(url);
      const list = this.byPort.get(port) ?? [];
      list.push({ id, hostname, port });
      this.byPort.set(port, list);
    }
  }

  /** True when some configured backend is addressed by name. */
  get any(): boolean {
    return this.byPort.size > 0;
  }

  /** Looks every name up again, at most every REFRESH_MS (called from the balancer's sweep). */
  refresh(): void {
    const t = this.now();
    if (this.closed || !this.any || t - this.lastRefreshMs < REFRESH_MS) return;
    this.lastRefreshMs = t;
    for (const list of this.byPort.values()) for (const n of list) this.resolve(n);
  }

  /**
   * The configured backend whose name resolves to `address` on `port`, or one on that port
   * whose name has no answer yet (then no registration there can be told apart from it).
   */
  match(address: string, port: number): NamedServerMatch | undefined {
    let unresolved: Named | undefined;
    for (const n of this.byPort.get(port) ?? []) {
      if (n.addresses === undefined) {
        unresolved ??= n;
        // Asked again now rather than at the next refresh: the agent's next try may pass.
        this.resolve(n);
      } else if (n.addresses.has(serverHost(address))) {
        return { id: n.id, hostname: n.hostname, resolved: true };
      }
    }
    return unresolved && { id: unresolved.id, hostname: unresolved.hostname, resolved: false };
  }

  close(): void {
    this.closed = true;
  }

  private resolve(n: Named): void {
    if (n.looking) return;
    n.looking = true;
    this.lookup(n.hostname, { all: true }, (err, addresses) => {
      n.looking = false;
      if (this.closed) return;
      // A name deleted from DNS kept its old address against a new service there for good.
      // One that never resolved stays unresolved: it may be about to exist.
      const gone = err?.code === 'ENOTFOUND' || err?.code === 'ENODATA';
      if (gone && n.addresses !== undefined) n.addresses = new Set();
      if (err || !Array.isArray(addresses) || addresses.length === 0) return;
      const next = new Set((addresses as LookupAddress[]).map((a) => serverHost(a.address)));
      const changed =
        n.addresses === undefined ||
        next.size !== n.addresses.size ||
        [...next].some((a) => !n.addresses!.has(a));
      n.addresses = next;
      if (changed) this.onChange(n.id, n.port, next);
    });
  }
}
