import { ClientLimit, clientKey } from './client-limit';

describe('ClientLimit', () => {
  it('holds at most max per key and forgets a key with nothing in flight', () => {
    const l = new ClientLimit(2);
    expect(l.acquire('a')).toBe(true);
    expect(l.acquire('a')).toBe(true);
    expect(l.acquire('a')).toBe(false);
    expect(l.acquire('b')).toBe(true);
    expect(l.count('a')).toBe(2);
    l.release('a');
    expect(l.acquire('a')).toBe(true);
    l.release('a');
    l.release('a');
    l.release('b');
    expect(l.clients).toBe(0);
    l.release('never'); // unknown key: no negative counts
    expect(l.count('never')).toBe(0);
  });
});

describe('clientKey', () => {
  it('keeps IPv4, unwraps IPv4-mapped IPv6, and groups IPv6 by /64', () => {
    expect(clientKey('10.1.2.3')).toBe('10.1.2.3');
    expect(clientKey('::ffff:10.1.2.3')).toBe('10.1.2.3');
    expect(clientKey('2001:db8:1:2:aaaa::1')).toBe('2001:db8:1:2::/64');
    expect(clientKey('2001:db8:1:2:bbbb:cccc:dddd:eeee')).toBe('2001:db8:1:2::/64');
    expect(clientKey('2001:DB8:0001:0002::9')).toBe('2001:db8:1:2::/64');
    expect(clientKey('2001:db8::1')).toBe('2001:db8:0:0::/64');
    expect(clientKey('::1')).toBe('0:0:0:0::/64');
    expect(clientKey('fe80::1%eth0')).toBe('fe80:0:0:0::/64');
    expect(clientKey('not-an-address')).toBe('not-an-address');
  });

  it('takes an address that embeds an IPv4 one for that IPv4 client, not for its /64', () => {
    // NAT64 / SIIT-DC: every IPv4 user of an IPv6-only gateway arrives as 64:ff9b::a.b.c.d,
    // and was counted as one client (one /64): one user's 64 requests, 429 for all.
    expect(clientKey('64:ff9b::198.51.100.7')).toBe('198.51.100.7');
    expect(clientKey('64:ff9b::c633:6407')).toBe('198.51.100.7');
    expect(clientKey('::ffff:c633:6407')).toBe('198.51.100.7');
    expect(clientKey('0:0:0:0:0:FFFF:C633:6407')).toBe('198.51.100.7');
    expect(clientKey('64:ff9b::198.51.100.8')).not.toBe(clientKey('64:ff9b::198.51.100.7'));
    // Not the well-known prefix's /96: still by /64.
    expect(clientKey('64:ff9b:1::c633:6407')).toBe('64:ff9b:1:0::/64');
    expect(clientKey('64:ff9b::1:c633:6407')).toBe('64:ff9b:0:0::/64');
  });
});
