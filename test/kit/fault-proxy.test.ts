/**
 * The fault proxy does what the chaos scenarios rely on, checked with raw
 * sockets against an echo server: forwarding, delay, reset, black hole,
 * trickle, and a half-open connection that goes silent without FIN or RST.
 */
import { connect, createServer, type AddressInfo, type Server, type Socket } from 'node:net';
import { startFaultProxy, type FaultProxy } from './fault-proxy';

let echo: Server;
let proxy: FaultProxy;
const clients = new Set<Socket>();

beforeAll(async () => {
  echo = createServer((s) => {
    s.on('error', () => undefined);
    s.pipe(s);
  });
  await new Promise<void>((r) => echo.listen(0, '127.0.0.1', r));
  proxy = await startFaultProxy((echo.address() as AddressInfo).port);
});

afterEach(() => {
  for (const c of clients) c.destroy();
  clients.clear();
  proxy.setFault({ kind: 'none' });
});

afterAll(async () => {
  await proxy.close();
  await new Promise<void>((r) => echo.close(() => r()));
});

function open(): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const s = connect(proxy.port, '127.0.0.1', () => resolve(s));
    s.once('error', reject);
    clients.add(s);
  });
}

/** Everything `s` receives (and how) within `ms`. */
function collect(
  s: Socket,
  ms: number,
): Promise<{ data: string; chunks: number; ended: string | undefined }> {
  return new Promise((resolve) => {
    let data = '';
    let chunks = 0;
    let ended: string | undefined;
    s.on('data', (d: Buffer) => {
      data += d.toString();
      chunks++;
    });
    s.once('error', (e: NodeJS.ErrnoException) => (ended = e.code));
    s.once('end', () => (ended ??= 'FIN'));
    setTimeout(() => resolve({ data, chunks, ended }), ms);
  });
}

type Got = { data: string; chunks: number; ended: string | undefined };

/**
 * What `s` receives until `done` holds (or `maxMs`, a bound, not a timing): for what must
 * arrive, a fixed window would fail on a stalled jest worker. What must not arrive is
 * checked with collect() over a window.
 */
function collectUntil(s: Socket, done: (got: Got) => boolean, maxMs = 5_000): Promise<Got> {
  return new Promise((resolve) => {
    const got: Got = { data: '', chunks: 0, ended: undefined };
    const timer = setTimeout(() => resolve(got), maxMs);
    const check = (): void => {
      if (!done(got)) return;
      clearTimeout(timer);
      resolve(got);
    };
    s.on('data', (d: Buffer) => {
      got.data += d.toString();
      got.chunks++;
      check();
    });
    s.once('error', (e: NodeJS.ErrnoException) => {
      got.ended = e.code;
      check();
    });
    s.once('end', () => {
      got.ended ??= 'FIN';
      check();
    });
  });
}

it('forwards both ways with no fault', async () => {
  const s = await open();
  s.write('hello');
  expect((await collectUntil(s, (g) => g.data === 'hello')).data).toBe('hello');
});

it('latency delays every chunk', async () => {
  proxy.setFault({ kind: 'latency', ms: 300 });
  const s = await open();
  s.write('x');
  expect((await collect(s, 150)).data).toBe(''); // not yet: 2 × 300 ms on the way
  expect((await collectUntil(s, (g) => g.data === 'x')).data).toBe('x');
});

it('reset: a new connection is reset, an open one at its next byte', async () => {
  const s = await open();
  proxy.setFault({ kind: 'reset' });
  s.write('x');
  expect((await collectUntil(s, (g) => g.ended !== undefined)).ended).toBe('ECONNRESET');
  const fresh = connect(proxy.port, '127.0.0.1');
  clients.add(fresh);
  expect((await collectUntil(fresh, (g) => g.ended !== undefined)).ended).toBe('ECONNRESET');
});

it('black hole: accepted, never answered, never closed', async () => {
  proxy.setFault({ kind: 'blackhole' });
  const s = await open();
  s.write('anyone?');
  expect(await collect(s, 300)).toEqual({ data: '', chunks: 0, ended: undefined });
});

it('slow body: the answer trickles in small pieces', async () => {
  proxy.setFault({ kind: 'slow-body', bytesPerTick: 2, tickMs: 20 });
  const s = await open();
  s.write('0123456789');
  const got = await collectUntil(s, (g) => g.data.length >= 10 || g.ended !== undefined);
  expect(got.data).toBe('0123456789');
  expect(got.chunks).toBeGreaterThanOrEqual(5);
});

it('half-open: an open connection goes silent and stays open; new ones are black-holed', async () => {
  const s = await open();
  s.write('a');
  expect((await collectUntil(s, (g) => g.data === 'a')).data).toBe('a');
  proxy.setFault({ kind: 'half-open' });
  s.write('b');
  expect(await collect(s, 300)).toEqual({ data: '', chunks: 0, ended: undefined });
  proxy.setFault({ kind: 'none' });
  s.write('c'); // its peer is gone for good
  expect((await collect(s, 200)).data).toBe('');
  const fresh = await open();
  fresh.write('d');
  expect((await collectUntil(fresh, (g) => g.data === 'd')).data).toBe('d');
});
