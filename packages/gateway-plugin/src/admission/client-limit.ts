/**
 * A bound on the requests one client has in the gateway at once (waiting for
 * a slot or proxied). Without it one address can hold every backend slot and
 * the whole wait queue, e.g. with POSTs that trickle their body: measured with
 * bench/hostile/slow-clients.ts, 1,000 such requests from one address made
 * every one of 1,000 normal requests from another fail with 503.
 *
 * Memory is bounded by the requests in the gateway: a client's entry goes
 * when its last request ends.
 */
import { isIPv4, isIPv6 } from 'node:net';
import { ipv6Groups } from '../ipv6-groups';

export class ClientLimit {
  private readonly inFlight = new Map<string, number>();

  constructor(readonly max: number) {}

  /** Takes a slot for `key`; false (and nothing taken) when it already holds `max`. */
  acquire(key: string): boolean {
    const n = this.inFlight.get(key) ?? 0;
    if (n >= this.max) return false;
    this.inFlight.set(key, n + 1);
    return true;
  }

  release(key: string): void {
    const n = this.inFlight.get(key);
    if (n === undefined) return;
    if (n <= 1) this.inFlight.delete(key);
    else this.inFlight.set(key, n - 1);
  }

  /** Requests `key` holds now. */
  count(key: string): number {
    return this.inFlight.get(key) ?? 0;
  }

  /** Clients holding at least one request. */
  get clients(): number {
    return this.inFlight.size;
  }
}

/**
 * The key a client is counted under: its IPv4 address (also when written as
 * IPv4-mapped IPv6, as a dual-stack server reports it, in any spelling, or
 * as NAT64's well-known 64:ff9b::/96, RFC 6052), or the /64 prefix of
 * an IPv6 address. One IPv6 host usually owns a whole /64 (RFC 4291 §2.5.4,
 * SLAAC), so counting single IPv6 addresses would let one client pose as
 * 2^64 clients. An address that embeds an IPv4 one is that client: taken by
 * its /64, every IPv4 user of an IPv6-only gateway behind NAT64 or SIIT-DC
 * (RFC 7755), and every one written `::ffff:c633:6401`, shared one client's
 * limits (an HTTP-side review, 2026-12-07). Anything else (a trusted
 * X-Forwarded-For value that is not an address) is its own key.
 */
export function clientKey(address: string): string {
  const mapped = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i.exec(address);
  if (mapped) return mapped[1]!;
  if (isIPv4(address)) return address;
  const zone = address.indexOf('%');
  const ip = zone >= 0 ? address.slice(0, zone) : address;
  if (!isIPv6(ip)) return address;
  const g = ipv6Groups(ip);
  const mappedV4 = g[0] === 0 && g[1] === 0 && g[2] === 0 && g[3] === 0 && g[5] === 0xffff;
  const nat64 = g[0] === 0x64 && g[1] === 0xff9b && g[2] === 0 && g[3] === 0;
  if (g[4] === 0 && (mappedV4 || (nat64 && g[5] === 0))) {
    const [hi = 0, lo = 0] = [g[6], g[7]];
    return `${hi >> 8}.${hi & 0xff}.${lo >> 8}.${lo & 0xff}`;
  }
  const prefix = g.slice(0, 4).map((x) => x.toString(16));
  return `${prefix.join(':')}::/64`;
}
