import { AsyncLocalStorage } from 'node:async_hooks';
import { createServer } from 'node:http';
import { connect, type AddressInfo, type Socket } from 'node:net';
import os from 'node:os';
import express from 'express';
import {
  fire,
  get,
  listen,
  until,
  type InFlightRequest,
  type Listening,
} from '../../../../test/kit/agent-http';
import { AgentError } from '../errors';
import { httpTrackerSource } from '../queue/tracker-source';
import {
  MAX_RISE_WATCHERS,
  trackRequests,
  type RequestTracker,
  type TrackerSnapshot,
  type TrackRequestsOptions,
} from './track-requests';

/**
 * A tracker (`opts`) in front of an Express app whose routes `routes` adds, on port 0;
 * `run` gets both, and both are closed after it.
 */
async function withTrackedApp(
  routes: (app: express.Express) => void,
  run: (tracker: RequestTracker, server: Listening) => Promise<void>,
  opts?: TrackRequestsOptions,
): Promise<void> {
  const tracker = trackRequests(opts);
  const app = express();
  app.use(tracker);
  routes(app);
  const server = await listen(app);
  try {
    await run(tracker, server);
  } finally {
    tracker.close();
    await server.close();
  }
}

/** A raw connection to `server` that wrote `request`; `received()` is what came back so far. */
function rawRequest(server: Listening, request: string): { sock: Socket; received(): string } {
  const sock = connect(Number(new URL(server.url).port), '127.0.0.1');
  sock.on('error', () => undefined);
  let got = '';
  sock.on('data', (d: Buffer) => (got += d.toString()));
  sock.write(request);
  return { sock, received: () => got };
}

/**
 * A real Express app on port 0. GET /hold/:id parks the request until the test
 * calls release(id); the order in which handlers start is recorded, so FIFO
 * admission is observable.
 */
async function holdApp(opts: TrackRequestsOptions): Promise<{
  tracker: RequestTracker;
  server: Listening;
  started: string[];
  release(id: string, status?: number): void;
  close(): Promise<void>;
}> {
  const tracker = trackRequests(opts);
  const started: string[] = [];
  const parked = new Map<string, (status: number) => void>();
  const app = express();
  app.use(tracker);
  app.get('/healthz', (_req, res) => {
    res.send('ok');
  });
  app.get('/hold/:id', (req, res) => {
    started.push(req.params.id);
    parked.set(req.params.id, (status) => res.status(status).send(req.params.id));
  });
  app.get('/sse/:id', (req, res) => {
    started.push(req.params.id);
    res.writeHead(200, { 'Content-Type': 'text/event-stream; charset=utf-8' });
    res.write('data: hello\n\n');
    parked.set(req.params.id, () => res.end());
  });
  app.get('/fail', (_req, res) => {
    res.status(500).send('boom');
  });
  const server = await listen(app);
  return {
    tracker,
    server,
    started,
    release(id, status = 200) {
      const fn = parked.get(id);
      if (!fn) throw new Error(`request ${id} is not running`);
      parked.delete(id);
      fn(status);
    },
    async close() {
      tracker.close();
      await server.close();
    },
  };
}

describe('trackRequests', () => {
  it('counts in-flight requests and completions without a limit', async () => {
    const app = await holdApp({});
    try {
      const reqs = ['a', 'b', 'c'].map((id) => fire(`${app.server.url}/hold/${id}`));
      await until(() => app.started.length === 3);
      expect(app.tracker.snapshot()).toMatchObject({ inFlight: 3, queued: 0, completed: 0 });
      expect(app.tracker.snapshot().concurrencyLimit).toBeUndefined();
      for (const id of ['a', 'b', 'c']) app.release(id);
      const replies = await Promise.all(reqs.map((r) => r.done));
      expect(replies.map((r) => r?.status)).toEqual([200, 200, 200]);
      await until(() => app.tracker.snapshot().completed === 3);
      const s = app.tracker.snapshot();
      expect(s).toMatchObject({
        inFlight: 0,
        queued: 0,
        completed: 3,
        windowCompleted: 3,
        errorRate: 0,
      });
      expect(s.rps).toBeGreaterThan(0);
      expect(s.latencyP99Ms).toBeGreaterThan(0);
      expect(s.latencyP50Ms).toBeLessThanOrEqual(s.latencyP99Ms);
    } finally {
      await app.close();
    }
  });

  it('runs at most concurrencyLimit requests and admits waiters in FIFO order', async () => {
    const app = await holdApp({ concurrencyLimit: 2 });
    const ids = ['r0', 'r1', 'r2', 'r3', 'r4'];
    const reqs: InFlightRequest[] = [];
    try {
      // Fire one at a time, each after the previous one is counted, so arrival order is known.
      for (const [i, id] of ids.entries()) {
        reqs.push(fire(`${app.server.url}/hold/${id}`));
        await until(() => {
          const s = app.tracker.snapshot();
          return s.inFlight + s.queued === i + 1;
        });
      }
      expect(app.tracker.snapshot()).toMatchObject({ inFlight: 2, queued: 3, concurrencyLimit: 2 });
      expect(app.started).toEqual(['r0', 'r1']);
      app.release('r1');
      await until(() => app.started.length === 3);
      expect(app.started).toEqual(['r0', 'r1', 'r2']);
      expect(app.tracker.snapshot()).toMatchObject({ inFlight: 2, queued: 2 });
      app.release('r0');
      app.release('r2');
      await until(() => app.started.length === 5);
      expect(app.started).toEqual(ids);
      expect(app.tracker.snapshot()).toMatchObject({ inFlight: 2, queued: 0 });
      app.release('r3');
      app.release('r4');
      const replies = await Promise.all(reqs.map((r) => r.done));
      expect(replies.map((r) => r?.body)).toEqual(ids);
    } finally {
      await app.close();
    }
  });

  it('answers 503 with Retry-After beyond maxQueue', async () => {
    const app = await holdApp({ concurrencyLimit: 1, maxQueue: 1, retryAfterS: 3 });
    try {
      const a = fire(`${app.server.url}/hold/a`);
      await until(() => app.tracker.snapshot().inFlight === 1);
      const b = fire(`${app.server.url}/hold/b`);
      await until(() => app.tracker.snapshot().queued === 1);
      const c = await fire(`${app.server.url}/hold/c`).done;
      expect(c?.status).toBe(503);
      expect(c?.headers['retry-after']).toBe('3');
      expect(app.tracker.snapshot()).toMatchObject({ inFlight: 1, queued: 1, rejected: 1 });
      app.release('a');
      await until(() => app.started.includes('b'));
      app.release('b');
      expect((await a.done)?.status).toBe(200);
      expect((await b.done)?.status).toBe(200);
      expect(app.started).toEqual(['a', 'b']);
    } finally {
      await app.close();
    }
  });

  it('drops a waiter whose client disconnects, and never runs it', async () => {
    const app = await holdApp({ concurrencyLimit: 1 });
    try {
      const a = fire(`${app.server.url}/hold/a`);
      await until(() => app.tracker.snapshot().inFlight === 1);
      const b = fire(`${app.server.url}/hold/b`);
      await until(() => app.tracker.snapshot().queued === 1);
      const c = fire(`${app.server.url}/hold/c`);
      await until(() => app.tracker.snapshot().queued === 2);
      b.abort();
      await until(
        () => app.tracker.snapshot().queued === 1,
        5000,
        'the aborted waiter to leave the queue',
      );
      expect(app.tracker.snapshot().aborted).toBe(1);
      app.release('a');
      await until(() => app.started.length === 2);
      expect(app.started).toEqual(['a', 'c']);
      app.release('c');
      expect((await c.done)?.body).toBe('c');
      await a.done;
      expect(await b.done).toBeUndefined();
      await until(() => app.tracker.snapshot().completed === 3);
      // Two served, one aborted: a client that left is not the backend's error (gateways
      // charge a backend for neither); it counted as one, so a healthy backend behind
      // impatient clients reported half its requests as errors.
      expect(app.tracker.snapshot()).toMatchObject({ errorRate: 0, windowCompleted: 3 });
      expect(app.tracker.snapshot()).toMatchObject({ inFlight: 0, queued: 0 });
    } finally {
      await app.close();
    }
  });

  it("takes the error rate over the handlers' answers: clients that left are not in it", async () => {
    // Ninety clients leaving beside ten 500s made a backend failing every answer report an
    // error rate of 0.1 (a review): impatient clients, or a gateway timing requests out,
    // hid it. Here two answers, both 500, and three requests whose clients left.
    const app = await holdApp({});
    try {
      for (let i = 0; i < 2; i++) expect((await get(`${app.server.url}/fail`)).status).toBe(500);
      const left = ['x', 'y', 'z'].map((id) => fire(`${app.server.url}/hold/${id}`));
      await until(() => app.tracker.snapshot().inFlight === 3);
      for (const r of left) r.abort();
      await until(() => app.tracker.snapshot().completed === 5, 5000, 'every request ended');
      expect(app.tracker.snapshot()).toMatchObject({
        aborted: 3,
        windowCompleted: 5,
        errorRate: 1,
      });
    } finally {
      await app.close();
    }
  });

  it('counts a 5xx head sent before the response was destroyed as an error, not as a client that left', async () => {
    // Express's final handler destroys a response whose headers went out; a proxy failing
    // mid-body does the same. Read as clients that left: error rate 0 for a backend
    // failing half its answers that way (the session's re-review).
    await withTrackedApp(
      (app) => {
        app.get('/ok', (_req, res) => void res.send('ok'));
        app.get('/broken', (_req, res) => {
          res.writeHead(500, { 'Content-Length': '100' });
          res.write('partial');
          setImmediate(() => res.destroy());
        });
      },
      async (tracker, server) => {
        for (let i = 0; i < 2; i++) {
          await get(`${server.url}/ok`);
          await get(`${server.url}/broken`).catch(() => undefined);
        }
        await until(() => tracker.snapshot().completed === 4, 5000, 'every request ended');
        expect(tracker.snapshot()).toMatchObject({ aborted: 0, errorRate: 0.5 });
      },
    );
  });

  it("counts a 500 written on req 'aborted' for a whole request as the client's leaving", async () => {
    // The session's second re-review: with the 5xx-head rule keyed on a complete request
    // alone, a handler answering 500 when its client left a GET counted as an error again.
    await withTrackedApp(
      (app) => {
        app.get('/slow', (req, res) => {
          req.on('aborted', () => {
            if (!res.headersSent) res.status(500).end('client gone');
          });
        });
        app.get('/ok', (_req, res) => void res.send('ok'));
      },
      async (tracker, server) => {
        for (let i = 0; i < 3; i++) {
          const { sock } = rawRequest(server, 'GET /slow HTTP/1.1\r\nHost: a\r\n\r\n');
          await until(() => tracker.snapshot().inFlight === 1);
          sock.destroy();
          await until(() => tracker.snapshot().inFlight === 0);
        }
        await get(`${server.url}/ok`);
        await until(() => tracker.snapshot().completed === 4);
        expect(tracker.snapshot()).toMatchObject({ aborted: 3, errorRate: 0 });
      },
    );
  });

  it('counts a pipelined 500 that never got the connection as its client leaving', async () => {
    // The third re-review: its bytes wait behind the answer before it; that answer's bytes
    // on the connection were credited to it, and a 500 the client never saw was an error.
    await withTrackedApp(
      (app) => {
        app.get('/slow', (_req, res) => void setTimeout(() => res.write('first chunk'), 50));
        app.get('/fail', (_req, res) => {
          res.status(500);
          res.write('partial error');
        });
      },
      async (tracker, server) => {
        const c = rawRequest(
          server,
          'GET /slow HTTP/1.1\r\nHost: a\r\n\r\nGET /fail HTTP/1.1\r\nHost: a\r\n\r\n',
        );
        await until(() => c.received().includes('first chunk'));
        c.sock.destroy();
        await until(() => tracker.snapshot().completed === 2);
        expect(c.received()).not.toContain('500');
        expect(tracker.snapshot()).toMatchObject({ aborted: 2, errorRate: 0 });
      },
    );
  });

  it('does not take a 100 Continue sent before a 500 head that never went out for the answer', async () => {
    // The fourth re-review: pipelined behind an answer that ends, a request with
    // `Expect: 100-continue` gets its held 100 Continue flushed when it gets the connection;
    // those bytes counted as its 500 going out (writeHead alone writes nothing).
    await withTrackedApp(
      (app) => {
        app.get('/slow', (_req, res) => void setTimeout(() => res.end('first done'), 50));
        app.get('/fail', (_req, res) => void res.writeHead(500, { 'Content-Type': 'text/plain' }));
      },
      async (tracker, server) => {
        const c = rawRequest(
          server,
          'GET /slow HTTP/1.1\r\nHost: a\r\n\r\n' +
            'GET /fail HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 0\r\n\r\n',
        );
        await until(() => c.received().includes('100 Continue'));
        c.sock.destroy();
        await until(() => tracker.snapshot().completed === 2);
        expect(c.received()).not.toContain(' 500 ');
        expect(tracker.snapshot()).toMatchObject({ aborted: 1, errorRate: 0 });
      },
    );
  });

  it('counts its own 503s as refusals, neither as errors nor as latency samples', async () => {
    // A fast refusal recorded as a request lowered a saturated backend's latency and, as an
    // error, raised its error rate, which gateways penalise beside the overload they see.
    const app = await holdApp({ concurrencyLimit: 1, maxQueue: 0 });
    try {
      const a = fire(`${app.server.url}/hold/a`);
      await until(() => app.tracker.snapshot().inFlight === 1);
      for (let i = 0; i < 3; i++) expect((await get(`${app.server.url}/hold/x`)).status).toBe(503);
      app.release('a');
      await a.done;
      await until(() => app.tracker.snapshot().completed === 4);
      expect(app.tracker.snapshot()).toMatchObject({
        rejected: 3,
        errorRate: 0,
        windowCompleted: 1,
      });
    } finally {
      await app.close();
    }
  });

  it("runs a waiter's handlers in its own request's async context", async () => {
    // Run from the 'close' of the request whose end freed the slot, the waiter's handlers
    // saw that request's AsyncLocalStorage (an OpenTelemetry span, a log's request id).
    const als = new AsyncLocalStorage<string>();
    const tracker = trackRequests({ concurrencyLimit: 1 });
    const seen: Array<[string, string | undefined]> = [];
    const parked = new Map<string, () => void>();
    const app = express();
    app.use(tracker);
    app.get('/hold/:id', (req, res) => {
      seen.push([req.params.id, als.getStore()]);
      parked.set(req.params.id, () => res.send(req.params.id));
    });
    const server = createServer((req, res) => als.run(req.url ?? '', () => app(req, res)));
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
    try {
      const reqs = ['a', 'b', 'c'].map((id) => fire(`${url}/hold/${id}`));
      await until(() => tracker.snapshot().queued === 2);
      for (const id of ['a', 'b', 'c']) {
        await until(() => parked.has(id));
        parked.get(id)!();
      }
      await Promise.all(reqs.map((r) => r.done));
      expect(seen).toEqual([
        ['a', '/hold/a'],
        ['b', '/hold/b'],
        ['c', '/hold/c'],
      ]);
    } finally {
      tracker.close();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    }
  });

  it('frees the slot of a running request whose client disconnects', async () => {
    const app = await holdApp({ concurrencyLimit: 1 });
    try {
      const a = fire(`${app.server.url}/hold/a`);
      await until(() => app.tracker.snapshot().inFlight === 1);
      const b = fire(`${app.server.url}/hold/b`);
      await until(() => app.tracker.snapshot().queued === 1);
      a.abort();
      await until(() => app.started.includes('b'), 5000, 'the waiter to get the freed slot');
      app.release('b');
      expect((await b.done)?.status).toBe(200);
    } finally {
      await app.close();
    }
  });

  it("does not count its own 503s that the connection's close kept from going out as clients gone", async () => {
    const tracker = trackRequests({ concurrencyLimit: 1, maxQueue: 0 });
    const server = await listen((req, res) =>
      tracker(req, res, () => setTimeout(() => res.end('ok'), 20)),
    );
    const { hostname, port } = new URL(server.url);
    const socket = connect(Number(port), hostname);
    socket.on('error', () => undefined);
    let received = '';
    socket.setEncoding('latin1');
    socket.on('data', (d: string) => (received += d));
    try {
      socket.write('GET / HTTP/1.1\r\nHost: x\r\n\r\n'.repeat(3));
      await until(() => tracker.snapshot().completed === 3, 5_000, 'three completions');
      // The second got the 503 (`Connection: close`) and the third never went out: the
      // tracker ended the connection, the client did not leave. Before: aborted 1.
      expect(received.match(/HTTP\/1\.1 \d+/g)).toEqual(['HTTP/1.1 200', 'HTTP/1.1 503']);
      expect(tracker.snapshot()).toMatchObject({ rejected: 2, aborted: 0, inFlight: 0 });
    } finally {
      socket.destroy();
      tracker.close();
      await server.close();
    }
  });

  it('gives back the slot of a client that left while middleware before it ran', async () => {
    // An async step before the tracker (a token lookup): the client is gone when the
    // tracker runs, and Node had emitted the response's 'close' already.
    const tracker = trackRequests({ concurrencyLimit: 1, queueTimeoutMs: 2_000 });
    const app = express();
    const gate: Array<() => void> = [];
    let runs = 0;
    app.use((req, res, next) => {
      // Answered here, and passed on all the same: nothing for the tracker to count.
      if (req.url === '/cached') {
        res.send('cached');
        return next();
      }
      gate.push(next);
    });
    app.use(tracker);
    app.get('/item', (_req, res) => void (runs++, res.send('ok')));
    app.get('/cached', () => undefined);
    const server = await listen(app);
    try {
      const gone = fire(`${server.url}/item`);
      await until(() => gate.length === 1);
      gone.abort();
      await new Promise((r) => setTimeout(r, 50));
      gate.shift()!();
      // Before: inFlight 1 for good, and every later request waited queueTimeoutMs for a 503.
      await until(() => tracker.snapshot().aborted === 1, 5_000, 'counted as aborted');
      // Never run: run, its handlers took no slot (clients that sent and left ran unlimited).
      expect([tracker.snapshot().inFlight, runs]).toEqual([0, 0]);
      expect((await fire(`${server.url}/cached`).done)?.status).toBe(200);
      expect(tracker.snapshot()).toMatchObject({ completed: 1, aborted: 1 });
      const next = fire(`${server.url}/item`);
      await until(() => gate.length === 1);
      gate.shift()!();
      expect((await next.done)?.status).toBe(200);
    } finally {
      tracker.close();
      await server.close();
    }
  });

  /** Two pipelined GETs on one raw connection: the second's response waits behind the first's. */
  async function pipelined(url: string, a: string, b: string): Promise<Socket> {
    const { hostname, port } = new URL(url);
    const socket = connect(Number(port), hostname);
    socket.on('error', () => undefined);
    await new Promise((r) => socket.once('connect', r));
    socket.write(`GET ${a} HTTP/1.1\r\nHost: x\r\n\r\nGET ${b} HTTP/1.1\r\nHost: x\r\n\r\n`);
    return socket;
  }

  it('gives back what a pipelined request held when its client leaves (no limit)', async () => {
    const app = await holdApp({});
    try {
      const socket = await pipelined(app.server.url, '/hold/a', '/hold/b');
      // Without a limit both run: b's response waits behind a's on the connection.
      await until(() => app.started.length === 2);
      expect(app.tracker.snapshot()).toMatchObject({ inFlight: 2, queued: 0 });
      socket.destroy();
      await until(
        () => app.tracker.snapshot().inFlight === 0,
        2000,
        'both pipelined requests to be released',
      );
      expect(app.tracker.snapshot()).toMatchObject({
        inFlight: 0,
        queued: 0,
        completed: 2,
        aborted: 2,
      });
    } finally {
      await app.close();
    }
  });

  it.each([
    ['the first of the pair holds the slot', false],
    ['another client holds the slot', true],
  ])(
    'gives back a pipelined request that waited for a slot when its client leaves (%s)',
    async (_what, otherHolds) => {
      const app = await holdApp({ concurrencyLimit: 1 });
      try {
        const other = otherHolds ? fire(`${app.server.url}/hold/x`) : undefined;
        if (other) await until(() => app.started.includes('x'));
        const socket = await pipelined(app.server.url, '/hold/a', '/hold/b');
        await until(() => app.tracker.snapshot().queued === (otherHolds ? 2 : 1));
        socket.destroy();
        await until(
          () =>
            app.tracker.snapshot().queued === 0 &&
            app.tracker.snapshot().inFlight === (otherHolds ? 1 : 0),
          2000,
          'the pipelined pair to give back its slot and its place in the queue',
        );
        // The waiter of a client that left is never run: b was, when a's end released it.
        expect(app.started.filter((id) => id === 'a' || id === 'b')).toEqual(
          otherHolds ? [] : ['a'],
        );
        if (other) {
          app.release('x');
          expect((await other.done)?.status).toBe(200);
        }
        // The slot is free: a later request is served, not queued for good.
        const c = fire(`${app.server.url}/hold/c`);
        await until(() => app.started.includes('c'), 2000, 'a later request to run');
        app.release('c');
        expect((await c.done)?.status).toBe(200);
        await until(() => app.tracker.snapshot().inFlight === 0);
        expect(app.tracker.snapshot()).toMatchObject({ inFlight: 0, queued: 0 });
      } finally {
        await app.close();
      }
    },
  );

  it('counts 5xx responses in the error rate', async () => {
    const app = await holdApp({});
    try {
      await get(`${app.server.url}/fail`);
      await get(`${app.server.url}/healthz`);
      await until(() => app.tracker.snapshot().completed === 2);
      expect(app.tracker.snapshot().errorRate).toBe(0.5);
    } finally {
      await app.close();
    }
  });

  it('lets bypassPaths through uncounted, even when saturated', async () => {
    const app = await holdApp({ concurrencyLimit: 1, bypassPaths: ['/healthz'] });
    try {
      const a = fire(`${app.server.url}/hold/a`);
      await until(() => app.tracker.snapshot().inFlight === 1);
      expect((await get(`${app.server.url}/healthz?x=1`)).status).toBe(200);
      expect(app.tracker.snapshot()).toMatchObject({ inFlight: 1, queued: 0, completed: 0 });
      app.release('a');
      await a.done;
    } finally {
      await app.close();
    }
  });

  it.each([
    // An EventSource's stream leaves the counts and its slot once its head says it is one:
    // eight open streams behind a limit of 8 left no slot for anything else, and the
    // gateway read them as load it did not send.
    [{}, { inFlight: 0, queued: 0, started: ['a', 's', 'b'] }],
    [{ countEventStreams: true }, { inFlight: 1, queued: 1, started: ['a', 's'] }],
  ] as const)('an event stream with %j', async (extra, want) => {
    const app = await holdApp({ concurrencyLimit: 1, ...extra });
    try {
      const a = fire(`${app.server.url}/hold/a`);
      await until(() => app.tracker.snapshot().inFlight === 1);
      // It waits for a slot like any request: only its answer can say it is a stream.
      const s = fire(`${app.server.url}/sse/s`, { accept: 'text/event-stream' });
      await until(() => app.tracker.snapshot().queued === 1);
      expect(app.started).toEqual(['a']);
      app.release('a');
      await a.done;
      await until(() => app.started.includes('s'));
      const b = fire(`${app.server.url}/hold/b`);
      await until(() =>
        'countEventStreams' in extra
          ? app.tracker.snapshot().queued === 1
          : app.started.includes('b'),
      );
      const { inFlight, queued } = app.tracker.snapshot();
      expect({ inFlight: inFlight - (app.started.includes('b') ? 1 : 0), queued }).toEqual({
        inFlight: want.inFlight,
        queued: want.queued,
      });
      expect(app.started).toEqual(want.started);
      app.release('s');
      await s.done;
      await until(() => app.started.includes('b'));
      app.release('b');
      await b.done;
      await until(() => app.tracker.snapshot().inFlight === 0);
    } finally {
      await app.close();
    }
  });

  it('runs hundreds of queued event streams one after another, not one inside another', async () => {
    // Released inside the stream's writeHead, each freed slot ran the next stream's handler
    // inside this one's: 1,000 queued EventSources overflowed the stack, and Node aborted
    // ('async hook stack has become corrupted'), uncatchable.
    const tracker = trackRequests({ concurrencyLimit: 1 });
    const app = express();
    app.use(tracker);
    const order: string[] = [];
    let release: () => void = () => {};
    app.get('/hold', (_req, res) => void (release = () => res.send('ok')));
    app.get('/sse', (_req, res) => {
      order.push('head');
      res.writeHead(200, { 'Content-Type': 'text/event-stream' });
      order.push('head written');
      res.end('data: x\n\n');
    });
    const server = await listen(app);
    try {
      const hold = fire(`${server.url}/hold`);
      await until(() => tracker.snapshot().inFlight === 1);
      const n = 600;
      const streams = Array.from({ length: n }, () =>
        fire(`${server.url}/sse`, { accept: 'text/event-stream' }),
      );
      await until(() => tracker.snapshot().queued === n, 20_000);
      release();
      const replies = await Promise.all(streams.map((s) => s.done));
      expect(replies.filter((r) => r?.status === 200)).toHaveLength(n);
      await hold.done;
      // Each handler finished its writeHead before the next one started.
      expect(order.slice(0, 4)).toEqual(['head', 'head written', 'head', 'head written']);
      await until(() => tracker.snapshot().inFlight === 0);
    } finally {
      tracker.close();
      await server.close();
    }
  }, 60_000);

  it.each([
    ['a nested array', [['Content-Type', 'text/event-stream']]],
    ['an array value', { 'Content-Type': ['text/event-stream'] }],
  ])('frees the slot of a stream whose head was given as %s', async (_what, headers) => {
    const tracker = trackRequests({ concurrencyLimit: 1 });
    const app = express();
    app.use(tracker);
    let end: () => void = () => {};
    app.get('/sse', (_req, res) => {
      res.writeHead(200, headers as never);
      res.write('data: x\n\n');
      end = () => res.end();
    });
    app.get('/json', (_req, res) => void res.json({ ok: true }));
    const server = await listen(app);
    try {
      const s = fire(`${server.url}/sse`, { accept: 'text/event-stream' });
      await until(() => tracker.snapshot().completed === 0 && tracker.snapshot().inFlight === 0);
      // The slot is free while the stream stays open: another request runs at once.
      expect((await fire(`${server.url}/json`).done)?.status).toBe(200);
      end();
      await s.done;
    } finally {
      tracker.close();
      await server.close();
    }
  });

  it('counts an event stream the backend refused and ended as an answer', async () => {
    const tracker = trackRequests();
    const app = express();
    app.use(tracker);
    app.get('/sse', (_req, res) => {
      res.type('text/event-stream').status(503).send('retry: 5000\n\n');
    });
    const server = await listen(app);
    try {
      await fire(`${server.url}/sse`, { accept: 'text/event-stream' }).done;
      await until(() => tracker.snapshot().completed === 1);
      expect(tracker.snapshot()).toMatchObject({ completed: 1, errorRate: 1 });
    } finally {
      tracker.close();
      await server.close();
    }
  });

  it('counts and limits a request that only asks for an event stream and gets JSON', async () => {
    // Any client can send the header: when it alone decided, a JSON route behind a limit
    // of 2 ran 20 such requests at once, none counted.
    const app = await holdApp({ concurrencyLimit: 1 });
    try {
      const a = fire(`${app.server.url}/hold/a`, { accept: 'text/event-stream' });
      await until(() => app.tracker.snapshot().inFlight === 1);
      const b = fire(`${app.server.url}/hold/b`, { accept: 'text/event-stream' });
      await until(() => app.tracker.snapshot().queued === 1);
      expect(app.started).toEqual(['a']);
      app.release('a');
      await a.done;
      await until(() => app.started.includes('b'));
      expect(app.tracker.snapshot()).toMatchObject({ inFlight: 1, queued: 0, completed: 1 });
      app.release('b');
      await b.done;
    } finally {
      await app.close();
    }
  });

  it('counts a request that passes it twice once', async () => {
    const tracker = trackRequests({ concurrencyLimit: 1 });
    const router = express.Router();
    router.use(tracker);
    router.get('/x', (_req, res) => void res.send('ok'));
    const app = express();
    app.use(tracker);
    // An async step between the two (a session lookup).
    app.use((_req, _res, next) => void setImmediate(next));
    app.use(router);
    const server = await listen(app);
    try {
      // Before: queued behind the slot it held itself, until its client left.
      const replies = await Promise.all([1, 2].map(() => fire(`${server.url}/x`).done));
      expect(replies.map((r) => r?.status)).toEqual([200, 200]);
      await until(() => tracker.snapshot().completed === 2);
      expect(tracker.snapshot()).toMatchObject({ inFlight: 0, queued: 0, completed: 2 });
    } finally {
      tracker.close();
      await server.close();
    }
  });

  it('counts a client gone mid-upload as aborted, whatever the error handler writes after', async () => {
    await withTrackedApp(
      (app) => {
        app.post('/upload', express.raw({ type: '*/*', limit: '10mb' }), (_req, res) => {
          res.send('stored');
        });
        // The usual catch-all: body-parser's 'request aborted' lands here, on a closed socket.
        app.use(
          (
            _err: unknown,
            _req: express.Request,
            res: express.Response,
            _next: express.NextFunction,
          ) => void res.status(500).end(),
        );
      },
      async (tracker, server) => {
        const { sock } = rawRequest(
          server,
          'POST /upload HTTP/1.1\r\nHost: a\r\nContent-Type: application/octet-stream\r\nContent-Length: 100000\r\n\r\nabc',
        );
        await until(() => tracker.snapshot().inFlight === 1);
        sock.destroy();
        await until(() => tracker.snapshot().inFlight === 0);
        // Before: a completed 5xx, errorRate 1, aborted 0.
        expect(tracker.snapshot()).toMatchObject({ completed: 1, aborted: 1, errorRate: 0 });
      },
    );
  });

  it('answers 503 to a waiter after queueTimeoutMs', async () => {
    const app = await holdApp({ concurrencyLimit: 1, queueTimeoutMs: 50 });
    try {
      const a = fire(`${app.server.url}/hold/a`);
      await until(() => app.tracker.snapshot().inFlight === 1);
      const b = await fire(`${app.server.url}/hold/b`).done;
      expect(b?.status).toBe(503);
      expect(app.tracker.snapshot()).toMatchObject({ queued: 0, rejected: 1 });
      app.release('a');
      await a.done;
      expect(app.started).toEqual(['a']);
    } finally {
      await app.close();
    }
  });

  it('close() answers every waiter 503', async () => {
    const app = await holdApp({ concurrencyLimit: 1 });
    try {
      const a = fire(`${app.server.url}/hold/a`);
      await until(() => app.tracker.snapshot().inFlight === 1);
      const b = fire(`${app.server.url}/hold/b`);
      await until(() => app.tracker.snapshot().queued === 1);
      app.tracker.close();
      expect((await b.done)?.status).toBe(503);
      app.release('a');
      expect((await a.done)?.status).toBe(200);
    } finally {
      await app.close();
    }
  });

  it('serves its snapshot at exposePath to loopback clients, outside the limit', async () => {
    const app = await holdApp({ concurrencyLimit: 1, exposePath: '/.well-known/loadwise/stats' });
    try {
      const a = fire(`${app.server.url}/hold/a`);
      await until(() => app.tracker.snapshot().inFlight === 1);
      const b = fire(`${app.server.url}/hold/b`);
      await until(() => app.tracker.snapshot().queued === 1);
      const reply = await get(`${app.server.url}/.well-known/loadwise/stats`);
      expect(reply.status).toBe(200);
      expect(reply.headers['content-type']).toBe('application/json');
      expect(JSON.parse(reply.body)).toMatchObject({
        inFlight: 1,
        queued: 1,
        concurrencyLimit: 1,
        completed: 0,
      });
      app.release('a');
      await until(() => app.started.includes('b'));
      app.release('b');
      await Promise.all([a.done, b.done]);
    } finally {
      await app.close();
    }
  });

  const external = Object.values(os.networkInterfaces())
    .flat()
    .find((i) => i && i.family === 'IPv4' && !i.internal)?.address;
  (external ? it : it.skip)('refuses exposePath to a non-loopback client by default', async () => {
    const tracker = trackRequests({ exposePath: '/stats' });
    const app = express();
    app.use(tracker);
    const server = await listen(app, external!);
    try {
      expect((await get(`${server.url}/stats`)).status).toBe(403);
    } finally {
      await server.close();
    }
    const open = trackRequests({ exposePath: '/stats', exposeToRemote: true });
    const app2 = express();
    app2.use(open);
    const server2 = await listen(app2, external!);
    try {
      expect((await get(`${server2.url}/stats`)).status).toBe(200);
    } finally {
      await server2.close();
    }
  });

  it.each([
    [{ concurrencyLimit: 0 }, 'concurrencyLimit'],
    [{ concurrencyLimit: 1.5 }, 'concurrencyLimit'],
    [{ maxQueue: 3 }, 'maxQueue'],
    [{ concurrencyLimit: 1, maxQueue: -1 }, 'maxQueue'],
    [{ windowMs: 150 }, 'windowMs'],
    [{ exposePath: 'stats' }, 'exposePath'],
    [{ bypassPaths: ['healthz'] }, 'bypassPaths'],
    // A timer past 2^31-1 ms fires after 1 ms: every waiter timed out at once.
    [{ concurrencyLimit: 1, queueTimeoutMs: 2 ** 31 }, 'queueTimeoutMs'],
    [{ queueTimeoutMs: 1_000 }, 'queueTimeoutMs'],
    // A misspelt name was no limit at all; a flag as a string was false.
    [{ concurencyLimit: 8 }, 'concurencyLimit (did you mean concurrencyLimit?)'],
    [{ exposeToRemote: 'true' }, 'exposeToRemote'],
    [{ bypassPaths: '/healthz' }, 'bypassPaths'],
    [{ now: 5 }, 'now'],
    [null, 'options'],
  ] as unknown as [TrackRequestsOptions, string][])('rejects %j naming %s', (opts, name) => {
    let err: unknown;
    try {
      trackRequests(opts);
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(AgentError);
    expect((err as AgentError).code).toBe('LW_AGENT_INVALID_OPTION');
    expect((err as AgentError).message).toContain(name);
  });

  it('reports zeros (not NaN) before any request, over a window that grows from creation', () => {
    let t = 1_000;
    const tracker = trackRequests({ now: () => t, windowMs: 10_000 });
    t = 4_000;
    expect(tracker.snapshot()).toMatchObject({
      rps: 0,
      errorRate: 0,
      latencyP99Ms: 0,
      windowMs: 3_000,
    });
    // Later the window slides in 1 s slots: between 9 and 10 s long.
    t = 25_500;
    expect(tracker.snapshot().windowMs).toBe(9_500);
  });
});

describe('trackRequests rise watch (early reports)', () => {
  const STATS = '/.well-known/loadwise/stats';

  it('answers a watch when outstanding rises by `rise` over the lowest figure since `from`', async () => {
    const app = await holdApp({ concurrencyLimit: 2, exposePath: STATS });
    const reqs: InFlightRequest[] = [];
    try {
      reqs.push(fire(`${app.server.url}/hold/a`));
      await until(() => app.tracker.snapshot().inFlight === 1);
      // Last published: 1 outstanding. A rise of 2 means 3 outstanding.
      let answered: TrackerSnapshot | undefined;
      const watch = app.tracker
        .waitForRise({ from: 1, rise: 2, timeoutMs: 60_000 })
        .then((s) => (answered = s));
      // Down to 0 first: the floor follows, so 2 outstanding is already a rise of 2.
      app.release('a');
      await until(() => app.tracker.snapshot().inFlight === 0);
      reqs.push(fire(`${app.server.url}/hold/b`));
      await until(() => app.tracker.snapshot().inFlight === 1);
      expect(answered).toBeUndefined();
      reqs.push(fire(`${app.server.url}/hold/c`));
      await watch;
      expect(answered).toMatchObject({ inFlight: 2, queued: 0, rose: true });
      // A rise that already stands against `from` is answered at once.
      reqs.push(fire(`${app.server.url}/hold/d`));
      await until(() => app.tracker.snapshot().queued === 1);
      expect(await app.tracker.waitForRise({ from: 0, rise: 3, timeoutMs: 60_000 })).toMatchObject({
        inFlight: 2,
        queued: 1,
        rose: true,
      });
      for (const id of ['b', 'c']) app.release(id);
      await until(() => app.started.includes('d'));
      app.release('d');
      await Promise.all(reqs.map((r) => r.done));
    } finally {
      await app.close();
    }
  });

  it('serves the watch as a long poll on exposePath, ended by a rise, an abort or close()', async () => {
    const app = await holdApp({ exposePath: STATS });
    try {
      const poll = fire(`${app.server.url}${STATS}?rise=1&from=0&waitMs=60000`);
      // Held: no answer until a request arrives.
      await until(() => app.started.length === 0);
      const held = fire(`${app.server.url}/hold/x`);
      const reply = await poll.done;
      expect(reply?.status).toBe(200);
      expect(JSON.parse(reply!.body)).toMatchObject({ inFlight: 1, rose: true });
      app.release('x');
      await held.done;

      // A client that goes away ends its watch: close() then has nothing left to answer.
      const gone = fire(`${app.server.url}${STATS}?rise=5&from=0&waitMs=60000`);
      await new Promise((r) => setTimeout(r, 20));
      gone.abort();
      expect(await gone.done).toBeUndefined();

      // close() answers the watches still held, without a rise.
      const last = fire(`${app.server.url}${STATS}?rise=5&from=0&waitMs=60000`);
      await until(() => app.started.length === 1);
      await new Promise((r) => setTimeout(r, 20));
      app.tracker.close();
      const end = await last.done;
      expect(JSON.parse(end!.body)).toMatchObject({ rose: false });
    } finally {
      await app.close();
    }
  });

  it.each([
    'rise=0&from=0&waitMs=10',
    'rise=1&waitMs=10',
    'rise=1&from=0&waitMs=61000',
    'rise=x&from=0&waitMs=1',
  ])('answers 400 to a bad watch query (%s)', async (query) => {
    const app = await holdApp({ exposePath: STATS });
    try {
      expect((await get(`${app.server.url}${STATS}?${query}`)).status).toBe(400);
    } finally {
      await app.close();
    }
  });

  it('refuses a watch past MAX_RISE_WATCHERS, saying why, where it answered `rose: false` unseen', async () => {
    // A local client holding eight long polls answered every agent watch at once as a quiet
    // one: early reports off, and nothing said (a review: 0 early reports against 18).
    const app = await holdApp({ exposePath: STATS });
    const held = Array.from({ length: MAX_RISE_WATCHERS }, () =>
      app.tracker.waitForRise({ from: 0, rise: 1000, timeoutMs: 60_000 }),
    );
    try {
      await expect(app.tracker.waitForRise({ from: 0, rise: 1, timeoutMs: 1000 })).rejects.toThrow(
        /8 early-report watches are held already/,
      );
      const r = await get(`${app.server.url}${STATS}?rise=1&from=0&waitMs=1000`);
      expect(r.status).toBe(429);
      expect(r.body).toMatch(/another client is holding/);
      // The agent's reader says it, in the warning it gives a failed watch.
      const source = httpTrackerSource(new URL(`${app.server.url}${STATS}`), 1000);
      await expect(source.waitForRise!(0, 1, 1000, new AbortController().signal)).rejects.toThrow(
        /tracker endpoint answered 429: its 8 early-report watches are held already/,
      );
      source.close?.();
    } finally {
      await app.close();
      await Promise.all(held);
    }
  });

  it('answers a watch after timeoutMs without a rise (fake time)', async () => {
    jest.useFakeTimers();
    try {
      const tracker = trackRequests({ concurrencyLimit: 2 });
      let answered: TrackerSnapshot | undefined;
      void tracker.waitForRise({ from: 0, rise: 1, timeoutMs: 1000 }).then((s) => (answered = s));
      await jest.advanceTimersByTimeAsync(999);
      expect(answered).toBeUndefined();
      await jest.advanceTimersByTimeAsync(1);
      expect(answered).toMatchObject({ inFlight: 0, rose: false });
    } finally {
      jest.useRealTimers();
    }
  });
});
