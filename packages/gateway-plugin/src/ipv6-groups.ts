/**
 * The eight 16-bit groups of a valid IPv6 address (no zone): `::` expanded,
 * a dotted IPv4 tail (`::1.2.3.4`) as its two groups. For the /64 a client is
 * counted under (admission/client-limit.ts) and the IPv4 address a NAT64 one
 * embeds (balancer.ts specialAddress).
 */
export function ipv6Groups(ip: string): number[] {
  const parse = (part: string): number[] =>
    part === ''
      ? []
      : part.split(':').flatMap((g) => {
          if (!g.includes('.')) return [parseInt(g, 16)];
          const [a = 0, b = 0, c = 0, d = 0] = g.split('.').map(Number);
          return [(a << 8) | b, (c << 8) | d];
        });
  const [head = '', tail] = ip.split('::') as [string, string | undefined];
  const left = parse(head);
  if (tail === undefined) return left;
  const right = parse(tail);
  return [...left, ...new Array<number>(8 - left.length - right.length).fill(0), ...right];
}
