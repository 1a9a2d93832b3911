/**
 * The request body on its way to a backend.
 *
 * http-proxy streams `req` into the backend request (`req.pipe(proxyReq)`).
 * That fails in two ways inside a real gateway:
 *
 * 1. An earlier middleware already read the body (`express.json()` on the
 *    route, a form parser, a signature check): the stream is at its end, the
 *    `Content-Length` header still promises bytes, and the backend waits for
 *    them until the gateway's request timeout. http-proxy-middleware leaves
 *    the fix to the user (`on: { proxyReq: fixRequestBody }`,
 *    src/handlers/fix-request-body.ts upstream); here it is done by default:
 *    `req.body` is serialized again (JSON, urlencoded form, text, or a raw
 *    Buffer) with a correct `Content-Length`. A body that is gone and cannot be
 *    rebuilt fails fast with `LW_GW_BODY_CONSUMED`, before any backend is
 *    picked, so it never counts against a backend's health.
 * 2. A retry cannot replay bytes already streamed to the failed backend. A
 *    small body of a retryable request is therefore read into memory first, up
 *    to `retry.maxBodyBytes` (Envoy buffers retried bodies up to
 *    `per_request_buffer_limit_bytes`; HAProxy's `retry-on` needs
 *    `option http-buffer-request`), and written again on every attempt.
 * 3. A streamed body holds a backend slot while it arrives. With
 *    `requestBuffering` (nginx's `proxy_request_buffering`), the first
 *    `maxBytes` of every body are read before a backend is picked (`readBody`):
 *    a body that ends within them is sent whole, with a Content-Length; a longer
 *    one is sent that prefix first and the rest streamed (body-pump.ts).
 *
 * A buffered body is written by `writeBody` from the 'proxyReq' event; http-proxy
 * then pipes the already ended `req`, which only ends the backend request
 * (Node's `Readable.pipe` ends the destination at once when the source
 * already emitted 'end').
 */
import type { ClientRequest, IncomingHttpHeaders, IncomingMessage } from 'node:http';
import { brotliDecompressSync, constants as zlibConstants } from 'node:zlib';

/** What the gateway sends as the body of each attempt. */
export type BodyPlan =
  /** Nothing read yet (or no body at all): http-proxy streams `req` as it arrives. */
  | { kind: 'stream' }
  /**
   * The bytes to send, in memory: re-serialized from `req.body`, or read by the gateway
   * (`read`: then it is sent again on a retry only within retry.maxBodyBytes).
   */
  | { kind: 'buffered'; body: Buffer; read?: true }
  /**
   * The body was read by someone else and cannot be rebuilt; or (`unread`) it is still
   * on the connection but would arrive decoded (a middleware set the stream's encoding).
   */
  | { kind: 'lost'; detail: string; unread?: true };

/** Whether the request announces a body (RFC 9112 §6.3: Transfer-Encoding, or Content-Length > 0). */
export function hasBody(req: IncomingMessage): boolean {
  const len = req.headers['content-length'];
  return req.headers['transfer-encoding'] !== undefined || (len !== undefined && len !== '0');
}

/** The announced body length, when Content-Length gives it (undefined for chunked bodies). */
export function declaredLength(req: IncomingMessage): number | undefined {
  if (req.headers['transfer-encoding'] !== undefined) return undefined;
  const len = req.headers['content-length'];
  if (len === undefined) return 0;
  const n = Number(len);
  return Number.isSafeInteger(n) && n >= 0 ? n : undefined;
}

/**
 * Whether something already read from the request stream: 'data' was emitted
 * or the stream ended (body-parser reads to the end; body-parser 1.x also sets
 * `req._body`).
 */
export function bodyWasRead(req: IncomingMessage): boolean {
  return req.readableDidRead || req.readableEnded || (req as { _body?: unknown })._body === true;
}

/** The media type of a Content-Type value, lower case, without parameters. */
function mediaType(contentType: string | undefined): string {
  return (contentType ?? '').split(';')[0]!.trim().toLowerCase();
}

function isJson(type: string): boolean {
  return type === 'application/json' || type.endsWith('+json');
}

/**
 * `application/x-www-form-urlencoded` from a parsed form: objects in the
 * bracket notation `qs` (Express's extended parser) reads back (`a[b]=1`),
 * lists of values as a repeated key (`list=x&list=y`).
 */
function formEncode(value: unknown): string {
  const parts: string[] = [];
  const walk = (key: string, v: unknown): void => {
    if (v === undefined) return;
    if (v === null) {
      parts.push(`${encodeURIComponent(key)}=`);
    } else if (Array.isArray(v)) {
      // A list of values repeats its key, as a form sends a multi-select
      // (`tag=a&tag=b`): qs, querystring and URLSearchParams.getAll all read
      // that back as the list, where indices (`tag[0]`) only qs reads, and
      // `extended: false` keeps `list[]` as the key it was. A list holding
      // objects keeps its indices, which their fields need.
      const nested = v.some((item) => item !== null && typeof item === 'object');
      v.forEach((item, i) => walk(nested ? `${key}[${i}]` : key, item));
    } else if (typeof v === 'object') {
      for (const [k, item] of Object.entries(v as Record<string, unknown>))
        walk(`${key}[${k}]`, item);
    } else {
      parts.push(`${encodeURIComponent(key)}=${encodeURIComponent(String(v))}`);
    }
  };
  for (const [k, v] of Object.entries(value as Record<string, unknown>)) walk(k, v);
  return parts.join('&');
}

/**
 * JSON text of `value`. JSON.stringify throws on a BigInt (a bigint-aware
 * parser such as json-bigint makes them) and on a circular object, and
 * returns undefined for a value with no JSON form (a `toJSON` returning
 * undefined): each is a string saying why, never a throw out of the
 * middleware.
 */
function jsonText(value: unknown): string | Error {
  const text = JSON.stringify(value) as string | undefined;
  return text ?? new Error('it has no JSON form');
}

/** `req.body` as bytes for the request's Content-Type, or why it cannot be rebuilt. */
function serialize(parsed: unknown, contentType: string | undefined): Buffer | string {
  if (typeof parsed === 'string') return Buffer.from(parsed, 'utf8');
  const type = mediaType(contentType);
  // A number, boolean or null: only a JSON parser (express.json({ strict: false })) makes one.
  const scalar = parsed === null || typeof parsed === 'number' || typeof parsed === 'boolean';
  const object = typeof parsed === 'object' && parsed !== null;
  let text: string | Error | undefined;
  try {
    if ((scalar || object) && isJson(type)) text = jsonText(parsed);
    else if (object && type === 'application/x-www-form-urlencoded') text = formEncode(parsed);
  } catch (err) {
    // A user's req.body can hold anything: a throwing getter or toJSON, a
    // circular object (a stack overflow in formEncode), a Symbol.
    text = err instanceof Error ? err : new Error(String(err));
  }
  if (typeof text === 'string') return Buffer.from(text, 'utf8');
  if (text !== undefined)
    return `req.body cannot be serialized again for content type ${JSON.stringify(type)} (${text.name}: ${text.message}); keep the bytes received in req.rawBody to send them as they came`;
  if (object && type === 'multipart/form-data')
    return 'a multipart body is never rebuilt from req.body (its files are not in it, and its boundary and part headers are gone); parse multipart only on routes the gateway answers itself, or keep the bytes received in req.rawBody';
  return `req.body (${parsed === null ? 'null' : typeof parsed}) has no encoding for content type ${JSON.stringify(type || 'none')}; keep the bytes received in req.rawBody to send them as they came`;
}

/**
 * The last coding a Content-Encoding names, lower-cased; '' for none or
 * identity. The last applied is the outermost (RFC 9110 §8.4): what the bytes
 * start as. Empty list elements do not count (§5.6.1): `br,` is br.
 */
function lastCoding(encoding: string | undefined): string {
  let coding = '';
  for (const c of (encoding ?? '').split(',')) if (c.trim()) coding = c.trim().toLowerCase();
  return coding === 'identity' ? '' : coding;
}

/**
 * Integrity fields computed over the bytes the client sent: RFC 9530's
 * Content-Digest and Repr-Digest (the representation includes its content
 * coding), RFC 3230's Digest and Content-MD5. Over bytes a parser decoded or
 * rebuilt they are false, and a backend that checks them refused a request
 * that was fine; without them it sees no claim rather than a wrong one.
 */
const DIGEST_FIELDS = ['content-digest', 'repr-digest', 'digest', 'content-md5'] as const;

function dropDigests(h: IncomingHttpHeaders): void {
  for (const f of DIGEST_FIELDS) delete h[f];
}

/**
 * Whether bytes the client sent with a `Content-Encoding` are still in it: a
 * raw-body middleware that did not inflate them, where body-parser
 * (express.raw() included) always inflates gzip, deflate and br. When the
 * client gave a Content-Length, bytes of another length were inflated. Of
 * that length, they are still encoded if they start as the last coding
 * named: gzip's magic number (RFC 1952 §2.3.1), a zlib header (`deflate`,
 * RFC 1950 §2.2: method 8, the check bits; a preset dictionary too), or a
 * brotli stream (its first 4 KiB decoded without error). The length alone is
 * not enough: inflated bytes can be as long as the encoded ones were (partly
 * compressible data), and then went out labelled. The magic number alone is
 * not enough either: a gzip file uploaded with gzip transfer compression
 * (`file.gz` sent compressed again) still starts with it once body-parser
 * inflated it, but is then never as long as what was sent. A chunked upload
 * has no length to compare: gzip's magic number decides, as before
 * 2026-12-07 (a `.gz` file sent chunked with gzip compression keeps the label
 * after body-parser inflated it); deflate, br and codings with no check are
 * dropped, since their starts are no proof (ordinary data passes a zlib
 * header's check, one byte in 26 of random data is a whole brotli stream).
 * Only a prefix is decoded: the whole of a 96-byte upload inflated by the
 * app's parser to 49 MiB of brotli metadata held the event loop for 1.25 s.
 * Until 2026-12-07 only gzip was kept: deflate and br bytes kept as they came
 * went out without their label.
 */
function stillEncoded(
  encoding: string | undefined,
  bytes: Buffer,
  sent: number | undefined,
): boolean {
  const coding = lastCoding(encoding);
  if (!coding) return false;
  if (sent !== undefined && bytes.length !== sent) return false;
  if (coding === 'gzip' || coding === 'x-gzip') {
    return bytes.length >= 2 && bytes[0] === 0x1f && bytes[1] === 0x8b;
  }
  if (coding === 'deflate') {
    // Two bytes with a 1-in-31 check: ordinary data passes it ('80' in a CSV, a protobuf),
    // so never alone: with the length only.
    return (
      sent !== undefined &&
      bytes.length >= 2 &&
      (bytes[0]! & 0x0f) === 8 &&
      (bytes[0]! * 256 + bytes[1]!) % 31 === 0
    );
  }
  if (coding === 'br') return sent !== undefined && startsAsBrotli(bytes);
  return sent !== undefined;
}

/** How much of a body is decoded to tell whether it starts a brotli stream. */
const BROTLI_PREFIX_BYTES = 4096;

/**
 * Whether `bytes` begin a brotli stream: their first 4 KiB decoded, flushed
 * rather than finished (a prefix is not a whole stream), with at most a byte
 * of output kept (Node checks the bound after each native call, which may
 * decode the whole slice: the cost is bounded by the slice). A stream that
 * has more output fails with ERR_BUFFER_TOO_LARGE; anything else that fails
 * is no brotli.
 */
function startsAsBrotli(bytes: Buffer): boolean {
  try {
    brotliDecompressSync(bytes.subarray(0, BROTLI_PREFIX_BYTES), {
      maxOutputLength: 1,
      finishFlush: zlibConstants.BROTLI_OPERATION_FLUSH,
    });
    return true;
  } catch (err) {
    return (err as { code?: unknown }).code === 'ERR_BUFFER_TOO_LARGE';
  }
}

/** A `charset` parameter, not a parameter whose name ends with it (`x-orig-charset`). */
const CHARSET_RE = /(;\s*)charset=("[^"]*"|[^;\s]*)/i;

/**
 * A Content-Type for bytes the gateway encoded as UTF-8: the charset it
 * names becomes utf-8; a text/* type that names none gets one, since
 * without it a text type reads as US-ASCII (RFC 2046 §4.1.2) or as the
 * backend's default, which need not be what the app's parser assumed
 * (`express.text({ defaultCharset })`). JSON (UTF-8 by definition,
 * RFC 8259 §8.1) and forms (percent-encoded ASCII) need none.
 */
function labelUtf8(contentType: string): string {
  if (CHARSET_RE.test(contentType)) return contentType.replace(CHARSET_RE, '$1charset=utf-8');
  if (!mediaType(contentType).startsWith('text/')) return contentType;
  // A loop, not /[\s;]+$/, which backtracks quadratically on `; ; ; x`.
  let type = contentType.trimEnd();
  while (type.endsWith(';')) type = type.slice(0, -1).trimEnd();
  return `${type}; charset=utf-8`;
}

/**
 * The bytes the gateway sends for a body already read: Content-Length of them, no
 * chunking (a chunked body read whole goes with its length). `read`: the gateway read
 * them itself (readBody), not a middleware.
 */
export function buffered(h: IncomingHttpHeaders, body: Buffer, read?: true): BodyPlan {
  h['content-length'] = String(body.length);
  delete h['transfer-encoding'];
  return read ? { kind: 'buffered', body, read } : { kind: 'buffered', body };
}

/**
 * Decides how the body reaches the backend, and fixes the headers to match
 * the bytes it sends.
 *
 * Bytes as received (`req.rawBody` when it is a Buffer, else a Buffer or
 * Uint8Array `req.body`, from express.raw() or a raw-body middleware) go as they are, with their `Content-Type`
 * untouched: nothing decoded their charset, so the client's label is still
 * theirs. `Content-Encoding` is dropped, since body-parser inflates gzip,
 * deflate and br bodies before handing them over, unless the bytes are
 * still in their coding (`stillEncoded`).
 *
 * A re-serialized body (a string, a parsed object) is UTF-8 whatever the
 * client sent: no `Content-Encoding` (the parser inflated it), and
 * `charset=utf-8` where a charset was named or a text type names none (`labelUtf8`).
 */
export function planBody(
  req: IncomingMessage,
  /** The headers the backend gets (request-flow.ts: a copy, the app keeps req.headers). */
  h: IncomingHttpHeaders = req.headers,
): BodyPlan {
  if (!hasBody(req)) return { kind: 'stream' };
  if (!bodyWasRead(req)) {
    // A middleware that called req.setEncoding() and left the body unread (it reads JSON
    // only, say) hands the balancer strings: the bytes are decoded, lossily for UTF-8, and the
    // body reader took them for Buffers (a TypeError thrown from the stream's 'data' listener
    // ended the process; streamed, the backend got U+FFFD where the client's bytes were).
    const encoding = req.readableEncoding;
    if (encoding) {
      return {
        kind: 'lost',
        unread: true,
        detail: `a middleware before the balancer set the request stream's encoding (req.setEncoding('${encoding}')) and left the body unread, so its bytes arrive decoded and cannot be forwarded as the client sent them; read the body whole (req.body or req.rawBody) or leave the stream's encoding alone`,
      };
    }
    return { kind: 'stream' };
  }
  const { body: parsed, rawBody } = req as { body?: unknown; rawBody?: unknown };
  // The bytes a parser's verify hook kept (express.json({ verify }) hands it
  // them inflated, before any charset decoding) win over req.body: sent
  // again, they are what the client signed, where JSON.stringify rounds
  // numbers past 2^53, rewrites 1.10 as 1.1 and drops duplicate keys.
  const bytes = Buffer.isBuffer(rawBody)
    ? rawBody
    : Buffer.isBuffer(parsed)
      ? parsed
      : parsed instanceof Uint8Array
        ? Buffer.from(parsed.buffer, parsed.byteOffset, parsed.byteLength)
        : undefined;
  if (bytes) {
    const encoding = h['content-encoding'];
    if (!stillEncoded(encoding, bytes, declaredLength(req))) {
      delete h['content-encoding'];
      // Decoded by the parser: not the bytes the client's digests were computed over.
      if (lastCoding(encoding)) dropDigests(h);
    }
    return buffered(h, bytes);
  }
  if (parsed === undefined) {
    return {
      kind: 'lost',
      detail:
        'the request body was read by a middleware before the balancer and req.body is not set, so it cannot be forwarded; mount body parsers after the balancer or only on routes it does not serve',
    };
  }
  const body = serialize(parsed, h['content-type']);
  if (typeof body === 'string') {
    return {
      kind: 'lost',
      detail: `the request body was read by a middleware before the balancer and ${body}`,
    };
  }
  delete h['content-encoding'];
  dropDigests(h);
  if (h['content-type']) h['content-type'] = labelUtf8(h['content-type']);
  return buffered(h, body);
}

const EMPTY = Buffer.alloc(0);

/** How much of a body `readBody` reads before the request is dispatched. */
export interface BodyRead {
  /** The Content-Length, when the body has one: more bytes than this are 'too-long'. */
  declared: number | undefined;
  /** More than this many bytes and what came is handed over as a prefix (Infinity: never). */
  upTo: number;
  /**
   * Each chunk as it comes, before it is kept: false hands over what came, this chunk
   * included, as a prefix (the buffer budget is spent).
   */
  chunk(bytes: number): boolean;
}

/**
 * What `readBody` read: the whole body; the first bytes of a longer one (`prefix`,
 * the request paused after them: the rest is streamed after it); 'too-long' for more
 * bytes than the Content-Length (Node's parser holds the client to the Content-Length it
 * sent; a middleware that changed the header since can make it say less); undefined if
 * the client went away first, or the read was stopped.
 */
export type BodyReadResult =
  { kind: 'whole'; body: Buffer } | { kind: 'prefix'; prefix: Buffer } | 'too-long' | undefined;

/**
 * Reads a request body into memory before the request is dispatched: for a retry
 * (retry.maxBodyBytes) or so that a slow upload holds no backend slot while it arrives
 * (requestBuffering). Calls `done` once; the function returned stops the read (`done`
 * gets undefined), and is a no-op once `done` was called.
 */
export function readBody(
  req: IncomingMessage,
  read: BodyRead,
  done: (result: BodyReadResult) => void,
): () => void {
  // One growing buffer, not the chunks: Node hands each chunk of a chunked body over as a
  // Buffer of its own, and a body sent as one-byte chunks kept a ~100-byte object per byte
  // (20 bodies of 65,000 such chunks: +240 MiB of heap for 1.2 MiB charged to the budget).
  let buf = EMPTY;
  let size = 0;
  let over = false;
  const finish = (result: BodyReadResult): void => {
    if (over) return;
    over = true;
    req.off('data', onData);
    req.off('end', onEnd);
    req.off('error', onFail);
    req.off('close', onFail);
    done(result);
  };
  const prefix = (): void => {
    // Paused before the next 'data': the pump takes the rest from here, in order.
    req.pause();
    finish({ kind: 'prefix', prefix: kept() });
  };
  function onData(chunk: Buffer): void {
    const at = size;
    size += chunk.length;
    if (read.declared !== undefined && size > read.declared) return finish('too-long');
    if (size > buf.length) {
      // Doubling from 1 KiB, up to the Content-Length (or what is read before dispatch): a
      // copy per doubling, and at most twice the bytes that came. Sized from the
      // Content-Length at the first byte, each 1-byte body of a declared 64 KiB held 64 KiB
      // (3,000 of them: +85 MiB, with 1.4 KB charged to the budget).
      const cap = Math.min(read.declared ?? Infinity, read.upTo + 1);
      const step = Math.max(2 * buf.length, 1024);
      const grown = Buffer.allocUnsafe(Math.max(size, step < cap ? step : cap));
      buf.copy(grown, 0, 0, at);
      buf = grown;
    }
    chunk.copy(buf, at);
    const keep = read.chunk(chunk.length);
    // Stopped inside `chunk` (the body clock expired on it: 408): nothing is handed over.
    if (over) return;
    if (!keep || size > read.upTo) prefix();
  }
  /** What was read, in a buffer of its own size (the growing one may be twice that). */
  const kept = (): Buffer => (size === buf.length ? buf : Buffer.from(buf.subarray(0, size)));
  const onEnd = (): void => finish({ kind: 'whole', body: kept() });
  const onFail = (): void => finish(undefined);
  req.on('data', onData);
  req.once('end', onEnd);
  req.once('error', onFail);
  req.once('close', onFail);
  // A 'data' listener does not start a stream a middleware paused (req.pause() while an
  // async auth step ran, then next()): the body was never read, and the client got a
  // 408 after clientBodyTimeoutMs, or no answer at all without it.
  req.resume();
  return () => finish(undefined);
}

/**
 * Writes a buffered body on a backend request, from the 'proxyReq' event
 * (http-proxy ends the request right after, by piping the ended `req`). Does
 * nothing if a user hook already wrote a body (e.g. a leftover
 * `fixRequestBody`): writing it twice would corrupt the request.
 */
export function writeBody(proxyReq: ClientRequest, plan: BodyPlan | undefined): void {
  if (plan?.kind !== 'buffered' || proxyReq.headersSent || proxyReq.destroyed) return;
  proxyReq.write(plan.body);
}
