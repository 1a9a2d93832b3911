/**
 * A corpus of odd requests, as exact bytes over raw sockets, against a
 * gateway in a child process (gateway-child.js, built code: `npm test`
 * builds first), so that a request that kills the process is seen as the
 * process exiting. After the corpus the process must be alive and serving,
 * and its counters and log must show the requests it refused, by code.
 */
import { fork, type ChildProcess } from 'node:child_process';
import { join } from 'node:path';
import {
  counterValue,
  openSlow,
  rawExchange,
  until,
  type RawExchange,
  type RawOptions,
} from '../kit/raw-http';

// Real processes and sockets on a shared machine: jest's 5 s default (the
// project's testTimeout is not applied per project) is too tight for a fork.
jest.setTimeout(30_000);

interface Report {
  metrics: string;
  warnings: string[];
  lines: string[];
}

let child: ChildProcess;
let port = 0;
let exit: { code: number | null; signal: string | null } | undefined;
let stderr = '';

beforeAll(async () => {
  child = fork(join(__dirname, 'gateway-child.js'), [], {
    stdio: ['ignore', 'ignore', 'pipe', 'ipc'],
  });
  child.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
  child.once('exit', (code, signal) => (exit = { code, signal }));
  port = await new Promise<number>((resolve, reject) => {
    child.once('message', (m: { port: number }) => resolve(m.port));
    child.once('exit', () => reject(new Error(`gateway child exited: ${stderr}`)));
  });
});

afterAll(async () => {
  if (!exit) {
    const gone = new Promise((r) => child.once('exit', r));
    child.kill('SIGTERM');
    await gone;
  }
});

function report(): Promise<Report> {
  return new Promise((resolve) => {
    child.once('message', (m: Report) => resolve(m));
    child.send({ type: 'report' });
  });
}

const SMUGGLED = 'GET /admin/SMUGGLED HTTP/1.1\r\nHost: a\r\n\r\n';
const size = (s: string): string => Buffer.byteLength(s, 'latin1').toString(16);

interface Case {
  name: string;
  bytes: string;
  opts?: RawOptions;
  check(r: RawExchange): void;
}

const status = (r: RawExchange): Array<number | undefined> => r.responses.map((x) => x.status);
const code = (r: RawExchange): string | undefined => r.responses[0]?.headers['x-loadwise-error'];
const bytesSeen = (r: RawExchange, i = 0): number =>
  (JSON.parse(r.responses[i]!.body) as { bytes: number }).bytes;

const corpus: Case[] = [
  // Trailers
  {
    name: 'chunked body with a Trailer header and trailer fields',
    bytes:
      'POST /t HTTP/1.1\r\nHost: a\r\nTrailer: X-T\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\nX-T: 1\r\n\r\n',
    opts: { responses: 1 },
    check: (r) => expect([status(r), bytesSeen(r)]).toEqual([[200], 3]),
  },
  {
    name: 'chunked body with trailer fields and no Trailer header',
    bytes:
      'POST /t HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\nX-T: 1\r\n\r\n',
    opts: { responses: 1 },
    check: (r) => expect([status(r), bytesSeen(r)]).toEqual([[200], 3]),
  },
  {
    name: 'Trailer header on a GET without body (killed the process before)',
    bytes: 'GET /t HTTP/1.1\r\nHost: a\r\nTrailer: X-T\r\n\r\n',
    opts: { responses: 1 },
    check: (r) => expect(status(r)).toEqual([200]),
  },
  {
    name: 'Trailer header on a body with Content-Length',
    bytes: 'PUT /t HTTP/1.1\r\nHost: a\r\nTrailer: X-T\r\nContent-Length: 3\r\n\r\nabc',
    opts: { responses: 1 },
    check: (r) => expect([status(r), bytesSeen(r)]).toEqual([[200], 3]),
  },
  // Expect
  {
    name: 'Expect: 100-continue',
    bytes: 'POST /e HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\nabc',
    opts: { responses: 1 },
    check: (r) => expect([r.interim, status(r), bytesSeen(r)]).toEqual([[100], [200], 3]),
  },
  {
    name: 'an expectation Node does not know',
    bytes: 'POST /e HTTP/1.1\r\nHost: a\r\nExpect: teapot\r\nContent-Length: 3\r\n\r\nabc',
    opts: { responses: 1 },
    check: (r) => expect(status(r)).toEqual([417]),
  },
  // Pipelining
  {
    name: 'three GETs in one write',
    bytes: ['/p1', '/p2', '/p3'].map((p) => `GET ${p} HTTP/1.1\r\nHost: a\r\n\r\n`).join(''),
    opts: { responses: 3 },
    check: (r) =>
      expect(r.responses.map((x) => JSON.parse(x.body).line)).toEqual([
        'GET /base/p1',
        'GET /base/p2',
        'GET /base/p3',
      ]),
  },
  {
    name: 'a POST with a body and a GET in one write',
    bytes:
      'POST /p HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhelloGET /q HTTP/1.1\r\nHost: a\r\n\r\n',
    opts: { responses: 2 },
    check: (r) => {
      expect(status(r)).toEqual([200, 200]);
      expect(r.responses.map((x) => JSON.parse(x.body).line)).toEqual([
        'POST /base/p',
        'GET /base/q',
      ]);
      expect(bytesSeen(r, 0)).toBe(5);
    },
  },
  // HTTP/1.0
  {
    name: 'HTTP/1.0 without keep-alive (no Host)',
    bytes: 'GET /old HTTP/1.0\r\n\r\n',
    check: (r) => expect([status(r), r.closed]).toEqual([[200], true]),
  },
  {
    name: 'HTTP/1.0 with keep-alive, two requests on the connection',
    bytes: 'GET /old1 HTTP/1.0\r\nConnection: keep-alive\r\n\r\n',
    opts: { responses: 2, then: ['GET /old2 HTTP/1.0\r\nConnection: keep-alive\r\n\r\n'] },
    check: (r) => expect([status(r), r.closed]).toEqual([[200, 200], false]),
  },
  // Sizes and bytes Node's parser refuses itself
  {
    name: 'a head larger than Node accepts',
    bytes: `GET /big HTTP/1.1\r\nHost: a\r\nX-Big: ${'b'.repeat(20_000)}\r\n\r\n`,
    check: (r) => expect(status(r)).toEqual([431]),
  },
  {
    name: 'a 20 kB URL',
    bytes: `GET /${'u'.repeat(20_000)} HTTP/1.1\r\nHost: a\r\n\r\n`,
    check: (r) => expect(status(r)).toEqual([431]),
  },
  {
    name: 'an 8 kB URL (within the limit)',
    bytes: `GET /${'u'.repeat(8_000)} HTTP/1.1\r\nHost: a\r\n\r\n`,
    opts: { responses: 1 },
    check: (r) => expect(status(r)).toEqual([200]),
  },
  {
    name: 'a control byte in a header value',
    bytes: 'GET /x HTTP/1.1\r\nHost: a\r\nX-A: a\x01b\r\n\r\n',
    check: (r) => expect(status(r)).toEqual([400]),
  },
  {
    name: 'a space in a header name',
    bytes: 'GET /x HTTP/1.1\r\nHost: a\r\nX A: b\r\n\r\n',
    check: (r) => expect(status(r)).toEqual([400]),
  },
  {
    name: 'a NUL in the URL',
    bytes: 'GET /x\x00y HTTP/1.1\r\nHost: a\r\n\r\n',
    check: (r) => expect(status(r)).toEqual([400]),
  },
  {
    name: 'obs-text (Latin-1) in a header value is forwarded',
    bytes: 'GET /x HTTP/1.1\r\nHost: a\r\nX-A: caf\xe9\r\n\r\n',
    opts: { responses: 1 },
    check: (r) => expect(status(r)).toEqual([200]),
  },
  // Request targets and Host
  {
    name: 'absolute-form request target',
    bytes: 'GET http://example.com/abs HTTP/1.1\r\nHost: example.com\r\n\r\n',
    opts: { responses: 1 },
    check: (r) => expect(JSON.parse(r.responses[0]!.body).line).toBe('GET /base/abs'),
  },
  {
    // RFC 9112 §3.2.2: the target's host, not Host; the app routed by Host.
    name: 'absolute-form naming another host than Host',
    bytes: 'GET http://admin.internal/abs HTTP/1.1\r\nHost: a\r\n\r\n',
    opts: { responses: 1 },
    check: (r) => expect([status(r), code(r)]).toEqual([[400], 'LW_GW_BAD_PATH']),
  },
  {
    name: 'absolute-form with a dot-segment',
    bytes: 'GET http://example.com/../abs HTTP/1.1\r\nHost: example.com\r\n\r\n',
    opts: { responses: 1 },
    check: (r) => expect([status(r), code(r)]).toEqual([[400], 'LW_GW_BAD_PATH']),
  },
  {
    name: 'OPTIONS *',
    bytes: 'OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n',
    opts: { responses: 1 },
    check: (r) => expect([status(r), code(r)]).toEqual([[400], 'LW_GW_BAD_PATH']),
  },
  {
    name: 'CONNECT (no handler: Node closes the connection)',
    bytes: 'CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n',
    check: (r) => expect([status(r), r.closed]).toEqual([[], true]),
  },
  {
    name: 'two Host headers',
    bytes: 'GET /h HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n',
    check: (r) =>
      expect([status(r), code(r), r.closed]).toEqual([[400], 'LW_GW_BAD_REQUEST', true]),
  },
  {
    name: 'no Host on HTTP/1.1',
    bytes: 'GET /h HTTP/1.1\r\n\r\n',
    check: (r) => expect(status(r)).toEqual([400]),
  },
  {
    name: 'dot-segments and backslashes',
    bytes: 'GET /..\\..\\secret HTTP/1.1\r\nHost: a\r\n\r\n',
    opts: { responses: 1 },
    check: (r) => expect([status(r), code(r)]).toEqual([[400], 'LW_GW_BAD_PATH']),
  },
  // Bodies where none is expected, and framing
  {
    name: 'a body on a GET',
    bytes: 'GET /gb HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc',
    opts: { responses: 1 },
    check: (r) => expect([status(r), bytesSeen(r)]).toEqual([[200], 3]),
  },
  {
    name: 'a body on a HEAD',
    bytes: 'HEAD /hb HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc',
    opts: { responses: 1, bodiless: [0] },
    check: (r) => expect(status(r)).toEqual([200]),
  },
  {
    name: 'Connection: content-length on a GET with a request in its body',
    bytes: `GET /s HTTP/1.1\r\nHost: a\r\nConnection: content-length\r\nContent-Length: 41\r\n\r\n${SMUGGLED}`,
    opts: { responses: 1 },
    check: (r) => expect([status(r), bytesSeen(r)]).toEqual([[200], 41]),
  },
  {
    name: 'a chunked DELETE with a request in its body',
    bytes: `DELETE /s HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n${size(SMUGGLED)}\r\n${SMUGGLED}\r\n0\r\n\r\n`,
    opts: { responses: 1 },
    check: (r) => expect([status(r), bytesSeen(r)]).toEqual([[200], 41]),
  },
  {
    name: 'Transfer-Encoding other than chunked',
    bytes:
      'POST /te HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n',
    check: (r) =>
      expect([status(r), code(r), r.closed]).toEqual([[400], 'LW_GW_BAD_REQUEST', true]),
  },
  {
    name: 'a chunk size that is not hex, mid-body',
    bytes: 'POST /bad HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\nzz\r\n',
    check: (r) => expect([status(r), r.closed]).toEqual([[400], true]),
  },
  {
    name: 'an upgrade to h2c on a plain request (no upgrade handler)',
    bytes:
      'GET /up HTTP/1.1\r\nHost: a\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAoAAAAAIAAAAA\r\n\r\n',
    opts: { responses: 1 },
    check: (r) => {
      expect(status(r)).toEqual([200]);
      const h = JSON.parse(r.responses[0]!.body).headers as Record<string, string>;
      expect([h.upgrade, h['http2-settings']]).toEqual([undefined, undefined]);
    },
  },
];

describe('odd requests, one gateway process', () => {
  it.each(corpus.map((c) => [c.name, c] as const))('%s', async (_name, c) => {
    const r = await rawExchange(port, c.bytes, c.opts);
    c.check(r);
    expect(exit).toBeUndefined();
  });

  it('survives an upload aborted mid-body and a stalled one (408)', async () => {
    const aborted = await openSlow(
      port,
      'POST /ab HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\n0123456789',
    );
    await until(() => aborted.socket.bytesWritten > 0);
    aborted.socket.destroy();
    const stalled = await rawExchange(
      port,
      'POST /st HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\n0123456789',
    );
    expect([status(stalled), code(stalled), stalled.closed]).toEqual([
      [408],
      'LW_GW_BODY_TIMEOUT',
      true,
    ]);
    expect(exit).toBeUndefined();
  });

  it('is alive afterwards, serves a normal request, and counted and logged the refusals', async () => {
    const ok = await rawExchange(port, 'GET /normal HTTP/1.1\r\nHost: a\r\n\r\n', { responses: 1 });
    expect(JSON.parse(ok.responses[0]!.body).line).toBe('GET /base/normal');
    const { metrics, warnings, lines } = await report();
    expect(exit).toBeUndefined();
    // The backend parsed every request it got as one request: nothing smuggled.
    expect(lines.filter((l) => l.includes('SMUGGLED'))).toEqual([]);
    expect(lines.every((l) => l.startsWith('GET /base/') || / \/base\//.test(l))).toBe(true);
    expect({
      badRequest: counterValue(metrics, 'rejected_requests_total', 'LW_GW_BAD_REQUEST'),
      badPath: counterValue(metrics, 'rejected_requests_total', 'LW_GW_BAD_PATH'),
      bodyTimeout: counterValue(metrics, 'rejected_requests_total', 'LW_GW_BODY_TIMEOUT'),
      proxyError: counterValue(metrics, 'rejected_requests_total', 'LW_GW_PROXY_ERROR'),
      // Nothing a client did counts against the backend.
      backendErrors: counterValue(metrics, 'backend_errors_total'),
    }).toEqual({ badRequest: 2, badPath: 4, bodyTimeout: 1, proxyError: 0, backendErrors: 0 });
    for (const c of ['LW_GW_BAD_REQUEST', 'LW_GW_BAD_PATH', 'LW_GW_BODY_TIMEOUT'])
      expect([c, warnings.some((w) => w.includes(`(${c})`))]).toEqual([c, true]);
  });
});
