/**
 * The gateway's own event loop standing still (a GC pause, a long synchronous
 * task, the process stopped or descheduled) is not its backends' latency. A
 * 2 s stall read as 1.8 s on each backend with a request in flight; backends
 * that had none kept their figure and took all the traffic for 11 s, and the
 * status said 1.8 s for backends serving in 10 ms. The backend here runs in
 * its own process, so only the gateway stalls.
 */
import { startBackendProcess, type StartedBackend } from '../../examples/lib/processes';
import { send } from '../kit/http';
import { startLocalGateway, type TestGateway } from '../kit/gateway';

let backend: StartedBackend | undefined;
let slow: StartedBackend | undefined;
let gw: TestGateway | undefined;

afterAll(async () => {
  await gw?.close();
  await backend?.process.stop('SIGTERM');
  await slow?.process.stop('SIGTERM');
});

/** Blocks this process's event loop for `ms` (a stand-in for a GC pause or SIGSTOP). */
function stall(ms: number): void {
  const until = performance.now() + ms;
  while (performance.now() < until) {
    // spin
  }
}

it("does not take a stall of the gateway's loop as its backend's latency", async () => {
  backend = await startBackendProcess({ id: 'far', slots: 8, serviceMs: 20 });
  gw = await startLocalGateway({ backends: [{ id: 'far', url: backend.url }] });
  const latency = (): number => gw!.snapshot().backends[0]!.latencyMs ?? NaN;
  for (let i = 0; i < 20; i++) expect((await send(`${gw.url}/warm`)).status).toBe(200);
  expect(latency()).toBeLessThan(200);
  // Four requests in flight, then the loop stands still for 800 ms while the backend
  // answers them (20 ms each).
  const inFlight = Array.from({ length: 4 }, () => send(`${gw!.url}/during`));
  const deadline = performance.now() + 5_000;
  while (gw.snapshot().backends[0]!.inFlight < 4 && performance.now() < deadline)
    await new Promise((r) => setImmediate(r));
  expect(gw.snapshot().backends[0]!.inFlight).toBe(4);
  stall(800);
  for (const r of await Promise.all(inFlight)) expect(r.status).toBe(200);
  // Before: about 800 ms.
  expect(latency()).toBeLessThan(200);
});

it('leaves a slow answer its time when a stall in the middle of its wait delayed nothing', async () => {
  slow = await startBackendProcess({ id: 'slow', slots: 8, serviceMs: 1000 });
  const g = await startLocalGateway({ backends: [{ id: 'slow', url: slow.url }] });
  try {
    const answer = send(`${g.url}/slow`);
    const deadline = performance.now() + 5_000;
    while (g.snapshot().backends[0]!.inFlight < 1 && performance.now() < deadline)
      await new Promise((r) => setImmediate(r));
    await new Promise((r) => setTimeout(r, 200));
    stall(300);
    expect((await answer).status).toBe(200);
    // Its 1 s, not 0.7 s: every stall within the attempt was taken out before.
    expect(g.snapshot().backends[0]!.latencyMs).toBeGreaterThan(900);
  } finally {
    await g.close();
  }
});
