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
 * again every REFRESH_MS. A name's server is every address its answers gave within KEEP_MS
 * (round-robin DNS answers a subset each time: the latest answer alone let a discovered
 * backend in and out, every other refresh, a review found). A lookup failing for an outage
 * keeps what was seen; a name that does not exist (ENOTFOUND, ENODATA) has no address.
 * Until a name has had an answer, a registration on its port cannot be told apart from it,
 * and is refused for now (its agent registers again every 20 s). An address new to a name
 * is passed to `onChange`, so that a discovered backend there (admitted while the name did
 * not exist yet, a Service created after the gateway) is let go. Addresses compare as
 * server keys (server.ts serverHost: every loopback address is one).
 */
import { isIP } from 'node:net';
import type { LookupAddress } from 'node:dns';
import { urlHost } from './backend-tls';
import { KEEP_MS, type ConnectLookup } from './dns-cache';
import { portOf, serverHost } from './server';

/** How often the names are looked up again, ms. */
export const REFRESH_MS = 30_000;

interface Named {
  id: string;
  hostname: string;
  port: number;
  /**
   * Server keys its answers gave, each with when it was last given; undefined until a
   * lookup answered (an answer that the name does not exist leaves it empty).
   */
  addresses?: Map<string, number>;
  /** A lookup is under way: one at a time per name, however many registrations ask. */
  looking?: boolean;
}

/** A configured backend named by host that a registration meets: at its server, or not resolved yet. */
export interface NamedServerMatch {
  id: string;
  hostname: string;
  resolved: boolean;
}

export class NamedServers {
  private readonly byPort = new Map<number, Named[]>();
  private lastRefreshMs = -Infinity;
  private closed = false;

  constructor(
    backends: ReadonlyArray<{ id: string; url: URL }>,
    private readonly lookup: ConnectLookup,
    private readonly now: () => number,
    /** Addresses new to a name: the configured backend `id` is the server at each, on `port`. */
    private readonly onChange: (
      id: string,
      port: number,
      addresses: ReadonlySet<string>,
    ) => void = () => {},
  ) {
    for (const { id, url } of backends) {
      const hostname = url.hostname;
      // An IP literal is compared as the server key already (registry/server.ts).
      if (isIP(urlHost(url)) !== 0) continue;
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
      if (err?.code === 'ENOTFOUND' || err?.code === 'ENODATA') {
        n.addresses = new Map();
        return;
      }
      if (err || !Array.isArray(addresses) || addresses.length === 0) return;
      const t = this.now();
      const seen = (n.addresses ??= new Map());
      const added = new Set<string>();
      for (const a of addresses as LookupAddress[]) {
        const key = serverHost(a.address);
        if (!seen.has(key)) added.add(key);
        seen.set(key, t);
      }
      for (const [key, at] of seen) if (t - at > KEEP_MS) seen.delete(key);
      if (added.size > 0) this.onChange(n.id, n.port, added);
    });
  }
}
