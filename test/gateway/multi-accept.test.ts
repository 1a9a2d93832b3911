/**
 * multiAccept (cluster/multi-accept.ts): copies of a server's listen socket
 * from a helper process, so one event-loop turn accepts up to `handles`
 * connections instead of Node 20's one, every connection served as the
 * server's own, and all of them closed with it.
 */
import { execFileSync, spawn } from 'node:child_process';
import { once } from 'node:events';
import http, { type Server } from 'node:http';
import { connect, type Socket } from 'node:net';
import path from 'node:path';
import { closeListener, multiAccept } from '@loadwise/gateway-plugin';

/** The built package (`npm test` builds first), for a process of its own. */
const GATEWAY_DIST = path.resolve(__dirname, '../../packages/gateway-plugin/dist');

async function listen(backlog = 511): Promise<{ server: Server; port: number }> {
  const server = http.createServer((_req, res) => res.end('ok'));
  server.keepAliveTimeout = 60_000;
  server.listen({ port: 0, host: '127.0.0.1', backlog });
  await once(server, 'listening');
  return { server, port: (server.address() as { port: number }).port };
}

/** Connections accepted per event-loop turn, counted from one setImmediate to the next. */
function countTurns(server: Server): { max(): number; stop(): void } {
  let thisTurn = 0;
  let most = 0;
  let stopped = false;
  server.on('connection', () => thisTurn++);
  const turn = (): void => {
    most = Math.max(most, thisTurn);
    thisTurn = 0;
    if (!stopped) setImmediate(turn);
  };
  setImmediate(turn);
  return { max: () => Math.max(most, thisTurn), stop: () => (stopped = true) };
}

/**
 * `n` connections that complete their handshakes while this process's loop
 * is blocked, so they wait in the kernel's accept queue together; then the
 * loop runs until the server has accepted them all.
 */
async function queueConnections(server: Server, port: number, n: number): Promise<Socket[]> {
  const sockets = Array.from({ length: n }, () => connect(port, '127.0.0.1'));
  // Listened for now: a handshake may complete within the next turn already.
  const connected = Promise.all(sockets.map((s) => once(s, 'connect')));
  // net.connect starts the handshake on the next tick; let every one start.
  await new Promise((resolve) => setImmediate(resolve));
  const until = Date.now() + 100;
  while (Date.now() < until); // the kernel completes the handshakes meanwhile
  await connected;
  for (;;) {
    if ((await count(server)) >= n) return sockets;
    await new Promise((resolve) => setImmediate(resolve));
  }
}

function count(server: Server): Promise<number> {
  return new Promise((resolve, reject) =>
    server.getConnections((err, n) => (err ? reject(err) : resolve(n))),
  );
}

function get(sock: Socket, path = '/'): Promise<string> {
  return new Promise((resolve, reject) => {
    let raw = '';
    const onData = (d: Buffer): void => {
      raw += d.toString('latin1');
      if (!raw.endsWith('ok')) return;
      sock.off('data', onData);
      resolve(raw.split('\r\n')[0]!);
    };
    sock.on('data', onData);
    sock.once('error', reject);
    sock.write(`GET ${path} HTTP/1.1\r\nHost: t\r\n\r\n`);
  });
}

function refused(port: number): Promise<string> {
  return new Promise((resolve) => {
    const sock = connect(port, '127.0.0.1');
    sock.once('connect', () => {
      sock.destroy();
      resolve('connected');
    });
    sock.once('error', (e: NodeJS.ErrnoException) => resolve(e.code ?? String(e)));
  });
}

describe('multiAccept', () => {
  const sockets: Socket[] = [];
  const servers: Server[] = [];
  afterEach(async () => {
    for (const s of sockets.splice(0)) s.destroy();
    for (const server of servers.splice(0)) {
      if (server.listening) server.close();
      server.closeAllConnections();
    }
  });

  test('a turn accepts up to `handles` connections, and one without it', async () => {
    const plain = await listen();
    const copied = await listen();
    servers.push(plain.server, copied.server);
    await multiAccept(copied.server, { handles: 4 });

    const plainTurns = countTurns(plain.server);
    sockets.push(...(await queueConnections(plain.server, plain.port, 12)));
    plainTurns.stop();
    const copiedTurns = countTurns(copied.server);
    sockets.push(...(await queueConnections(copied.server, copied.port, 12)));
    copiedTurns.stop();

    expect(plainTurns.max()).toBe(1);
    expect(copiedTurns.max()).toBe(4);
  });

  test("connections a copy accepts are the server's own: served, counted, closed with it", async () => {
    // '/hold' answers when the test says so: requests in flight while the server closes.
    const held: Array<() => void> = [];
    const server = http.createServer((req, res) => {
      if (req.url === '/hold') held.push(() => res.end('ok'));
      else res.end('ok');
    });
    servers.push(server);
    server.listen({ port: 0, host: '127.0.0.1' });
    await once(server, 'listening');
    const port = (server.address() as { port: number }).port;
    await multiAccept(server, { handles: 3 });
    // 9 at once, 3 a turn: the copies accept 6 of them (the first test).
    const conns = await queueConnections(server, port, 9);
    sockets.push(...conns);
    const ok = Array(9).fill('HTTP/1.1 200 OK');
    expect(await Promise.all(conns.map((s) => get(s, '/')))).toEqual(ok);
    expect(await count(server)).toBe(9);

    // close() stops every copy: the port refuses at once, while 'close' waits for
    // every connection with a request in flight, those the copies accepted too.
    const answers = Promise.all(conns.map((s) => get(s, '/hold')));
    while (held.length < 9) await new Promise((resolve) => setImmediate(resolve));
    let closed = false;
    const closing = new Promise<void>((resolve) =>
      server.close(() => {
        closed = true;
        resolve();
      }),
    );
    expect(await refused(port)).toBe('ECONNREFUSED');
    expect(closed).toBe(false);
    expect(await count(server)).toBe(9);
    for (const answer of held) answer();
    expect(await answers).toEqual(ok);
    for (const s of conns) s.destroy();
    await closing;
    expect(await count(server)).toBe(0);
  });

  test('closeListener stops the copies too', async () => {
    const { server, port } = await listen();
    servers.push(server);
    await multiAccept(server, { handles: 2 });
    await closeListener(server);
    expect(await refused(port)).toBe('ECONNREFUSED');
  });

  test("an unref'd server's copies do not keep the process alive", async () => {
    // In a process of its own: it must end by itself once the server is unref'd.
    const script = `
      const http = require('node:http');
      const { multiAccept } = require(${JSON.stringify(GATEWAY_DIST)});
      const server = http.createServer().listen(0, '127.0.0.1', async () => {
        await multiAccept(server, { handles: 3 });
        server.unref();
        process.stdout.write('unref');
      });`;
    const child = spawn(process.execPath, ['-e', script], { stdio: ['ignore', 'pipe', 'inherit'] });
    let out = '';
    child.stdout.setEncoding('utf8').on('data', (c: string) => (out += c));
    // A bound, not a timing check: without it a child that never ends would outlive jest.
    const guard = setTimeout(() => child.kill('SIGKILL'), 15_000);
    const [code] = (await once(child, 'exit')) as [number | null];
    clearTimeout(guard);
    expect({ code, out }).toEqual({ code: 0, out: 'unref' });
  });

  test("the copies keep the server's backlog", async () => {
    const { server, port } = await listen(2048);
    servers.push(server);
    await multiAccept(server, { handles: 2, backlog: 2048 });
    // A listening socket's Send-Q in ss is its backlog.
    const line = execFileSync('ss', ['-Hltn', `sport = :${port}`], { encoding: 'utf8' }).trim();
    expect(line.split(/\s+/)[2]).toBe('2048');
  });

  test('bad options and a server not listening get a clear error', async () => {
    const { server } = await listen();
    servers.push(server);
    for (const handles of [0, 65, 2.5, NaN]) {
      await expect(multiAccept(server, { handles })).rejects.toMatchObject({
        code: 'LW_GW_INVALID_OPTION',
      });
    }
    await expect(multiAccept(server, { handles: 2, backlog: 0 })).rejects.toMatchObject({
      code: 'LW_GW_INVALID_OPTION',
    });
    // A typo must not fall back to the default backlog (which would shrink the server's).
    const typo = { handles: 2, backlogg: 4096 } as unknown as { handles: number };
    await expect(multiAccept(server, typo)).rejects.toMatchObject({
      code: 'LW_GW_INVALID_OPTION',
      message: expect.stringMatching(/backlogg/),
    });
    await expect(multiAccept(server, {} as { handles: number })).rejects.toMatchObject({
      code: 'LW_GW_INVALID_OPTION',
    });
    const idle = http.createServer();
    await expect(multiAccept(idle, { handles: 2 })).rejects.toThrow(/must be listening/);
    await multiAccept(server, { handles: 2 });
    await expect(multiAccept(server, { handles: 2 })).rejects.toThrow(/already called/);
  });
});
