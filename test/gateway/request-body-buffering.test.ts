/**
 * requestBuffering: the gateway reads a request's body before it picks a backend
 * (nginx's proxy_request_buffering, in memory), so a slow upload holds no backend slot
 * while it arrives. Real servers on port 0, raw sockets for chunked and trickled bodies;
 * the one timed case runs on an injected clock, never on sleeps.
 */
import { createHash } from 'node:crypto';
import { createServer, type IncomingMessage } from 'node:http';
import express from 'express';
import { loadBalance, type LoadBalanceOptions } from '@loadwise/gateway-plugin';
import { internals } from '@loadwise/gateway-plugin/internals';
import { listen, type TestServer } from '../kit/http';
import { counterValue, openSlow, rawExchange, until } from '../kit/raw-http';

jest.setTimeout(30_000);

interface Seen {
  line: string;
  headers: IncomingMessage['headers'];
  chunks: Buffer[];
  /** Bytes of the body the backend has read so far. */
  bytes: number;
  ended: boolean;
}

/** A backend that records what its parser reads, and answers `{ line, bytes, sha }` at the body's end. */
async function recordingBackend(): Promise<TestServer & { seen: Seen[] }> {
  const seen: Seen[] = [];
  const server = createServer((req, res) => {
    const entry: Seen = {
      line: `${req.method} ${req.url}`,
      headers: req.headers,
      chunks: [],
      bytes: 0,
      ended: false,
    };
    seen.push(entry);
    req.on('data', (c: Buffer) => {
      entry.chunks.push(c);
      entry.bytes += c.length;
    });
    req.on('end', () => {
      entry.ended = true;
      const body = Buffer.concat(entry.chunks);
      res.setHeader('content-type', 'application/json');
      res.end(
        JSON.stringify({
          line: entry.line,
          bytes: body.length,
          sha: createHash('sha256').update(body).digest('hex'),
        }),
      );
    });
  });
  return Object.assign(await listen(server), { seen });
}

interface Gw extends TestServer {
  lb: ReturnType<typeof loadBalance>;
  metric(name: string, code?: string): Promise<number>;
}

async function gateway(
  opts: Partial<LoadBalanceOptions> & Pick<LoadBalanceOptions, 'backends'>,
  setup: (app: express.Express, lb: ReturnType<typeof loadBalance>) => void = (app, lb) =>
    app.use(lb),
): Promise<Gw> {
  const lb = loadBalance({
    overload: false,
    healthCheck: false,
    logger: { info: () => {}, warn: () => {}, error: () => {} },
    ...opts,
  });
  const app = express();
  setup(app, lb);
  const srv = await listen(createServer(app));
  return {
    ...srv,
    lb,
    close: async () => {
      await srv.close();
      await lb.close();
    },
    metric: async (name, code) =>
      counterValue(await lb.balancer.metricsRegistry.metrics(), name, code),
  };
}

/** Everything the gateway holds for requests: in flight, client slots, buffered bytes, backend slots. */
async function nothingHeld(g: Gw): Promise<void> {
  const b = internals(g.lb);
  await until(
    () =>
      b.flow.active === 0 &&
      b.flow.bufferedBytes === 0 &&
      (b.flow.clients?.clients ?? 0) === 0 &&
      b.snapshot().backends.every((x) => x.inFlight === 0),
  );
}

/** `n` bytes that tell their order apart (a byte out of place changes the hash). */
function pattern(n: number): Buffer {
  const b = Buffer.alloc(n);
  for (let i = 0; i < n; i++) b[i] = (i * 7 + (i >> 8)) & 0xff;
  return b;
}

const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex');

/** A chunked body's framing of `body` in chunks of `size`. */
function chunked(body: Buffer, size: number): Buffer {
  const parts: Buffer[] = [];
  for (let i = 0; i < body.length; i += size) {
    const c = body.subarray(i, i + size);
    parts.push(Buffer.from(`${c.length.toString(16)}\r\n`, 'latin1'), c, Buffer.from('\r\n'));
  }
  parts.push(Buffer.from('0\r\n\r\n'));
  return Buffer.concat(parts);
}

let backend: TestServer & { seen: Seen[] };
let gw: Gw | undefined;
beforeEach(async () => {
  backend = await recordingBackend();
});
afterEach(async () => {
  await gw?.close();
  gw = undefined;
  await backend.close();
});

describe('a body that ends within maxBytes', () => {
  it('is sent whole with a Content-Length, a chunked one too: no Transfer-Encoding left', async () => {
    gw = await gateway({ backends: [{ id: 'b', url: backend.url }] });
    const body = pattern(3_000);
    const head = 'POST /upload HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n';
    const r = await rawExchange(
      gw.port,
      Buffer.concat([Buffer.from(head, 'latin1'), chunked(body, 700)]),
      { responses: 1 },
    );
    expect(r.responses[0]?.status).toBe(200);
    expect(JSON.parse(r.responses[0]!.body)).toEqual({
      line: 'POST /upload',
      bytes: 3_000,
      sha: sha(body),
    });
    const seen = backend.seen[0]!;
    expect([seen.headers['content-length'], seen.headers['transfer-encoding']]).toEqual([
      '3000',
      undefined,
    ]);
    await nothingHeld(gw);
  });
});

describe('a body longer than maxBytes', () => {
  it.each([
    ['Content-Length', 'content-length'],
    ['chunked', 'transfer-encoding'],
  ])(
    'with %s: no backend before maxBytes have come, then the prefix and the rest, 1 MB intact',
    async (framing, header) => {
      gw = await gateway({ backends: [{ id: 'b', url: backend.url }] });
      const size = 1_000_000;
      const body = pattern(size);
      const wire = framing === 'chunked' ? chunked(body, 16_384) : body;
      const head =
        framing === 'chunked'
          ? 'PUT /big HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n'
          : `PUT /big HTTP/1.1\r\nHost: a\r\nContent-Length: ${size}\r\n\r\n`;
      const c = await openSlow(gw.port, head);
      try {
        // 40,000 bytes: under maxBytes (64 KiB), read and held by the gateway, no backend yet.
        const first = framing === 'chunked' ? 40_000 + 3 * 8 : 40_000;
        c.socket.write(wire.subarray(0, first));
        const b = internals(gw.lb);
        await until(() => b.flow.bufferedBytes >= 30_000);
        expect(backend.seen).toHaveLength(0);
        c.socket.write(wire.subarray(first));
        await until(() => c.responses().length === 1);
      } finally {
        c.socket.destroy();
      }
      const [res] = c.responses();
      expect(res?.status).toBe(200);
      expect(JSON.parse(res!.body)).toEqual({ line: 'PUT /big', bytes: size, sha: sha(body) });
      // Streamed after its prefix: the framing the client chose.
      expect(backend.seen[0]!.headers[header]).toBe(framing === 'chunked' ? 'chunked' : '1000000');
      await nothingHeld(gw);
    },
  );
});

describe('a slow body', () => {
  it('never reaches a backend, and is answered 408 by the minimum rate', async () => {
    // The injected clock is the only one the body clock reads: 10 s pass between two
    // bytes without a sleep (240 B/s after a 5 s grace, the defaults).
    let nowMs = 1_000_000;
    gw = await gateway({ backends: [{ id: 'b', url: backend.url }], now: () => nowMs });
    const c = await openSlow(
      gw.port,
      'POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: 100000\r\n\r\nx',
    );
    const b = internals(gw.lb);
    try {
      await until(() => b.flow.bufferedBytes === 1);
      nowMs += 10_000;
      c.socket.write('x');
      await until(() => c.responses().length === 1);
    } finally {
      c.socket.destroy();
    }
    const [res] = c.responses();
    expect([res?.status, res?.headers['x-loadwise-error']]).toEqual([408, 'LW_GW_BODY_TIMEOUT']);
    expect(backend.seen).toHaveLength(0);
    expect(await gw.metric('rejected_requests_total', 'LW_GW_BODY_TIMEOUT')).toBe(1);
    expect(await gw.metric('backend_errors_total')).toBe(0);
    await nothingHeld(gw);
  });
});

describe('the budget of bytes held in all', () => {
  it('dispatches a body that would pass maxTotalBytes with what it has: it streams, counted', async () => {
    gw = await gateway({
      backends: [{ id: 'b', url: backend.url }],
      requestBuffering: { maxBytes: 1_000, maxTotalBytes: 1_000 },
    });
    // Over retry.maxBodyBytes (16 KiB): not a body read whole for retries, which the budget keeps.
    const head = 'POST /p HTTP/1.1\r\nHost: a\r\nContent-Length: 50000\r\n\r\n';
    const a = await openSlow(gw.port, head);
    const bee = await openSlow(gw.port, head);
    const b = internals(gw.lb);
    try {
      a.socket.write(pattern(600));
      await until(() => b.flow.bufferedBytes === 600);
      expect(backend.seen).toHaveLength(0);
      expect(await gw.metric('request_buffer_bytes')).toBe(600);
      // 600 more would hold 1,200 > 1,000: this one is dispatched at once with its 600 bytes.
      bee.socket.write(pattern(600));
      await until(() => backend.seen[0]?.bytes === 600);
      expect(backend.seen).toHaveLength(1);
      expect(b.flow.bufferedBytes).toBe(600); // a's bytes; b's left with its prefix
      expect(await gw.metric('request_buffer_full_total')).toBe(1);
      a.socket.write(pattern(50_000).subarray(600));
      bee.socket.write(pattern(50_000).subarray(600));
      await until(() => a.responses().length === 1 && bee.responses().length === 1);
    } finally {
      a.socket.destroy();
      bee.socket.destroy();
    }
    for (const c of [a, bee])
      expect(JSON.parse(c.responses()[0]!.body)).toEqual({
        line: 'POST /p',
        bytes: 50_000,
        sha: sha(pattern(50_000)),
      });
    await nothingHeld(gw);
  });
});

describe('what the budget counts', () => {
  it('releases a body read whole once its answer is relayed, not when the answer ends', async () => {
    // An event stream answering a POST: counted until it ended, four of them held a 256 KB
    // budget for as long as they streamed, and every other upload streamed from dispatch.
    const events = await listen(
      createServer((req, res) => {
        req.resume();
        req.on('end', () => {
          res.writeHead(200, { 'content-type': 'text/event-stream' });
          res.write('data: 1\n\n');
        });
      }),
    );
    try {
      gw = await gateway({ backends: [{ id: 'e', url: events.url }] });
      const c = await openSlow(
        gw.port,
        'POST /chat HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n',
      );
      try {
        c.socket.write(chunked(pattern(40_000), 4_000));
        await until(() => /data: 1/.test(c.raw()));
        expect(internals(gw.lb).flow.bufferedBytes).toBe(0);
        expect(internals(gw.lb).flow.active).toBe(1); // the answer still streams
      } finally {
        c.socket.destroy();
      }
      await nothingHeld(gw);
    } finally {
      await gw?.close();
      gw = undefined;
      await events.close();
    }
  });

  it('reads a body that announces a Trailer like any other: no way around the buffering', async () => {
    // Exempted, one `Trailer: x` header let a trickled body reach the backend at once, and
    // five addresses of such bodies filled its pool again. No trailer field is forwarded.
    gw = await gateway({ backends: [{ id: 'b', url: backend.url }] });
    const c = await openSlow(
      gw.port,
      'POST /upload HTTP/1.1\r\nHost: a\r\nTrailer: x-sum\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nx\r\n',
    );
    try {
      await until(() => internals(gw!.lb).flow.bufferedBytes === 1);
      expect(backend.seen).toHaveLength(0);
      c.socket.write('1\r\ny\r\n0\r\nx-sum: 2\r\n\r\n');
      await until(() => c.responses().length === 1);
    } finally {
      c.socket.destroy();
    }
    expect(JSON.parse(c.responses()[0]!.body)).toEqual({
      line: 'POST /upload',
      bytes: 2,
      sha: sha(Buffer.from('xy')),
    });
    expect(backend.seen[0]?.headers['content-length']).toBe('2');
    expect(backend.seen[0]?.headers['x-sum']).toBeUndefined();
  });
});

describe('a client that leaves while its body is read', () => {
  it('takes everything with it: nothing dispatched, no slot or byte held', async () => {
    gw = await gateway({ backends: [{ id: 'b', url: backend.url }], maxInFlightPerClient: 4 });
    const c = await openSlow(
      gw.port,
      'POST /upload HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n10\r\n0123456789abcdef\r\n',
    );
    const b = internals(gw.lb);
    await until(() => b.flow.active === 1 && b.flow.bufferedBytes === 16);
    c.socket.destroy();
    await nothingHeld(gw);
    expect(backend.seen).toHaveLength(0);
  });
});

describe('pipelined requests', () => {
  it('go to the backend in order, a buffered chunked one with its Content-Length', async () => {
    gw = await gateway({ backends: [{ id: 'b', url: backend.url }] });
    const r = await rawExchange(
      gw.port,
      'POST /one HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n' +
        'GET /two HTTP/1.1\r\nHost: a\r\n\r\n' +
        'PUT /three HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nhi',
      { responses: 3 },
    );
    expect(r.responses.map((x) => JSON.parse(x.body).line)).toEqual([
      'POST /one',
      'GET /two',
      'PUT /three',
    ]);
    expect(backend.seen.map((s) => [s.line, s.headers['content-length']])).toEqual([
      ['POST /one', '3'],
      ['GET /two', undefined],
      ['PUT /three', '2'],
    ]);
    expect(backend.seen[0]!.headers['transfer-encoding']).toBeUndefined();
  });
});

describe('a body parser in front of the balancer', () => {
  it("still sends req.body serialized again (planBody's 'buffered' path), whatever maxBytes", async () => {
    gw = await gateway(
      // maxBytes under the body's length: a body already read is not read again.
      { backends: [{ id: 'b', url: backend.url }], requestBuffering: { maxBytes: 8 } },
      (app, lb) => app.use(express.json(), lb),
    );
    const json = JSON.stringify({ order: 42, items: ['a', 'b', 'c'] });
    const r = await rawExchange(
      gw.port,
      'POST /orders HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\n' +
        `Transfer-Encoding: chunked\r\n\r\n${chunked(Buffer.from(json), 10).toString('latin1')}`,
      { responses: 1 },
    );
    expect(r.responses[0]?.status).toBe(200);
    const seen = backend.seen[0]!;
    expect(Buffer.concat(seen.chunks).toString()).toBe(json);
    expect([seen.headers['content-length'], seen.headers['transfer-encoding']]).toEqual([
      String(json.length),
      undefined,
    ]);
    await nothingHeld(gw);
  });
});

describe('retries', () => {
  it('send a chunked body read whole again, within retry.maxBodyBytes', async () => {
    // The first backend resets every request before answering: the PUT goes to the other.
    const resets = await listen(
      createServer((req) => {
        req.on('data', () => {});
        req.on('end', () => req.socket.destroy());
      }),
    );
    try {
      gw = await gateway({
        backends: [
          { id: 'r', url: resets.url },
          { id: 'b', url: backend.url },
        ],
        strategy: 'round-robin',
      });
      const lines: number[] = [];
      for (let i = 0; i < 2; i++) {
        const r = await rawExchange(
          gw.port,
          'PUT /again HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n',
          { responses: 1 },
        );
        lines.push(r.responses[0]!.status);
      }
      // Whichever backend round-robin picks first, both PUTs are answered by `b`.
      expect(lines).toEqual([200, 200]);
      expect(backend.seen.map((s) => [s.line, s.headers['content-length']])).toEqual([
        ['PUT /again', '3'],
        ['PUT /again', '3'],
      ]);
      expect(Buffer.concat(backend.seen[0]!.chunks).toString()).toBe('abc');
    } finally {
      await resets.close();
    }
  });
});
