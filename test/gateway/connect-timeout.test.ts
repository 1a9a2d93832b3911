/**
 * A host that stops accepting connections (SYNs unanswered): modelled with a
 * child process that listens with a backlog of 1 and then blocks its event
 * loop, and a few raw connections that fill its accept queue. The kernel
 * then leaves new connects hanging, which is what the connect timeout is for:
 * a connection failure, retried on another backend.
 */
import { fork, type ChildProcess } from 'node:child_process';
import { connect, type Socket } from 'node:net';
import { send, startBackend, type TestServer } from '../kit/http';
import { startLocalGateway, type TestGateway } from '../kit/gateway';

const BLOCKED_HOST = `
const net = require('node:net');
const server = net.createServer();
server.listen({ port: 0, host: '127.0.0.1', backlog: 1 }, () => {
  process.send(server.address().port, () => {
    // Sleep without burning CPU: the event loop never accepts again.
    Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 20000);
  });
});
`;

describe('connect timeout', () => {
  let good: TestServer;
  let child: ChildProcess | undefined;
  const fillers: Socket[] = [];
  let gw: TestGateway | undefined;
  beforeAll(async () => {
    good = await startBackend('good');
  });
  afterAll(async () => {
    await gw?.close();
    for (const s of fillers) s.destroy();
    child?.kill('SIGKILL');
    await good.close();
  });

  it('fails a hanging connect after connectTimeoutMs and retries on another backend', async () => {
    child = fork('-e', [BLOCKED_HOST], {
      execArgv: [],
      stdio: ['ignore', 'ignore', 'ignore', 'ipc'],
    });
    const port = await new Promise<number>((resolve) =>
      child!.once('message', (p) => resolve(p as number)),
    );
    // Fill the accept queue; later connects get no answer.
    for (let i = 0; i < 4; i++) fillers.push(connect(port, '127.0.0.1').on('error', () => {}));
    await new Promise((r) => setTimeout(r, 100));

    gw = await startLocalGateway({
      backends: [
        { id: 'blocked', url: `http://127.0.0.1:${port}` },
        { id: 'good', url: good.url },
      ],
      strategy: 'round-robin',
      connectTimeoutMs: 200,
      requestTimeoutMs: 5000,
      outlier: { consecutiveFailures: 100 },
    });
    const started = Date.now();
    const results = [await send(`${gw.url}/a`), await send(`${gw.url}/b`)];
    expect(results.map((r) => r.status)).toEqual([200, 200]);
    expect(results.map((r) => r.json<{ id: string }>().id)).toEqual(['good', 'good']);
    const blocked = gw.lb.balancer.snapshot().backends.find((b) => b.id === 'blocked')!;
    expect(blocked.failuresTotal).toBeGreaterThanOrEqual(1);
    expect(blocked.inFlight).toBe(0);
    // Bounded by the connect timeout, not the 5 s request timeout.
    expect(Date.now() - started).toBeLessThan(4000);
  });
});
