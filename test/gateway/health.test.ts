/**
 * Health from the gateway's side, end to end: active checks take a backend
 * that fails them out of rotation (only while it has no fresh agent report),
 * and passive outlier detection ejects a backend that keeps failing requests.
 */
import { once } from 'node:events';
import { Registry } from 'prom-client';
import { refusedPort, send, startBackend, type TestServer } from '../kit/http';
import { startLocalGateway, type TestGateway } from '../kit/gateway';
import { internals } from '@loadwise/gateway-plugin/internals';

describe('gateway health', () => {
  let a: TestServer;
  let sick: TestServer;
  let gw: TestGateway | undefined;
  beforeAll(async () => {
    a = await startBackend('a');
    sick = await startBackend('sick', (req, res) => {
      res.statusCode = req.url === '/healthz' ? 503 : 500;
      res.end(JSON.stringify({ id: 'sick' }));
    });
  });
  afterEach(async () => {
    await gw?.close();
    gw = undefined;
  });
  afterAll(async () => {
    await a.close();
    await sick.close();
  });

  const backends = () => [
    { id: 'a', url: a.url },
    { id: 'sick', url: sick.url },
  ];

  it('active checks take a failing backend out of rotation', async () => {
    gw = await startLocalGateway({
      backends: backends(),
      strategy: 'round-robin',
      healthCheck: { path: '/healthz', intervalMs: 20, unhealthyThreshold: 2 },
      outlier: { consecutiveFailures: 1000 },
    });
    const down = once(internals(gw.lb).events, 'backend-down');
    // Why, in its reason: before, a refused port, a name that did not resolve and a 5xx
    // all read "active health check failed".
    expect(await down).toEqual([{ id: 'sick', reason: 'active health check failed (HTTP 503)' }]);
    for (let i = 0; i < 4; i++)
      expect((await send(`${gw.url}/`)).json<{ id: string }>().id).toBe('a');
    expect(gw.lb.balancer.snapshot().backends[1]).toMatchObject({
      state: 'down',
      stateReason: 'active health check failed (HTTP 503)',
    });
  });

  it('checks with healthCheck.host for a backend that routes by Host', async () => {
    // As a virtual-host proxy's default server: 503 for any Host but the service's.
    const hosts: string[] = [];
    const vhost = await startBackend('vhost', (req, res) => {
      hosts.push(`${req.url} ${req.headers.host}`);
      res.statusCode = req.headers.host === 'api.example.com' ? 200 : 503;
      res.end(JSON.stringify({ id: 'vhost' }));
    });
    try {
      gw = await startLocalGateway({
        backends: [{ id: 'vhost', url: vhost.url }],
        healthCheck: { path: '/healthz', host: 'api.example.com', intervalMs: 20 },
      });
      while (hosts.filter((h) => h.startsWith('/healthz')).length < 3)
        await new Promise((r) => setTimeout(r, 10));
      // Before: each check went with the backend's own address, and the backend was down
      // while every request (with the client's Host) was served.
      expect(new Set(hosts.filter((h) => h.startsWith('/healthz')))).toEqual(
        new Set(['/healthz api.example.com']),
      );
      expect(gw.lb.balancer.snapshot().backends[0]?.state).toBe('healthy');
    } finally {
      await vhost.close();
    }
  });

  it("says why a check failed: a refused port's error code", async () => {
    gw = await startLocalGateway({
      backends: [
        { id: 'a', url: a.url },
        { id: 'gone', url: `http://127.0.0.1:${await refusedPort()}` },
      ],
      healthCheck: { path: '/healthz', intervalMs: 20, unhealthyThreshold: 2 },
      outlier: { consecutiveFailures: 1000 },
      warmUp: false,
    });
    const down = once(internals(gw.lb).events, 'backend-down');
    expect(await down).toEqual([
      { id: 'gone', reason: 'active health check failed (ECONNREFUSED)' },
    ]);
  });

  it('reaches and checks a backend addressed by name (registry/dns-cache.ts)', async () => {
    gw = await startLocalGateway({
      backends: [{ id: 'named', url: a.url.replace('127.0.0.1', 'localhost') }],
      healthCheck: { path: '/healthz', intervalMs: 20, unhealthyThreshold: 1 },
    });
    const checks = internals(gw.lb).registry.get('named')!;
    for (let i = 0; i < 3; i++) expect((await send(`${gw.url}/`)).status).toBe(200);
    await new Promise((r) => setTimeout(r, 200));
    // Checked every 20 ms meanwhile, by name too: still up.
    expect(checks.checkDown).toBe(false);
    expect(gw.lb.balancer.snapshot().backends[0]).toMatchObject({ state: 'healthy' });
  });

  it('passive detection ejects a backend answering 5xx, and counts it', async () => {
    const registry = new Registry(); // the user's own registry
    gw = await startLocalGateway({
      backends: backends(),
      strategy: 'round-robin',
      outlier: { consecutiveFailures: 3, baseEjectionMs: 60_000 },
      metricsPath: '/_lb/metrics',
      metricsRegistry: registry,
    });
    const ejected = once(internals(gw.lb).events, 'backend-ejected');
    const statuses: number[] = [];
    for (let i = 0; i < 6; i++) statuses.push((await send(`${gw.url}/`)).status);
    // 5xx answers are proxied as they are (not retried), and count as failures. Round robin
    // starts at a random backend, so the sick one answers either the odd or the even requests.
    const first = statuses[0] === 500 ? 500 : 200;
    const second = first === 500 ? 200 : 500;
    expect(statuses).toEqual([first, second, first, second, first, second]);
    expect(await ejected).toEqual([{ id: 'sick', durationMs: 60_000, consecutiveFailures: 3 }]);
    for (let i = 0; i < 4; i++) expect((await send(`${gw.url}/`)).status).toBe(200);
    const metrics = (await send(`${gw.url}/_lb/metrics`)).body;
    expect(metrics).toMatch(/loadwise_ejections_total\{backend="sick"\} 1/);
    expect(await registry.metrics()).toMatch(/loadwise_ejections_total\{backend="sick"\} 1/);
    expect(gw.lb.balancer.snapshot().backends[1]).toMatchObject({ state: 'ejected', ejections: 1 });
  });
});
