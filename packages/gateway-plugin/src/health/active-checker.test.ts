import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { createEncoder } from '@loadwise/protocol';
import { ActiveChecker } from './active-checker';
import { eligibleIds, fleet, type Fleet } from './test-fleet';

const config = {
  path: '/healthz',
  intervalMs: 1000,
  timeoutMs: 100,
  unhealthyThreshold: 2,
  healthyThreshold: 2,
};

function serve(
  handler: Parameters<typeof createServer>[1],
): Promise<{ url: string; server: Server }> {
  const server = createServer(handler);
  return new Promise((resolve) =>
    server.listen(0, '127.0.0.1', () =>
      resolve({ url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, server }),
    ),
  );
}

describe('ActiveChecker', () => {
  let f: Fleet | undefined;
  afterEach(() => {
    f?.close();
    f = undefined;
    jest.useRealTimers();
  });

  it('checks GET <path> on the backend: < 500 passes; 5xx, refused and timeout fail', async () => {
    const paths: string[] = [];
    const { url, server } = await serve((req, res) => {
      paths.push(req.url ?? '');
      if (req.url === '/base/healthz') res.writeHead(404).end();
      else if (req.url === '/bad/healthz') res.writeHead(503).end();
      // '/hang/healthz' never answers
    });
    f = fleet(['x']);
    const checker = new ActiveChecker(config, f.registry, Date.now, Math.random);
    const run = (target: string): Promise<boolean> => {
      const b = f!.backends[0]!;
      Object.defineProperty(b, 'target', { value: new URL(target) });
      return new Promise((resolve) => checker.check(b, resolve));
    };
    try {
      expect(await run(`${url}/base`)).toBe(true);
      expect(await run(`${url}/bad`)).toBe(false);
      expect(await run(`${url}/hang`)).toBe(false);
      expect(await run('http://127.0.0.1:1')).toBe(false);
      expect(paths).toEqual(['/base/healthz', '/bad/healthz', '/hang/healthz']);
    } finally {
      checker.close();
      server.closeAllConnections();
      await new Promise((r) => server.close(r));
    }
  });

  it('marks down after unhealthyThreshold failures and up after healthyThreshold passes', () => {
    f = fleet(['a', 'b', 'c', 'd']);
    const checker = new ActiveChecker(config, f.registry, Date.now, Math.random);
    const a = f.backends[0]!;
    checker.record(a, false);
    expect(eligibleIds(f.registry)).toContain('a');
    checker.record(a, false);
    expect(eligibleIds(f.registry)).toEqual(['b', 'c', 'd']);
    expect(f.seen).toContainEqual([
      'backend-down',
      { id: 'a', reason: 'active health check failed' },
    ]);
    checker.record(a, true);
    expect(eligibleIds(f.registry)).not.toContain('a');
    checker.record(a, true);
    expect(eligibleIds(f.registry)).toContain('a');
    expect(f.seen).toContainEqual(['backend-up', { id: 'a' }]);
    checker.close();
  });

  it('does not probe a backend whose agent report is fresh, and clears a stale check verdict', () => {
    jest.useFakeTimers({ now: 1_700_000_000_000 });
    f = fleet(['a', 'b', 'c']);
    const checker = new ActiveChecker(
      config,
      f.registry,
      () => Date.now(),
      () => 0.5,
    );
    const a = f.backends[0]!;
    a.checkDown = true;
    f.registry.recompute();
    const m = createEncoder({ backendId: 'a', now: () => Date.now() }).metrics({
      intervalMs: 1000,
      state: 'online',
      host: { cpuUtilization: 0.1, memoryUtilization: 0.1, memoryAvailableBytes: 1 },
      health: { verdict: 'up' },
    });
    f.registry.applyMessage(a, m.message, Date.now());
    const check = jest.spyOn(checker, 'check');
    checker.watch(a);
    jest.advanceTimersByTime(1000);
    expect(check).not.toHaveBeenCalled();
    expect(a.checkDown).toBe(false);
    expect(eligibleIds(f.registry)).toContain('a');
    checker.close();
  });
});
