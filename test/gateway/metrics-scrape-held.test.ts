/**
 * `metricsPath` scrapes whose clients never read. Each one held its render's
 * parts for as long as its connection stayed open, with no bound and no
 * timeout: at 15,000 backends (5.66 MB of text) 20 such scrapers, each
 * arriving after the previous render ended, added +97 MB of heap (+156 MB
 * RSS), 40 added +216 MB, and one was still connected, its render pinned,
 * 40 s later with `requestTimeoutMs: 5000`. Now renders held by scrapes in
 * progress are bounded as the status bodies are (32 MiB: a scrape that would
 * need a new render past it gets 503 with Retry-After), and a scrape whose
 * client takes no byte for `requestTimeoutMs` is cut, its render released,
 * once logged.
 *
 * The registry carries a family of 16.5 MiB of text (more than the kernel
 * buffers of a loopback connection take, so a client that does not read
 * stalls its scrape), so two renders reach the 32 MiB bound.
 */
import type { ServerResponse } from 'node:http';
import { connect, Socket } from 'node:net';
import type { Express } from 'express';
import { Registry } from 'prom-client';
import type { LoadBalanceOptions } from '@loadwise/gateway-plugin';
import { expressGateway, warningLogger } from '../kit/gateway';
import { eventually } from '../kit/fleet';
import { refusedPort, send, type TestServer } from '../kit/http';

/** A label value of 256 KiB: one line of the big family each. */
const VALUE = 'v'.repeat(256 * 1024);
/** Lines of the big family: 16.5 MiB, so two renders hold more than 32 MiB and one less. */
const LINES = 66;

/** A family prom-client formats: LINES lines of 256 KiB. */
function bigFamily(onGet: () => void): Parameters<Registry['registerMetric']>[0] {
  const family = {
    name: 'test_big',
    help: 'a large text',
    type: 'gauge',
    aggregator: 'sum',
    get: () => {
      onGet();
      return Promise.resolve({
        name: 'test_big',
        help: 'a large text',
        type: 'gauge',
        aggregator: 'sum',
        values: Array.from({ length: LINES }, (_, i) => ({
          labels: { i: `${i}`, v: VALUE },
          value: 1,
        })),
      });
    },
    reset() {},
  };
  return family as unknown as Parameters<Registry['registerMetric']>[0];
}

const servers: TestServer[] = [];
const sockets: Socket[] = [];
afterEach(async () => {
  for (const s of sockets.splice(0)) s.destroy();
  for (const s of servers.splice(0).reverse()) await s.close();
});

interface Gateway extends TestServer {
  counts: {
    /** Renders started, and renders gone to their end (the tail family read, last in the registry). */
    started: number;
    ended: number;
    /** Its responses closed (its side of the connection gone). */
    closed: number;
  };
}

async function gateway(
  opts: Partial<LoadBalanceOptions>,
  before?: (app: Express) => void,
): Promise<Gateway> {
  const counts = { started: 0, ended: 0, closed: 0 };
  const registry = new Registry();
  registry.registerMetric(bigFamily(() => counts.started++));
  const gw = await expressGateway(
    `http://127.0.0.1:${await refusedPort()}`,
    {
      metricsPath: '/_lb/metrics',
      metricsRegistry: registry,
      ...opts,
    },
    (app, lb, server) => {
      server.on('request', (_req, res: ServerResponse) => res.once('close', () => counts.closed++));
      before?.(app);
      app.use(lb);
    },
  );
  // After the gateway's own families: the last one a render reads.
  registry.registerMetric({
    name: 'test_tail',
    help: 'read last',
    type: 'gauge',
    aggregator: 'sum',
    get: () => {
      counts.ended++;
      return Promise.resolve({
        name: 'test_tail',
        help: 'read last',
        type: 'gauge',
        aggregator: 'sum',
        values: [{ labels: {}, value: 1 }],
      });
    },
    reset() {},
  } as unknown as Parameters<Registry['registerMetric']>[0]);
  servers.push(gw);
  return { ...gw, counts };
}

/** A scrape whose client never reads, sent once the render before it has ended: a render of its own. */
async function nonReadingScrape(gw: Gateway): Promise<Socket> {
  const before = gw.counts.ended;
  const socket = connect(gw.port, '127.0.0.1');
  sockets.push(socket);
  socket.pause();
  socket.on('error', () => {});
  socket.write('GET /_lb/metrics HTTP/1.1\r\nHost: x\r\n\r\n');
  await eventually(() => gw.counts.ended > before, 10_000, 'its render read to the end');
  // The render ends a few turns after its last family.
  for (let i = 0; i < 5; i++) await new Promise((resolve) => setImmediate(resolve));
  return socket;
}

/** Everything `socket` receives from now until the connection closes. */
function rest(socket: Socket): Promise<Buffer> {
  return new Promise((resolve) => {
    const chunks: Buffer[] = [];
    socket.on('data', (chunk: Buffer) => chunks.push(chunk));
    socket.once('close', () => resolve(Buffer.concat(chunks)));
    socket.resume();
  });
}

describe('metricsPath scrapes whose clients do not read', () => {
  it('refuses a scrape that would need a new render while those held reach the bound, 503 with Retry-After', async () => {
    const gw = await gateway({});
    const a = await nonReadingScrape(gw);
    await nonReadingScrape(gw);
    expect(gw.counts.started).toBe(2);
    // Before: a third render, and a fourth, one for each scrape, each held for good.
    const refused = await send(`${gw.url}/_lb/metrics`);
    expect(refused.status).toBe(503);
    expect(refused.headers['retry-after']).toBe('1');
    expect(refused.headers['cache-control']).toBe('no-store');
    expect(refused.json()).toEqual({ error: 'too many metrics scrapes' });
    expect(gw.counts.started).toBe(2);
    // One of them leaves: its render is released, and a scrape is served again, whole.
    a.destroy();
    let served: Awaited<ReturnType<typeof send>> | undefined;
    await eventually(
      async () => (served = await send(`${gw.url}/_lb/metrics`)).status === 200,
      10_000,
      'a scrape served once a held render was released',
    );
    expect(served!.body.length).toBeGreaterThan(LINES * VALUE.length);
    expect(served!.body).toMatch(/\ntest_tail 1\n$/);
  });

  it('cuts a scrape whose client takes no byte for requestTimeoutMs, releases its render and logs it once', async () => {
    const { logger, warnings } = warningLogger();
    const gw = await gateway({ requestTimeoutMs: 1000, logger });
    const a = await nonReadingScrape(gw);
    const b = await nonReadingScrape(gw);
    // Both cut (before: never, however long), then what each client had been sent before
    // the end of its connection: a chunked body without its last chunk, not a complete one.
    await eventually(() => gw.counts.closed === 2, 10_000, 'both scrapes cut');
    const [textA, textB] = await Promise.all([rest(a), rest(b)]);
    for (const text of [textA, textB]) {
      expect(text.subarray(0, 15).toString()).toBe('HTTP/1.1 200 OK');
      expect(text.length).toBeLessThan(LINES * VALUE.length);
      expect(text.subarray(-5).toString()).not.toBe('0\r\n\r\n');
    }
    // Their renders are released: two would hold the bound, and refuse this one.
    const served = await send(`${gw.url}/_lb/metrics`);
    expect(served.status).toBe(200);
    expect(served.body).toMatch(/\ntest_tail 1\n$/);
    // One line for both (rate-limited).
    const stalled = warnings.filter((w) => w.fields.event === 'metrics-scrape-stalled');
    expect(stalled).toHaveLength(1);
    expect(stalled[0]!.msg).toBe(
      'metrics scrape from 127.0.0.1 took no bytes for 1000 ms; connection cut, its render released',
    );
  });

  it('does not cut a reading client when the loop was busy for longer than requestTimeoutMs', async () => {
    const { logger, warnings } = warningLogger();
    const client = new Socket();
    sockets.push(client);
    let blocked = false;
    const gw = await gateway({ requestTimeoutMs: 400, logger }, (app) =>
      app.use((_req, res, next) => {
        const write = res.write.bind(res) as (chunk: string) => boolean;
        res.write = ((chunk: string) => {
          const ok = write(chunk);
          // The kernel took all it could of a client that had not read yet, and the scrape
          // waits for its socket (the write handed on in the next tick): the client starts
          // to read as the loop is busy for 1 s (a large render, a long GC, a machine short
          // of CPU). The stall check due meanwhile runs before the loop polls any socket
          // (timers first): it found no byte taken since the wait began and cut the
          // client, which was reading all along.
          if (!ok && !blocked) {
            process.nextTick(() => {
              const handle = (res.socket as { _handle?: { writeQueueSize?: number } } | null)
                ?._handle;
              if (blocked || !((handle?.writeQueueSize ?? 0) > 0)) return;
              blocked = true;
              client.resume();
              const until = Date.now() + 1000;
              while (Date.now() < until);
            });
          }
          return ok;
        }) as typeof res.write;
        next();
      }),
    );
    client.pause();
    client.connect(gw.port, '127.0.0.1');
    const received = new Promise<Buffer>((resolve) => {
      const chunks: Buffer[] = [];
      client.on('data', (chunk: Buffer) => {
        chunks.push(chunk);
        // The whole chunked body: the client ends it.
        if (chunk.subarray(-5).toString() === '0\r\n\r\n') client.end();
      });
      client.once('close', () => resolve(Buffer.concat(chunks)));
    });
    client.on('error', () => {});
    client.write('GET /_lb/metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n');
    const text = (await received).toString('latin1');
    expect(blocked).toBe(true);
    expect(text.slice(0, 15)).toBe('HTTP/1.1 200 OK');
    expect(text).toMatch(/\ntest_tail 1\n\r\n0\r\n\r\n$/);
    expect(warnings.filter((w) => w.fields.event === 'metrics-scrape-stalled')).toEqual([]);
  });
});
