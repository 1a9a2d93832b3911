import { Agent, type IncomingMessage } from 'node:http';
import { affinityCookie, cookieIsSecure, hashKeyOf, readCookie } from './affinity';
import { createAgentDispatcher, hostKey, urlHostKey } from './agent-dispatcher';
import { clientAddress, setForwardedHeaders, stripHopByHop } from './forwarded';
import { joinVary } from './response-head';

function req(
  headers: Record<string, string>,
  remoteAddress = '10.0.0.9',
  localPort = 8080,
): IncomingMessage {
  return {
    headers: { ...headers },
    socket: { remoteAddress, localPort },
  } as unknown as IncomingMessage;
}

describe('affinity', () => {
  it('reads a cookie among others, quoted or not', () => {
    expect(readCookie('a=1; lw=abc; b=2', 'lw')).toBe('abc');
    expect(readCookie('lw="q"', 'lw')).toBe('q');
    expect(readCookie('xlw=1; lw2=2', 'lw')).toBeUndefined();
    expect(readCookie(undefined, 'lw')).toBeUndefined();
  });

  it('takes the key from the header, else the cookie, else the client address', () => {
    const aff = { header: 'x-user', cookie: 'lw', clientAddress: true };
    expect(hashKeyOf(req({ 'x-user': 'u1', cookie: 'lw=c1' }), aff, '10.0.0.9').key).toBe('u1');
    expect(hashKeyOf(req({ cookie: 'lw=c1' }), aff, '10.0.0.9').key).toBe('c1');
    // The address is the flow's clientAddress, taken before X-Forwarded-For grows.
    expect(hashKeyOf(req({ 'x-forwarded-for': '1.2.3.4' }), aff, '5.6.7.8').key).toBe('5.6.7.8');
  });

  it('mints a cookie only when configured and absent', () => {
    const k = hashKeyOf(req({}), { cookie: 'lw', setCookie: true }, '');
    expect(k.newCookie).toMatch(/^[A-Za-z0-9_-]{16}$/);
    expect(k.key).toBe(k.newCookie);
    expect(
      hashKeyOf(req({ cookie: 'lw=x' }), { cookie: 'lw', setCookie: true }, '').newCookie,
    ).toBeUndefined();
    expect(affinityCookie('lw', 'v', 0, true)).toBe('lw=v; Path=/; HttpOnly; SameSite=Lax; Secure');
    // A TLS socket (an https.Server in front of Express) counts without any header.
    const tls = { socket: { encrypted: true }, headers: {} } as unknown as IncomingMessage;
    const plain = { socket: {}, headers: { 'x-forwarded-proto': 'HTTPS, http' } };
    expect(cookieIsSecure(undefined, tls, false)).toBe(true);
    expect(cookieIsSecure('auto', plain as unknown as IncomingMessage, false)).toBe(false);
    expect(cookieIsSecure('auto', plain as unknown as IncomingMessage, true)).toBe(true);
    expect(cookieIsSecure(false, tls, true)).toBe(false);
  });
});

describe('forwarded headers', () => {
  it('takes a trusted entry without the port a proxy added', () => {
    const from = (xff: string) => clientAddress(req({ 'x-forwarded-for': xff }), 1);
    // Azure Application Gateway, IIS ARR: one client, a new port per connection.
    expect(from('203.0.113.7:51234')).toBe('203.0.113.7');
    expect(from('6.6.6.6, 203.0.113.7:51235')).toBe('203.0.113.7');
    expect(from('[2001:db8::7]:51234')).toBe('2001:db8::7');
    expect(from('[2001:db8::7]')).toBe('2001:db8::7');
    // Addresses without a port, and what is not an address with one, stay as they are.
    expect(from('203.0.113.7')).toBe('203.0.113.7');
    expect(from('2001:db8::7')).toBe('2001:db8::7');
    expect(from('::ffff:203.0.113.7')).toBe('::ffff:203.0.113.7');
    expect(from('unknown')).toBe('unknown');
    expect(from('999.1.1.1:80')).toBe('999.1.1.1:80');
    expect(from('[not-an-ip]:80')).toBe('[not-an-ip]:80');
    expect(from('1.2.3.4:123456')).toBe('1.2.3.4:123456');
    expect(from('[2001:db8::7]x')).toBe('[2001:db8::7]x');
  });

  it('overwrites untrusted values from the socket', () => {
    const r = req({ host: 'gw.example:8080', 'x-forwarded-for': '6.6.6.6', forwarded: 'for=x' });
    expect(clientAddress(r, 0)).toBe('10.0.0.9');
    setForwardedHeaders(r, 0, [], '10.0.0.9');
    expect(r.headers).toMatchObject({
      'x-forwarded-for': '10.0.0.9',
      'x-forwarded-proto': 'http',
      'x-forwarded-host': 'gw.example:8080',
      'x-forwarded-port': '8080',
    });
    expect(r.headers.forwarded).toBeUndefined();
  });

  it('sets X-Real-IP to the client address, never the one a request brought, and drops Proxy-Authorization', () => {
    const spoofed = { 'x-real-ip': '6.6.6.6', 'proxy-authorization': 'Basic eDp5' };
    const r = req({ ...spoofed });
    setForwardedHeaders(r, 0, [], clientAddress(r, 0));
    expect(r.headers['x-real-ip']).toBe('10.0.0.9');
    expect(r.headers['proxy-authorization']).toBeUndefined();
    // Behind a proxy that sets no X-Real-IP (an AWS ALB), the client's own went through.
    const t = req({ ...spoofed, 'x-forwarded-for': '6.6.6.6, 203.0.113.7' });
    setForwardedHeaders(t, 1, [], clientAddress(t, 1));
    expect(t.headers['x-real-ip']).toBe('203.0.113.7');
    expect(t.headers['x-forwarded-for']).toBe('6.6.6.6, 203.0.113.7, 10.0.0.9');
    expect(t.headers['proxy-authorization']).toBeUndefined();
  });
});

describe('clientAddress behind trusted proxies', () => {
  const xff = (header: string | string[] | undefined, hops: number): string =>
    clientAddress(
      { headers: { 'x-forwarded-for': header }, socket: { remoteAddress: '10.0.0.9' } } as never,
      hops,
    );

  it('takes the entry the farthest trusted proxy appended, counted from the right', () => {
    // An appending proxy (nginx $proxy_add_x_forwarded_for) after a client that forged 6.6.6.6.
    expect(xff('6.6.6.6, 203.0.113.7', 1)).toBe('203.0.113.7');
    expect(xff('6.6.6.6, 198.51.100.1, 203.0.113.7', 2)).toBe('198.51.100.1');
    expect(xff('6.6.6.6, 198.51.100.1, 203.0.113.7', 3)).toBe('6.6.6.6');
    expect(xff('2001:db8::1, 203.0.113.7', 2)).toBe('2001:db8::1');
  });

  it('with fewer entries than trusted proxies, the left-most one', () => {
    expect(xff('198.51.100.1, 203.0.113.7', 3)).toBe('198.51.100.1');
    expect(xff('203.0.113.7', 32)).toBe('203.0.113.7');
  });

  it('counts several header lines as one list, in order', () => {
    expect(xff(['6.6.6.6, 198.51.100.1', '203.0.113.7'], 1)).toBe('203.0.113.7');
    expect(xff(['6.6.6.6, 198.51.100.1', '203.0.113.7'], 2)).toBe('198.51.100.1');
    expect(xff(['6.6.6.6', '198.51.100.1, 203.0.113.7'], 3)).toBe('6.6.6.6');
  });

  it('trims spaces and skips empty entries', () => {
    expect(xff('  6.6.6.6 ,\t203.0.113.7  ', 1)).toBe('203.0.113.7');
    expect(xff('6.6.6.6,203.0.113.7', 2)).toBe('6.6.6.6');
    expect(xff('6.6.6.6, , 203.0.113.7,', 1)).toBe('203.0.113.7');
    expect(xff('6.6.6.6, , 203.0.113.7,', 2)).toBe('6.6.6.6');
    // nginx appends to an empty header as `, <addr>`.
    expect(xff(', 203.0.113.7', 2)).toBe('203.0.113.7');
  });

  it('falls back to the socket without trust or without an entry', () => {
    expect(xff('6.6.6.6, 203.0.113.7', 0)).toBe('10.0.0.9');
    expect(xff(undefined, 1)).toBe('10.0.0.9');
    expect(xff('', 1)).toBe('10.0.0.9');
    expect(xff(' , ,, ', 2)).toBe('10.0.0.9');
    expect(xff(',', 1)).toBe('10.0.0.9');
  });
});

describe('hop-by-hop headers', () => {
  it('strips hop-by-hop headers but never one the client names in Connection', () => {
    const r = req({
      connection: 'close, X-Private, content-length, authorization, host, transfer-encoding',
      'x-private': '1',
      'keep-alive': 'timeout=1',
      'proxy-connection': 'keep-alive',
      te: 'trailers',
      trailer: 'x-t',
      expect: '100-continue',
      upgrade: 'h2c',
      'http2-settings': 'AAMAAABkAAQAoAAAAAIAAAAA',
      'content-length': '5',
      authorization: 'Bearer t',
      host: 'gw',
      'x-kept': 'yes',
    });
    stripHopByHop(r.headers);
    expect(r.headers).toEqual({
      'x-private': '1',
      'content-length': '5',
      authorization: 'Bearer t',
      host: 'gw',
      'x-kept': 'yes',
    });
  });
});

describe('agent dispatcher keys', () => {
  it('matches WHATWG URLs with Node request options', () => {
    expect(urlHostKey(new URL('http://[::1]:3000/x'))).toBe(hostKey('::1', 3000));
    expect(urlHostKey(new URL('https://Example.com/'))).toBe(hostKey('example.com', '443'));
    expect(urlHostKey(new URL('http://127.0.0.1'))).toBe('127.0.0.1:80');
  });

  it('hands each request to the pool set for its host, also after the pools change', () => {
    const d = createAgentDispatcher('http:');
    const seen: string[] = [];
    const pool = (name: string): Agent =>
      Object.assign(new Agent(), { addRequest: () => void seen.push(name) });
    const send = (host: string, port: number): void =>
      (d.agent as unknown as { addRequest(r: unknown, o: object): void }).addRequest(
        {},
        { host, port },
      );
    d.set(hostKey('127.0.0.1', 8080), pool('a'));
    send('127.0.0.1', 8080);
    send('127.0.0.1', 8080);
    const b = pool('b');
    d.set(hostKey('127.0.0.1', 8080), b);
    send('127.0.0.1', 8080);
    // The pool that was replaced leaving removes nothing: 'b' still serves the key.
    d.delete(hostKey('127.0.0.1', 8080), new Agent());
    send('127.0.0.1', 8080);
    d.delete(hostKey('127.0.0.1', 8080), b);
    d.set(hostKey('localhost', 80), pool('c'));
    send('LOCALHOST', 80);
    expect(seen).toEqual(['a', 'a', 'b', 'b', 'c']);
    d.destroy();
  });
});

describe('joinVary', () => {
  it('joins Vary lists, each field once whatever its case, in the order first seen', () => {
    expect(joinVary('Origin', 'Accept-Encoding, origin')).toBe('Origin, Accept-Encoding');
    expect(joinVary(['Origin', 'Accept'], ' accept ,, Cookie')).toBe('Origin, Accept, Cookie');
    expect(joinVary(undefined, 'Accept-Encoding')).toBe('Accept-Encoding');
  });

  it('answers * alone when any value says it', () => {
    expect(joinVary('Origin', 'Accept-Encoding, *')).toBe('*');
    expect(joinVary(['*'], 'Origin')).toBe('*');
  });
});
