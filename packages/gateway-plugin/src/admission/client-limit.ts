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
 * IPv4-mapped IPv6, as a dual-stack server reports it), or the /64 prefix of
 * an IPv6 address. One IPv6 host usually owns a whole /64 (RFC 4291 §2.5.4,
 * SLAAC), so counting single IPv6 addresses would let one client pose as
 * 2^64 clients. Anything else (a trusted X-Forwarded-For value that is not
 * an address) is its own key.
 */
export function clientKey(address: string): string {
  const mapped = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i.exec(address);
  if (mapped) return mapped[1]!;
  if (isIPv4(address)) return address;
  const zone = address.indexOf('%');
  const ip = zone >= 0 ? address.slice(0, zone) : address;
  if (!isIPv6(ip)) return address;
  const prefix = ipv6Groups(ip)
    .slice(0, 4)
    .map((g) => g.toString(16));
  return `${prefix.join(':')}::/64`;
}
