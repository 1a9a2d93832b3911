/**
 * examples/gateway-server.ts with LOADWISE_GW_ACCEPT_HANDLES: the process
 * listens on that many descriptors of one socket (multiAccept), proxies, and
 * stops cleanly on SIGTERM; a bad value stops it at start with exit 2.
 */
import { execFileSync } from 'node:child_process';
import { once } from 'node:events';
import { connect } from 'node:net';
import path from 'node:path';
import {
  ManagedChild,
  startBackendProcess,
  waitForListening,
  type StartedBackend,
} from '../../examples/lib/processes';
import { spawnScript } from '../kit/agent-cli';

const GATEWAY_SERVER = path.resolve(__dirname, '../../examples/dist/gateway-server.js');

describe('gateway-server with LOADWISE_GW_ACCEPT_HANDLES', () => {
  let backend: StartedBackend | undefined;
  let gateway: ManagedChild | undefined;
  afterAll(async () => {
    await gateway?.stop('SIGKILL');
    await backend?.process.stop('SIGTERM');
  });

  test('accepts on 4 descriptors of its listen socket, proxies, and stops on SIGTERM', async () => {
    backend = await startBackendProcess({ id: 'api-1' });
    gateway = new ManagedChild('gateway-server', process.execPath, [GATEWAY_SERVER], {
      PATH: process.env.PATH,
      LOADWISE_GW_BACKENDS: `api-1=${backend.url}`,
      LOADWISE_GW_PORT: '0',
      LOADWISE_GW_ACCEPT_HANDLES: '4',
    });
    const port = await waitForListening(gateway, 15_000);
    // ss lists every descriptor a process holds on the socket: fd=N once per handle.
    const line = execFileSync('ss', ['-Hltnp', `sport = :${port}`], { encoding: 'utf8' });
    expect(line.match(new RegExp(`pid=${gateway.pid},fd=\\d+`, 'g'))).toHaveLength(4);

    const answers = await Promise.all(
      Array.from({ length: 20 }, () => fetch(`http://127.0.0.1:${port}/hello`)),
    );
    expect(answers.map((r) => r.status)).toEqual(Array(20).fill(200));
    await Promise.all(answers.map((r) => r.arrayBuffer()));
    expect(await gateway.stop('SIGTERM', 15_000)).toEqual({ code: 0, signal: null });
  }, 40_000);

  test('closes a connection that does not finish its head within 10 s with 408 (slowloris)', async () => {
    backend ??= await startBackendProcess({ id: 'api-1' });
    const slow = new ManagedChild('gateway-server', process.execPath, [GATEWAY_SERVER], {
      PATH: process.env.PATH,
      LOADWISE_GW_BACKENDS: `api-1=${backend.url}`,
      LOADWISE_GW_PORT: '0',
    });
    try {
      const port = await waitForListening(slow, 15_000);
      const socket = connect(port, '127.0.0.1');
      let received = '';
      socket.on('data', (d: Buffer) => (received += d.toString('latin1')));
      socket.on('error', () => undefined);
      socket.write('GET / HTTP/1.1\r\nHost: x\r\n'); // and never the rest
      const startedMs = Date.now();
      // Before: Node's defaults held it 60 s (headersTimeout), checked every 30 s.
      let guard: NodeJS.Timeout | undefined;
      await Promise.race([
        once(socket, 'close'),
        new Promise((_, reject) => {
          guard = setTimeout(() => reject(new Error('still open at 20 s')), 20_000);
        }),
      ]).finally(() => clearTimeout(guard));
      expect(received).toMatch(/^HTTP\/1\.1 408 /);
      expect(Date.now() - startedMs).toBeGreaterThanOrEqual(9_000);
    } finally {
      await slow.stop('SIGKILL');
    }
  }, 45_000);

  test('a value outside 1..64 stops it at start with exit 2, naming the variable', async () => {
    const run = spawnScript(GATEWAY_SERVER, [], {
      LOADWISE_GW_BACKENDS: 'api-1=http://127.0.0.1:9',
      LOADWISE_GW_ACCEPT_HANDLES: '65',
    });
    expect(await run.exited).toBe(2);
    expect(run.stderr()).toMatch(/LOADWISE_GW_ACCEPT_HANDLES: not an integer 1\.\.64 \(got "65"\)/);
  });
});
