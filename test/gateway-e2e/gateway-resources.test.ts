/**
 * The gateway out of file descriptors (an idle-connection flood, a low LimitNOFILE) fails
 * to open connections to its backends with EMFILE: its own failure, not theirs. Counted as
 * the backend's connect failures, it ejected a healthy backend for 30 s, past the moment
 * the gateway had descriptors again, and its logs blamed the backend. A real process
 * under `prlimit --nofile`, a real backend that closes every connection (so each request
 * needs a new descriptor).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { Agent, request } from 'node:http';
import path from 'node:path';
import { createInterface } from 'node:readline';
import { startBackend, type TestServer } from '../kit/http';
import { eventually } from '../kit/fleet';

const SCRIPT = path.join(__dirname, 'gateway-resources-child.js');

describe('a gateway out of file descriptors', () => {
  let backend: TestServer;
  let child: ChildProcess | undefined;
  const agent = new Agent({ keepAlive: true, maxSockets: 1 });
  beforeAll(async () => {
    backend = await startBackend('b', (_req, res) => {
      res.setHeader('connection', 'close');
      res.end('ok');
    });
  });
  afterAll(async () => {
    agent.destroy();
    child?.kill('SIGKILL');
    await backend.close();
  });

  it('answers 503 LW_GW_OVERLOADED and does not eject the backend for it', async () => {
    child = spawn('prlimit', ['--nofile=200:200', process.execPath, SCRIPT, backend.url], {
      stdio: ['pipe', 'pipe', 'inherit'],
    });
    const events: Array<{ event: string; port?: number; name?: string }> = [];
    createInterface({ input: child.stdout! }).on('line', (l) => events.push(JSON.parse(l)));
    await eventually(() => events.some((e) => e.event === 'listening'), 10_000);
    const port = events.find((e) => e.event === 'listening')!.port!;
    // One keep-alive connection, opened while there are descriptors: the client's.
    const get = (): Promise<{ status: number; code?: string }> =>
      new Promise((resolve, reject) => {
        const r = request({ host: '127.0.0.1', port, path: '/', agent }, (res) => {
          res.resume();
          res.on('end', () =>
            resolve({ status: res.statusCode!, code: res.headers['x-loadwise-error'] as string }),
          );
        });
        r.on('error', reject);
        r.end();
      });
    expect((await get()).status).toBe(200);
    child.stdin!.write('exhaust\n');
    await eventually(() => events.some((e) => e.event === 'exhausted'), 5_000);
    const during = [];
    for (let i = 0; i < 8; i++) during.push(await get());
    // Before: 502 LW_GW_UPSTREAM_FAILED, the backend ejected after five.
    expect(during).toEqual(Array(8).fill({ status: 503, code: 'LW_GW_OVERLOADED' }));
    child.stdin!.write('free\n');
    await eventually(() => events.some((e) => e.event === 'freed'), 5_000);
    expect((await get()).status).toBe(200);
    expect(events.filter((e) => e.event === 'balancer')).toEqual([]);
    const exited = new Promise((resolve) => child!.once('exit', resolve));
    child.stdin!.write('stop\n');
    await exited;
  });
});
