/**
 * closeListener (cluster/run-workers.ts): a worker's graceful stop that
 * keeps the open connections and ends each after an answer that says
 * `Connection: close`, at once or spread over `drainMs` (a share of the
 * answers growing from none to all), with the balancer's own drain leaving
 * that decision to it.
 */
import http, { type Server, type ServerResponse } from 'node:http';
import { channel } from 'node:diagnostics_channel';
import { once } from 'node:events';
import { connect, type Socket } from 'node:net';
import { closeListener } from '@loadwise/gateway-plugin';
import { startBackend, type TestServer } from '../kit/http';
import { startLocalGateway } from '../kit/gateway';
import { withinOrFail } from '../kit/agent-http';

interface Answer {
  status: number;
  connection: string | undefined;
}

/** One GET on an open connection, its answer read whole (Content-Length framed). */
function exchange(sock: Socket, path: string): Promise<Answer> {
  return new Promise((resolve, reject) => {
    let raw = Buffer.alloc(0);
    const onData = (d: Buffer): void => {
      raw = Buffer.concat([raw, d]);
      const end = raw.indexOf('\r\n\r\n');
      if (end < 0) return;
      const head = raw.subarray(0, end).toString('latin1');
      const length = Number(/\r\ncontent-length: *(\d+)/i.exec(head)?.[1] ?? 0);
      if (raw.length < end + 4 + length) return;
      sock.off('data', onData);
      sock.off('error', reject);
      resolve({
        status: Number(head.split(' ')[1]),
        connection: /\r\nconnection: *([^\r]+)/i.exec(head)?.[1]?.toLowerCase(),
      });
    };
    sock.on('data', onData);
    sock.once('error', reject);
    sock.write(`GET ${path} HTTP/1.1\r\nHost: t\r\n\r\n`);
  });
}

async function open(port: number): Promise<Socket> {
  const sock = connect(port, '127.0.0.1');
  await once(sock, 'connect');
  return sock;
}

/** A request sent on `sock` whose answer is still to come: what arrives, and its end. */
function send(sock: Socket, path: string): { text: () => string; ended: Promise<unknown> } {
  let text = '';
  const onData = (d: Buffer): void => void (text += d.toString('latin1'));
  sock.on('data', onData);
  const ended = once(sock, 'end').finally(() => sock.off('data', onData));
  sock.write(`GET ${path} HTTP/1.1\r\nHost: t\r\n\r\n`);
  return { text: () => text, ended };
}

/** The Connection header of the answer in `text`. */
function connectionOf(text: string): string | undefined {
  return /\r\nconnection: *([^\r]+)/i.exec(text)?.[1]?.toLowerCase();
}

/** Resolves once `check()` holds, looking again every 5 ms. */
async function until(check: () => boolean): Promise<void> {
  while (!check()) await new Promise((r) => setTimeout(r, 5));
}

describe('closeListener', () => {
  const sockets: Socket[] = [];
  afterEach(() => {
    for (const s of sockets.splice(0)) s.destroy();
  });

  async function plainServer(): Promise<{ server: Server; port: number }> {
    const server = http.createServer((_req, res) => res.end('ok'));
    server.listen(0, '127.0.0.1');
    await once(server, 'listening');
    return { server, port: (server.address() as { port: number }).port };
  }

  it('spreads the connections’ ends over drainMs: none at first, a growing share, then all', async () => {
    const { server, port } = await plainServer();
    for (let i = 0; i < 4; i++) sockets.push(await open(port));
    for (const s of sockets) expect((await exchange(s, '/before')).connection).toBe('keep-alive');
    let t = 1_000;
    let r = 0;
    const closed = closeListener(server, { drainMs: 1_000, now: () => t, random: () => r });
    expect(server.listening).toBe(false);
    // At the start no answer closes, whatever the draw.
    r = 0.001;
    expect((await exchange(sockets[0]!, '/a')).connection).toBe('keep-alive');
    // Half-way, an answer closes with probability one half.
    t = 1_500;
    r = 0.6;
    expect((await exchange(sockets[0]!, '/b')).connection).toBe('keep-alive');
    r = 0.4;
    const ending = once(sockets[0]!, 'end');
    expect((await exchange(sockets[0]!, '/c')).connection).toBe('close');
    await ending;
    // From drainMs on, every answer closes.
    t = 2_000;
    r = 0.99;
    for (const s of sockets.slice(1)) {
      const end = once(s, 'end');
      expect((await exchange(s, '/d')).connection).toBe('close');
      await end;
    }
    // Every connection has ended: the close is over.
    await closed;
  });

  it('closes every connection after its next answer by default, and refuses a bad drainMs', async () => {
    const { server, port } = await plainServer();
    const s = await open(port);
    sockets.push(s);
    expect((await exchange(s, '/before')).connection).toBe('keep-alive');
    expect(() => closeListener(server, { drainMs: -1 })).toThrow(
      expect.objectContaining({ code: 'LW_GW_INVALID_OPTION' }),
    );
    expect(() => closeListener(server, { drainMs: Number.NaN })).toThrow(/drainMs/);
    // Checked before the server stops, not at its first answer (inside the 'request' listener).
    expect(() => closeListener(server, { now: 5 as unknown as () => number })).toThrow(
      expect.objectContaining({
        code: 'LW_GW_INVALID_OPTION',
        message: expect.stringMatching(/now/),
      }),
    );
    expect(() => closeListener(server, { drainMS: 2_000 } as { drainMs?: number })).toThrow(
      /drainMS/,
    );
    expect(server.listening).toBe(true);
    const closed = closeListener(server);
    expect((await exchange(s, '/after')).connection).toBe('close');
    await closed;
  });

  it('decides the answers under way when it is called too: each connection ends after its answer, per the ramp', async () => {
    // The app's own answers: one whose head went out before the call, one whose head is
    // written after it. Before the fix nobody decided them: both said keep-alive and their
    // connections stayed open after them, until keepAliveTimeout (off here) or the end of
    // lb.close()'s grace.
    const held = new Map<string, ServerResponse>();
    const server = http.createServer((req, res) => {
      if (req.url === '/quick') return void res.end('ok');
      if (req.url?.startsWith('/head-first')) res.writeHead(200).write('a');
      held.set(req.url!, res);
    });
    server.keepAliveTimeout = 0;
    server.listen(0, '127.0.0.1');
    await once(server, 'listening');
    const port = (server.address() as { port: number }).port;
    const [early, headFirst, late] = [await open(port), await open(port), await open(port)];
    sockets.push(early, headFirst, late);
    const earlyAnswer = send(early, '/head-first-early');
    const headFirstAnswer = send(headFirst, '/head-first');
    const lateAnswer = send(late, '/late');
    await until(() => held.size === 3 && /\r\n\r\n/.test(headFirstAnswer.text()));
    expect(connectionOf(headFirstAnswer.text())).toBe('keep-alive');

    let t = 0;
    const closed = closeListener(server, { drainMs: 1_000, now: () => t, random: () => 0.5 });
    // Ending at the start of the ramp: kept open, as an answer that came after the call would be.
    held.get('/head-first-early')!.end();
    await until(() => earlyAnswer.text().endsWith('0\r\n\r\n'));
    expect((await exchange(early, '/quick')).connection).toBe('keep-alive');
    // Ending past half the ramp (the draw is 0.5): closed once written, the head that said
    // keep-alive (the app's, before or after the call) notwithstanding.
    t = 600;
    held.get('/head-first')!.end('b');
    held.get('/late')!.end('c');
    await withinOrFail(
      Promise.all([headFirstAnswer.ended, lateAnswer.ended]),
      5_000,
      'both connections end after their answers',
    );
    expect(headFirstAnswer.text()).toMatch(/\r\nb\r\n0\r\n\r\n$/);
    expect(lateAnswer.text()).toMatch(/^HTTP\/1\.1 200 [^]*\r\n\r\nc$/);
    t = 1_000;
    const end = once(early, 'end');
    expect((await exchange(early, '/quick')).connection).toBe('close');
    await end;
    await closed;
    // Closed, it no longer watches the answers' ends.
    expect(channel('http.server.response.finish').hasSubscribers).toBe(false);
  });

  it('answers every pipelined request under way before it closes their connection', async () => {
    // Two requests pipelined on one connection, both handled when closeListener is called:
    // the first answer's end closed the connection, and the second, whose handler had run
    // (behind the balancer, a backend had served it), was never sent.
    const held = new Map<string, ServerResponse>();
    const server = http.createServer((req, res) => void held.set(req.url!, res));
    server.keepAliveTimeout = 0;
    server.listen(0, '127.0.0.1');
    await once(server, 'listening');
    const sock = await open((server.address() as { port: number }).port);
    sockets.push(sock);
    let text = '';
    sock.on('data', (d: Buffer) => void (text += d.toString('latin1')));
    const ended = once(sock, 'end');
    sock.write('GET /1 HTTP/1.1\r\nHost: t\r\n\r\nGET /2 HTTP/1.1\r\nHost: t\r\n\r\n');
    await until(() => held.size === 2);
    const closed = closeListener(server, { drainMs: 0 });
    held.get('/1')!.end('one');
    await new Promise((r) => setImmediate(r));
    held.get('/2')!.end('two');
    await withinOrFail(ended, 5_000, 'the connection ends after both answers');
    expect(text.match(/HTTP\/1\.1 200/g)).toHaveLength(2);
    expect(text).toMatch(/one[^]*two$/);
    await closed;
  });

  describe('with the balancer draining beside it (lb.close)', () => {
    let backend: TestServer;
    beforeAll(async () => {
      backend = await startBackend('ok', (req, res) => res.end(`done ${req.url}`));
    });
    afterAll(() => backend.close());

    it('leaves keep-alive to the gradual drain, then closes', async () => {
      const gw = await startLocalGateway({ backends: [{ id: 'ok', url: backend.url }] });
      try {
        const s = await open(gw.port);
        sockets.push(s);
        expect(await exchange(s, '/first')).toEqual({ status: 200, connection: 'keep-alive' });
        let t = 0;
        const stopped = closeListener(gw.server, {
          drainMs: 1_000,
          now: () => t,
          random: () => 0.5,
        });
        let closed = false;
        const closing = gw.lb.close({ graceMs: 5_000 }).then(() => (closed = true));
        // Draining, the balancer still serves the open connection and keeps it open:
        // before the gradual drain every answer said close.
        expect(await exchange(s, '/early')).toEqual({ status: 200, connection: 'keep-alive' });
        expect(closed).toBe(false);
        t = 1_000;
        const end = once(s, 'end');
        expect(await exchange(s, '/late')).toEqual({ status: 200, connection: 'close' });
        await end;
        await Promise.all([stopped, closing]);
      } finally {
        await gw.close();
      }
    });

    it('closes the connections of the answers under way when it is called: a head still to go says close, one out ends with its answer', async () => {
      // A proxied answer still to come (a slow upload's) and one whose head went out before
      // (a download). Before the fix the balancer left both to closeListener, which decided
      // only the requests that came after it: both said keep-alive and stayed open, and
      // lb.close() waited its whole grace for them.
      const release: (() => void)[] = [];
      const slow = await startBackend('slow', (req, res) => {
        if (req.url === '/download') res.writeHead(200).write('a');
        release.push(() => res.end('b'));
      });
      const gw = await startLocalGateway({ backends: [{ id: 'slow', url: slow.url }] });
      gw.server.keepAliveTimeout = 0;
      try {
        const [upload, download] = [await open(gw.port), await open(gw.port)];
        sockets.push(upload, download);
        const uploadAnswer = send(upload, '/upload');
        const downloadAnswer = send(download, '/download');
        await until(() => release.length === 2 && /\r\n\r\n/.test(downloadAnswer.text()));
        expect(connectionOf(downloadAnswer.text())).toBe('keep-alive');
        const stopped = closeListener(gw.server);
        const closing = gw.lb.close({ graceMs: 60_000 });
        for (const r of release) r();
        await until(() => /\r\n\r\n/.test(uploadAnswer.text()));
        expect(uploadAnswer.text()).toMatch(/^HTTP\/1\.1 200 /);
        expect(connectionOf(uploadAnswer.text())).toBe('close');
        await withinOrFail(
          Promise.all([uploadAnswer.ended, downloadAnswer.ended]),
          5_000,
          'both connections end after their answers',
        );
        expect(downloadAnswer.text()).toMatch(/\r\nb\r\n0\r\n\r\n$/);
        // Not its grace: every connection has ended.
        await Promise.all([stopped, closing]);
      } finally {
        await gw.close();
        await slow.close();
      }
    });

    it('closes the idle connections at the end of the grace, before it answers LW_GW_CLOSED', async () => {
      // A client idle past the grace (keepAliveTimeout 65 s behind an AWS load balancer)
      // sent its next request into the closed balancer and got 503 LW_GW_CLOSED, for a
      // second after the grace, until the leftovers were cut.
      const slow = await startBackend('slow', (req, res) => {
        setTimeout(() => res.end(`done ${req.url}`), 400);
      });
      const gw = await startLocalGateway({ backends: [{ id: 'slow', url: slow.url }] });
      try {
        const idle = await open(gw.port);
        const busy = await open(gw.port);
        sockets.push(idle, busy);
        expect(await exchange(idle, '/first')).toEqual({ status: 200, connection: 'keep-alive' });
        let idleClosed = false;
        idle.once('close', () => (idleClosed = true));
        // A request in flight keeps the grace running to its end.
        const inFlight = exchange(busy, '/slow');
        while (gw.lb.balancer.snapshot().inFlight < 1) await new Promise((r) => setTimeout(r, 5));
        const stopped = closeListener(gw.server);
        await gw.lb.close({ graceMs: 150 });
        expect(idleClosed).toBe(true);
        // The request cut at the grace's end is answered (502: the backend had it, so no
        // invitation to send it again), and its connection closed.
        expect(await inFlight).toEqual({ status: 502, connection: 'close' });
        await stopped;
      } finally {
        await gw.close();
        await slow.close();
      }
    });
  });
});
