import http, { type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { primeBackends } from './prime';

describe('primeBackends', () => {
  const servers: Server[] = [];
  afterAll(async () => {
    await Promise.all(servers.map((s) => new Promise((r) => s.close(r))));
  });

  async function backend(): Promise<{ url: string; hits: () => number; conns: () => number }> {
    let hits = 0;
    let conns = 0;
    const server = http.createServer((_req, res) => {
      hits++;
      res.end('ok');
    });
    server.on('connection', () => conns++);
    servers.push(server);
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    const { port } = server.address() as AddressInfo;
    return { url: `http://127.0.0.1:${port}`, hits: () => hits, conns: () => conns };
  }

  it('sends every backend its requests, some on new connections', async () => {
    const a = await backend();
    const b = await backend();
    const r = await primeBackends([a.url, b.url], { requests: 40, concurrency: 2, freshEvery: 4 });
    expect(r.failed).toBe(0);
    expect([a.hits(), b.hits()]).toEqual([40, 40]);
    expect(r.answered.get(a.url)).toBe(40);
    // 10 fresh connections plus the keep-alive pool's (at most 2).
    expect(a.conns()).toBeGreaterThanOrEqual(10);
    expect(a.conns()).toBeLessThanOrEqual(12);
  });

  it('counts a backend that refuses as failed and still returns', async () => {
    const a = await backend();
    const closed = await backend();
    await new Promise((r) => servers.pop()!.close(r));
    const r = await primeBackends([a.url, closed.url], { requests: 5, concurrency: 1 });
    expect(r.answered.get(a.url)).toBe(5);
    expect(r.answered.has(closed.url)).toBe(false);
    expect(r.failed).toBe(5);
  });
});
