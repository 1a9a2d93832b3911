import { IncomingMessage } from 'node:http';
import { randomBytes } from 'node:crypto';
import { Socket } from 'node:net';
import { brotliCompressSync, deflateSync, gzipSync } from 'node:zlib';
import { declaredLength, hasBody, planBody, readBody, type BodyReadResult } from './request-body';

/** A request whose body stream a parser already read to the end, with `req.body` set. */
function parsed(headers: Record<string, string>, body: unknown): IncomingMessage {
  const req = new IncomingMessage(new Socket());
  req.headers = { ...headers };
  req.push(null);
  req.read();
  (req as { _body?: boolean })._body = true; // body-parser 1.x's flag
  (req as { body?: unknown }).body = body;
  return req;
}

describe('planBody', () => {
  it('streams a request nobody read', () => {
    const req = new IncomingMessage(new Socket());
    req.headers = { 'content-length': '5' };
    expect(planBody(req)).toEqual({ kind: 'stream' });
  });

  it('re-serializes JSON and fixes Content-Length, Content-Encoding and charset', () => {
    const req = parsed(
      {
        'content-type': 'application/vnd.api+json; charset=latin1',
        'content-length': '999',
        'content-encoding': 'gzip',
      },
      { é: 1 },
    );
    const plan = planBody(req);
    expect(plan).toEqual({ kind: 'buffered', body: Buffer.from('{"é":1}') });
    expect(req.headers).toEqual({
      'content-type': 'application/vnd.api+json; charset=utf-8',
      'content-length': String(Buffer.byteLength('{"é":1}')),
    });
  });

  it.each([
    ['a Buffer', (b: Buffer): unknown => b],
    ['a Uint8Array', (b: Buffer): unknown => new Uint8Array(b)],
  ])(
    'sends %s req.body as it is, its charset label untouched (express.raw decodes none)',
    (_name, wrap) => {
      const latin1 = Buffer.from('café crème', 'latin1');
      const req = parsed(
        {
          'content-type': 'text/plain; charset=iso-8859-1',
          'transfer-encoding': 'chunked',
          'content-encoding': 'deflate',
        },
        wrap(latin1),
      );
      expect(planBody(req)).toEqual({ kind: 'buffered', body: latin1 });
      // Inflated by body-parser: no Content-Encoding.
      expect(req.headers).toEqual({
        'content-type': 'text/plain; charset=iso-8859-1',
        'content-length': String(latin1.length),
      });
    },
  );

  const json = Buffer.from('{"event":"paid","id":1}');
  const zipped = { gzip: gzipSync(json), deflate: deflateSync(json), br: brotliCompressSync(json) };
  const noise = randomBytes(16 * 1024); // compresses to more than 4 KiB
  it.each<[string, Buffer, 'sent' | number | undefined, string | undefined]>([
    // [Content-Encoding, the bytes in req.body, the client's Content-Length, the label kept]
    ['gzip', zipped.gzip, 'sent', 'gzip'],
    [' X-Gzip ', zipped.gzip, 'sent', ' X-Gzip '],
    ['gzip', json, zipped.gzip.length, undefined], // inflated: not the length sent
    ['gzip', json, 'sent', undefined], // the length, but not gzip
    ['deflate', zipped.deflate, 'sent', 'deflate'],
    ['br', zipped.br, 'sent', 'br'],
    // Inflated to the very length the client sent (partly compressible data): the length
    // alone kept the label on bytes no backend could decode.
    ['deflate', json, 'sent', undefined],
    ['br', json, 'sent', undefined],
    ['gzip, br', zipped.br, 'sent', 'gzip, br'], // the last coding is what the bytes start as
    ['br,', zipped.br, 'sent', 'br,'], // an empty list element is none
    // A zlib header with a preset dictionary: as it came, though it cannot be inflated here.
    ['deflate', Buffer.from([0x78, 0xbb, 0, 0, 0, 1, 1, 2]), 'sent', 'deflate'],
    // A long stream (more than the 4 KiB decoded) with bytes after it that are no brotli:
    // kept by its start. (That only a prefix is decoded, which a crafted stream of no
    // output made cost a second decoded whole, has no test here: no timings in unit tests.)
    ['br', Buffer.concat([brotliCompressSync(noise), Buffer.alloc(64 * 1024, 0xff)]), 'sent', 'br'],
    ['zstd', json, 'sent', 'zstd'], // no check for it: the length decides
    ['identity', json, 'sent', undefined],
    // Chunked: no length to compare; gzip's magic number decides, as before. A zlib header
    // is no proof (a CSV starting '80' passes its check), nor a brotli start ("7" is a whole
    // valid, empty stream): dropped, as before.
    ['gzip', zipped.gzip, undefined, 'gzip'],
    ['deflate', zipped.deflate, undefined, undefined],
    ['deflate', Buffer.from('80,1\n'), undefined, undefined],
    ['br', zipped.br, undefined, undefined],
    ['br', Buffer.from('7'), undefined, undefined],
    ['zstd', json, undefined, undefined],
  ])(
    'a Buffer req.body sent as Content-Encoding %j keeps it only while still encoded (%#)',
    (encoding, bytes, length, kept) => {
      const sent = length === 'sent' ? bytes.length : length;
      const req = parsed(
        {
          'content-type': 'application/json',
          'content-encoding': encoding,
          ...(sent === undefined
            ? { 'transfer-encoding': 'chunked' }
            : { 'content-length': String(sent) }),
        },
        bytes,
      );
      expect(planBody(req)).toEqual({ kind: 'buffered', body: bytes });
      expect(req.headers['content-encoding']).toBe(kept);
    },
  );

  it('sends req.rawBody, the bytes a verify hook kept, rather than re-serializing req.body', () => {
    const sent = '{"id":12345678901234567890123, "n":9007199254740993,"p":1.10,"p":2}';
    const req = parsed(
      {
        'content-type': 'application/json; charset=utf-8',
        'content-length': '40',
        'content-encoding': 'gzip',
      },
      JSON.parse(sent),
    );
    (req as { rawBody?: Buffer }).rawBody = Buffer.from(sent);
    expect(planBody(req)).toEqual({ kind: 'buffered', body: Buffer.from(sent) });
    expect(req.headers).toEqual({
      'content-type': 'application/json; charset=utf-8',
      'content-length': String(sent.length),
    });
    // Even when req.body could not be serialized at all.
    const big = parsed({ 'content-type': 'application/json', 'content-length': '9' }, { n: 1n });
    (big as { rawBody?: Buffer }).rawBody = Buffer.from('{"n":1}');
    expect(planBody(big)).toEqual({ kind: 'buffered', body: Buffer.from('{"n":1}') });
  });

  it.each([
    [
      'text/plain; x-orig-charset=latin1; charset=iso-8859-1',
      'text/plain; x-orig-charset=latin1; charset=utf-8',
    ],
    ['text/plain;charset="ISO-8859-1";format=flowed', 'text/plain;charset=utf-8;format=flowed'],
    ['text/plain', 'text/plain; charset=utf-8'],
    ['Text/CSV ; ', 'Text/CSV; charset=utf-8'],
    ['text/plain; x-charset=latin1', 'text/plain; x-charset=latin1; charset=utf-8'],
    ['application/json', 'application/json'],
  ])('labels a string sent as UTF-8 with %j as %j', (type, sent) => {
    const req = parsed({ 'content-type': type, 'content-length': '4' }, 'café');
    expect(planBody(req)).toEqual({ kind: 'buffered', body: Buffer.from('café') });
    expect(req.headers['content-type']).toBe(sent);
  });

  it('adds no charset to a re-encoded form', () => {
    const req = parsed(
      { 'content-type': 'application/x-www-form-urlencoded', 'content-length': '3' },
      { e: 'é' },
    );
    expect(planBody(req)).toEqual({ kind: 'buffered', body: Buffer.from('e=%C3%A9') });
    expect(req.headers['content-type']).toBe('application/x-www-form-urlencoded');
  });

  it.each([
    [42, '42'],
    [false, 'false'],
    [null, 'null'],
  ])(
    're-serializes the JSON scalar %j that express.json({ strict: false }) parsed',
    (body, sent) => {
      const req = parsed({ 'content-type': 'application/json', 'content-length': '9' }, body);
      expect(planBody(req)).toEqual({ kind: 'buffered', body: Buffer.from(sent) });
      expect(req.headers['content-length']).toBe(String(sent.length));
    },
  );

  it.each([
    ['multipart/form-data; boundary=x', { f: 'v' }, /multipart body is never rebuilt/],
    [
      'application/xml',
      { a: 1 },
      /no encoding for content type "application\/xml"; keep the bytes received in req\.rawBody/,
    ],
    ['application/json', undefined, /req\.body is not set/],
  ])('cannot rebuild %s from %j', (type, body, why) => {
    const plan = planBody(parsed({ 'content-type': type, 'content-length': '3' }, body));
    expect(plan.kind).toBe('lost');
    expect(plan.kind === 'lost' && plan.detail).toMatch(why);
  });

  const circular: Record<string, unknown> = {};
  circular.self = circular;
  it.each([
    ['application/json', { id: 12345678901234567890n }, /BigInt/],
    ['application/json', circular, /TypeError: .*circular/i],
    ['application/json', { toJSON: () => undefined }, /no JSON form/],
    ['application/x-www-form-urlencoded', circular, /RangeError/],
    [
      'application/x-www-form-urlencoded',
      {
        get boom(): string {
          throw new Error('getter');
        },
      },
      /Error: getter/,
    ],
  ])(
    'answers lost, never throws, for a %s req.body it cannot serialize (%#)',
    (type, body, why) => {
      const req = parsed({ 'content-type': type, 'content-length': '3' }, body);
      let plan: ReturnType<typeof planBody> | undefined;
      expect(() => (plan = planBody(req))).not.toThrow();
      expect(plan?.kind).toBe('lost');
      expect(plan?.kind === 'lost' && plan.detail).toMatch(/cannot be serialized again/);
      expect(plan?.kind === 'lost' && plan.detail).toMatch(why);
      // The headers are left as the client sent them.
      expect(req.headers['content-length']).toBe('3');
    },
  );

  it('knows a body from its headers', () => {
    const req = new IncomingMessage(new Socket());
    req.headers = { 'content-length': '0' };
    expect([hasBody(req), declaredLength(req)]).toEqual([false, 0]);
    req.headers = { 'transfer-encoding': 'chunked' };
    expect([hasBody(req), declaredLength(req)]).toEqual([true, undefined]);
    req.headers = { 'content-length': '12' };
    expect([hasBody(req), declaredLength(req)]).toEqual([true, 12]);
  });
});

describe('readBody', () => {
  function reading(declared: number | undefined, upTo: number) {
    const req = new IncomingMessage(new Socket());
    const results: BodyReadResult[] = [];
    readBody(req, { declared, upTo, chunk: () => true }, (r) => results.push(r));
    return { req, results };
  }

  it('copies each chunk as it comes, keeping none of them', () => {
    // Node hands each chunk of a chunked body over as a Buffer of its own: kept until the
    // end, a body of one-byte chunks held a ~100-byte object per byte (20 such bodies of
    // 65,000 bytes: +240 MiB of heap for 1.2 MiB read). A chunk changed after it came (its
    // memory reused) changes nothing of what was read.
    const { req, results } = reading(undefined, 65_536);
    const chunks = Array.from({ length: 3_000 }, (_, i) => Buffer.from([i & 0xff]));
    for (const c of chunks) req.emit('data', c);
    for (const c of chunks) c.fill(0xee);
    req.emit('end');
    expect(results).toHaveLength(1);
    const r = results[0];
    expect(r !== undefined && r !== 'too-long' && r.kind === 'whole').toBe(true);
    const body = (r as { body: Buffer }).body;
    expect(body.length).toBe(3_000);
    expect([...body.subarray(0, 4)]).toEqual([0, 1, 2, 3]);
    expect(body.every((b, i) => b === (i & 0xff))).toBe(true);
  });

  it('holds memory for what came, not for what the Content-Length announces', () => {
    // Sized from the Content-Length at the first byte, 3,000 bodies announcing 64 KiB and
    // sending one byte held 85 MiB, with 1.4 KB charged to the buffer budget.
    const before = process.memoryUsage().arrayBuffers;
    const reqs = Array.from({ length: 200 }, () => reading(65_536, 65_536));
    for (const { req } of reqs) req.emit('data', Buffer.from('x'));
    const grown = process.memoryUsage().arrayBuffers - before;
    expect(grown).toBeLessThan(200 * 8 * 1024); // 1 KiB each (was 64 KiB each: 12.5 MiB)
    for (const { req } of reqs) req.emit('close');
  });

  it('hands over the first bytes past upTo as a prefix, whole and in order', () => {
    const { req, results } = reading(1_000_000, 100);
    req.emit('data', Buffer.alloc(60, 1));
    req.emit('data', Buffer.alloc(60, 2));
    expect(results).toHaveLength(1);
    const r = results[0] as { kind: string; prefix: Buffer };
    expect(r.kind).toBe('prefix');
    expect(r.prefix.length).toBe(120);
    expect([r.prefix[59], r.prefix[60]]).toEqual([1, 2]);
  });
});
