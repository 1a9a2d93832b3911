import type { IncomingMessage } from 'node:http';
import { checkFraming, checkPath } from './request-checks';

function req(raw: string[], httpVersion = '1.1'): IncomingMessage {
  const headers: Record<string, string> = {};
  // Like Node: the first of a repeated Host/Content-Length wins, others are joined.
  for (let i = 0; i < raw.length; i += 2) {
    const k = raw[i]!.toLowerCase();
    if (headers[k] === undefined) headers[k] = raw[i + 1]!;
    else if (k !== 'host' && k !== 'content-length') headers[k] += `, ${raw[i + 1]}`;
  }
  const [major, minor] = httpVersion.split('.').map(Number);
  return {
    headers,
    rawHeaders: raw,
    httpVersion,
    httpVersionMajor: major,
    httpVersionMinor: minor,
  } as unknown as IncomingMessage;
}

describe('checkFraming', () => {
  it('accepts a body framed by one Content-Length or by chunked, and none', () => {
    expect(checkFraming(req(['Host', 'a']))).toEqual({ ok: true, framing: 'none' });
    expect(checkFraming(req(['Host', 'a', 'Content-Length', '0']))).toEqual({
      ok: true,
      framing: 'none',
    });
    expect(checkFraming(req(['Host', 'a', 'Content-Length', '12']))).toEqual({
      ok: true,
      framing: 'length',
    });
    expect(checkFraming(req(['Host', 'a', 'Transfer-Encoding', ' Chunked ']))).toEqual({
      ok: true,
      framing: 'chunked',
    });
  });

  it.each([
    [['Host', 'a', 'Transfer-Encoding', 'gzip, chunked'], 'Transfer-Encoding other than chunked'],
    [['Host', 'a', 'Transfer-Encoding', 'chunked', 'Transfer-Encoding', 'chunked'], 'other than'],
    [['Host', 'a', 'Transfer-Encoding', 'identity'], 'other than chunked'],
    [['Host', 'a', 'Transfer-Encoding', 'chunked', 'Content-Length', '3'], 'both'],
    [['Host', 'a', 'Content-Length', '3, 3'], 'not a single number'],
    [['Host', 'a', 'Content-Length', '-1'], 'not a single number'],
    [['Host', 'a', 'Content-Length', '3', 'content-length', '3'], 'more than one Content-Length'],
    [['Host', 'a', 'host', 'b'], 'more than one Host'],
    [['Host', 'example.com/admin?x='], 'Host is not a host name'],
    [['Host', '[::1]x'], 'Host is not a host name'],
    [['Host', 'a:80:80'], 'Host is not a host name'],
    [['Host', 'a..b'], 'Host is not a host name'],
    [['Host', ''], 'Host is not a host name'],
  ])('refuses %j', (raw, detail) => {
    const r = checkFraming(req(raw));
    expect(r.ok).toBe(false);
    expect(!r.ok && r.detail).toContain(detail);
  });

  it.each([
    'a',
    'a.example.',
    'A-1_b~c:8080',
    '[2001:db8::1]:443',
    '10.0.0.1:',
    '[::ffff:10.0.0.1]',
  ])('accepts Host %j', (host) =>
    expect(checkFraming(req(['Host', host]))).toEqual({ ok: true, framing: 'none' }),
  );

  it('refuses a request that is not HTTP/1.x (llhttp reads HTTP/2.0 on a request line)', () => {
    expect(checkFraming(req(['Host', 'a'], '2.0'))).toEqual({
      ok: false,
      detail: 'not an HTTP/1.x request',
    });
  });

  it('refuses Transfer-Encoding from an HTTP/1.0 client, which has no chunked coding', () => {
    const r = checkFraming(req(['Host', 'a', 'Transfer-Encoding', 'chunked'], '1.0'));
    expect(r).toEqual({ ok: false, detail: 'Transfer-Encoding in an HTTP/1.0 request' });
    expect(checkFraming(req(['Host', 'a', 'Content-Length', '3'], '1.0'))).toEqual({
      ok: true,
      framing: 'length',
    });
  });
});

describe('checkPath', () => {
  it.each([
    '/..',
    '/../secret',
    '/a/../../secret',
    '/./admin',
    '/a/.',
    '/..\\..\\secret',
    '/%2e%2e/secret',
    '/%2E./secret',
    '/.%2e',
    '/a%2f..%2fb',
    '/a%5C..%5Cb',
    '/..;/admin',
    '/..;jsessionid=x/admin',
    'http://evil.example/a/../b',
  ])('refuses %s', (url) => {
    expect(checkPath(url)).toBe('dot-segment in the path');
  });

  // http-proxy would merge the slashes and turn `\` into `/`: the backend would get a path the
  // app's middleware never matched (`//admin` passes `app.use('/admin', guard)`).
  it.each([
    ['//admin', 'empty segment (//) in the path'],
    ['/api//admin/users', 'empty segment (//) in the path'],
    ['/a/', undefined],
    ['/a//', 'empty segment (//) in the path'],
    ['http://a//admin', 'empty segment (//) in the path'],
    ['http://a/x?u=http://b//c', undefined],
    ['/\\admin', 'backslash in the path'],
    ['/a\\b?q=\\', 'backslash in the path'],
    ['/a?q=\\x', undefined],
    ['http://a', undefined],
    ['/a%00.php', 'encoded NUL (%00) in the path'],
    ['/a?q=%00', undefined],
  ])('%s: %s', (url, why) => {
    expect(checkPath(url)).toBe(why);
  });

  // url.parse (Express's router, http-proxy) ends the host at the first character an
  // authority cannot hold and makes the rest the path: checked from the first `/`,
  // `http://x%2e%2e%2fsecret` passed with an empty path and reached the backend as
  // `/base/%2e%2e%2fsecret`.
  it.each([
    'http://x%2e%2e%2fsecret',
    'http://x%2f..%2f..%2fsecret',
    'http://u@y%2e%2e/z',
    'http://x:abc/y',
    'http://x y/z',
    'http://[::1/a',
    // RFC 3986 allows `;` and `'` in a host, url.parse ends it there: `/;b/admin` went to
    // the backend (Tomcat and Spring read `/admin`) past an app's `/admin` guard.
    'http://a;b/admin',
    "http://a'b/admin",
    'http://a;/admin/x',
    // url.parse throws on it: the upgrade was declined without a word, its places held.
    'http://u%zz@x/ws',
  ])('refuses the absolute-form target %s: its authority is malformed', (url) => {
    expect(checkPath(url)).toBe('malformed authority in an absolute-form target');
  });

  it.each([
    'http://x',
    'http://x:8080/a',
    'http://x:/a',
    'http://user:p%40ss@x.example:80/a?q=%2e%2e',
    'http://user;x@x.example/a',
    'http://us%40er@x.example/a',
    'http://[::1]:8080/a',
    'http://127.0.0.1/a',
    'HTTP://X.Example/a',
  ])('accepts the absolute-form target %s', (url) => {
    expect(checkPath(url)).toBeUndefined();
  });

  it.each([
    ['http://admin.internal/x', 'www.example'],
    ['http://www.example:8080/x', 'www.example'],
    ['https://www.example/x', 'www.example:80'],
    ['http://www.example?q=/x', 'other'],
    // Host has no userinfo: `evil@` is part of its name.
    ['http://www.example/x', 'evil@www.example'],
  ])(
    'refuses the absolute-form target %s with Host %s: two hosts (RFC 9112 §3.2.2)',
    (url, host) => {
      expect(checkPath(url, host)).toBe('an absolute-form target naming another host than Host');
    },
  );

  it.each([
    ['http://www.example/x', 'www.example'],
    ['http://WWW.Example:80/x', 'www.example'],
    ['https://www.example:443/x', 'www.example'],
    ['http://u:p@www.example:8080/x', 'www.example:8080'],
    ['http://[::1]/x', '[::1]:80'],
    ['/x', 'anything'],
    ['http://www.example./x', 'www.example'],
    ['http://www.example:8080/x', 'www.example.:8080'],
  ])('accepts %s with Host %s: the same host', (url, host) => {
    expect(checkPath(url, host)).toBeUndefined();
  });

  // http-proxy's urlJoin turns the path's first `http:/` into `http://`.
  it.each([
    ['/go/http:/evil.example/x', "'http:/' in the path"],
    ['/go/https:/evil.example/x', "'http:/' in the path"],
    ['http://a/go/http:/b', "'http:/' in the path"],
    ['/go?to=http:/b', undefined],
    ['/go/HTTP:/b', undefined],
    ['/go/http:b', undefined],
  ])('%s: %s', (url, why) => {
    expect(checkPath(url)).toBe(why);
  });

  it('refuses a target that is not a path (OPTIONS *)', () => {
    expect(checkPath('*')).toBe('request target is not a path');
    expect(checkPath('example.com:443')).toBe('request target is not a path');
    expect(checkPath('\\..\\x')).toBe('request target is not a path');
  });

  it.each([
    '/',
    '/a/b.c',
    '/.well-known/x',
    '/..a/b',
    '/a../b',
    '/.../x',
    '/a/b?next=../../x',
    '/files/C:%5Cdata',
    '/a%2fb',
    '/%2e%2ex',
    '/items#../x',
    'http://example.com/x',
  ])('accepts %s', (url) => {
    expect(checkPath(url)).toBeUndefined();
  });
});
