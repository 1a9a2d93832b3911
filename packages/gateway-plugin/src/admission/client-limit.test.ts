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
});
