/**
 * A dashboard viewer that stops reading, over a real connection. Its place
 * (one of `maxViewers`) was freed only once 1 MiB of ticks had queued for
 * it beyond what the kernel's buffers took: on a small fleet a tick is about
 * 2 KB a second, so a frozen browser held its place for ten minutes or more,
 * and with `maxViewers` of them every other viewer got 503 meanwhile. Now a
 * viewer with bytes unsent whose socket takes none for `requestTimeoutMs` is
 * cut and logged, as a stalled status or metrics reader is.
 *
 * 150 backends make a tick of about 50 KB (a frame details 100), so the
 * kernel's buffers of a loopback connection fill within seconds.
 */
import { connect, type Socket } from 'node:net';
import { dashboardOf } from '@loadwise/gateway-plugin/internals';
import { expressGateway, warningLogger } from '../kit/gateway';
import { eventually } from '../kit/fleet';
import { type TestServer } from '../kit/http';
import { openSse, type SseStream } from '../kit/sse';

const TOKEN = 'dash-0123456789abcdef';
const EVENTS = `/_lb/dashboard/events?token=${TOKEN}`;

const servers: TestServer[] = [];
const sockets: Socket[] = [];
const streams: SseStream[] = [];
afterEach(async () => {
  for (const s of streams.splice(0)) s.close();
  for (const s of sockets.splice(0)) s.destroy();
  for (const s of servers.splice(0).reverse()) await s.close();
});

async function gateway() {
  const { logger, warnings } = warningLogger();
  const backends = Array.from({ length: 150 }, (_, i) => ({
    id: `b${i}`,
    url: `http://127.0.0.1:${20_000 + i}`,
  }));
  const gw = await expressGateway(backends[0]!.url, {
    backends,
    requestTimeoutMs: 1000,
    dashboard: { token: TOKEN, maxViewers: 1, intervalMs: 250 },
    logger,
  });
  servers.push(gw);
  return { gw, warnings, stream: dashboardOf(gw.lb)!.stream };
}

/**
 * The frozen viewer is cut only once the kernel's buffers of its connection are full (the
 * send buffer autotunes up to net.ipv4.tcp_wmem's 4 MB, the receive side adds its own): at
 * 50 KB a tick every 250 ms, 20 s and more before a byte stays unsent. That is set by the
 * machine's buffer sizes and how many ticks a loaded machine makes a second, not by the
 * gateway: it took 27 s of the default 30 s test timeout on a 2-core machine, so this
 * test waits on the cut itself, with a bound far from it.
 */
const FILL_BOUND_MS = 150_000;

it(
  'cuts a viewer whose socket takes no byte for requestTimeoutMs, frees its place, logs it',
  async () => {
    const { gw, warnings, stream } = await gateway();
    const frozen = connect(gw.port, '127.0.0.1');
    sockets.push(frozen);
    frozen.on('error', () => {});
    frozen.pause();
    frozen.write(`GET ${EVENTS} HTTP/1.1\r\nHost: x\r\n\r\n`);
    await eventually(() => stream.viewerCount === 1, 5000, 'the viewer has its place');
    await eventually(() => stream.viewerCount === 0, FILL_BOUND_MS, 'the frozen viewer cut');
    const stalled = warnings.filter((w) => w.fields.event === 'dashboard-viewer-stalled');
    expect(stalled.map((w) => w.msg)).toEqual([
      'dashboard viewer from 127.0.0.1 took no bytes for 1000 ms; connection cut, its place released',
    ]);
    // Its place is free: the next viewer gets a stream, not 503.
    const next = await openSse(`${gw.url}${EVENTS}`);
    streams.push(next);
    expect(next.status).toBe(200);
  },
  FILL_BOUND_MS + 30_000,
);

it('leaves a viewer that reads, however long it watches', async () => {
  const { gw, warnings, stream } = await gateway();
  const viewer = await openSse(`${gw.url}${EVENTS}`);
  streams.push(viewer);
  await viewer.next('init');
  // Three stall timeouts of ticks, each read.
  for (let i = 0; i < 12; i++) await viewer.next('tick');
  expect(stream.viewerCount).toBe(1);
  expect(warnings.filter((w) => w.fields.event === 'dashboard-viewer-stalled')).toEqual([]);
});
