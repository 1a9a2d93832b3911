/**
 * The fleet kit itself: real backend and agent processes, real signals, real
 * broker. The failure tests rely on every one of these behaviours.
 */
import { startEmbeddedBroker } from '@loadwise/gateway-plugin';
import { uniquePrefix } from './brokers';
import { eventually, startFleet, type Fleet } from './fleet';

let broker: { url: string; close(): Promise<void> };
let fleet: Fleet | undefined;

beforeAll(async () => {
  broker = await startEmbeddedBroker();
});

afterEach(async () => {
  await fleet?.close();
  fleet = undefined;
});

afterAll(async () => {
  await broker.close();
});

it('starts backends on their own ports, each with an agent that reports its tracker figures', async () => {
  fleet = await startFleet({
    brokerUrl: broker.url,
    prefix: uniquePrefix('fleet'),
    backends: [
      { id: 'small', slots: 2, serviceMs: 50 },
      { id: 'big', slots: 8, serviceMs: 10 },
    ],
  });
  expect(new Set(fleet.backends.map((b) => b.port)).size).toBe(2);
  const res = await fetch(`${fleet.get('big').url}/hello`);
  expect(res.headers.get('x-served-by')).toBe('big');
  await fleet.waitForReports(1);

  // Hidden load: 6 requests the backend runs against itself; with 2 slots, 2 run and 4 queue.
  await fleet.get('small').configure({ hiddenInFlight: 6 });
  const monitor = fleet.monitor!;
  await eventually(() => {
    const q = monitor.backends.get('small')?.metrics?.queue;
    return (q?.inFlight ?? 0) === 2 && (q?.queued ?? 0) >= 3;
  });
  expect(monitor.backends.get('small')!.metrics!.concurrencyLimit).toBe(2);
  expect(monitor.backends.get('big')!.metrics!.queue?.queued ?? 0).toBe(0);
  await fleet.get('small').configure({ hiddenInFlight: 0 });
  await eventually(async () => (await fleet!.get('small').stats()).inFlight === 0);
});

it('kills with SIGKILL, restarts on the same port, and pauses with SIGSTOP', async () => {
  fleet = await startFleet({ backends: [{ id: 'a', serviceMs: 1 }] });
  const a = fleet.get('a');
  const exit = await a.kill('SIGKILL');
  expect(exit.signal).toBe('SIGKILL');
  await expect(fetch(`${a.url}/x`)).rejects.toThrow();
  await a.restart();
  expect((await fetch(`${a.url}/x`)).headers.get('x-served-by')).toBe('a');

  a.pause();
  const controller = new AbortController();
  const hung = fetch(`${a.url}/x`, { signal: controller.signal });
  const timer = setTimeout(() => controller.abort(), 500);
  await expect(hung).rejects.toThrow();
  clearTimeout(timer);
  a.resume();
  expect((await fetch(`${a.url}/x`)).status).toBe(200);
});

it('an agent killed with SIGKILL leaves its Last Will; a new one reports again', async () => {
  fleet = await startFleet({
    brokerUrl: broker.url,
    prefix: uniquePrefix('fleet-lwt'),
    backends: [{ id: 'a' }],
  });
  await fleet.waitForReports(1);
  const exit = await fleet.get('a').killAgent('SIGKILL');
  expect(exit?.signal).toBe('SIGKILL');
  const monitor = fleet.monitor!;
  await eventually(() => monitor.backends.get('a')?.state === 'offline');
  expect(monitor.backends.get('a')!.will).toBe(true);
  // The backend itself is untouched.
  expect((await fetch(`${fleet.get('a').url}/x`)).status).toBe(200);
  fleet.get('a').startAgent();
  await fleet.waitForReports(1);
  await eventually(() => monitor.backends.get('a')?.state === 'online');
});

it('close() stops every child, including a paused one', async () => {
  const f = await startFleet({
    brokerUrl: broker.url,
    prefix: uniquePrefix('fleet-close'),
    backends: [{ id: 'a' }, { id: 'b' }],
  });
  f.get('b').pause();
  const children = f.backends.flatMap((b) => [b.process, b.agent!]);
  await f.close();
  expect(children.every((c) => !c.running)).toBe(true);
});
