import { createServer, type Server, type Socket } from 'node:net';
import type { AddressInfo } from 'node:net';
import { listen } from '../../../test/kit/agent-http';
import { createAgent } from './agent';
import { probe } from './probe';

/** A raw TCP "app" that answers every request with `head` (its own bytes, so any status line goes). */
async function rawApp(head: string): Promise<{ url: string; close(): Promise<void> }> {
  const sockets = new Set<Socket>();
  const server: Server = createServer((s) => {
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
    s.on('error', () => undefined);
    s.once('data', () => s.end(head));
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}/healthz`,
    close: () =>
      new Promise<void>((r) => {
        for (const s of sockets) s.destroy();
        server.close(() => r());
      }),
  };
}

describe('probe', () => {
  it('fails, naming it, on a status outside 100..599, and the report stays encodable (down)', async () => {
    const app = await rawApp('HTTP/1.1 999 X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n');
    try {
      const agent = createAgent({
        backendId: 'probe-999',
        probe: { url: app.url },
        cgroup: false,
      });
      const report = await agent.sampleReport();
      expect(report.health.verdict).toBe('down');
      expect(report.health.reason).toContain('invalid status 999');
      expect(report.health.probeStatus).toBeUndefined();

      const result = await probe({ url: new URL(app.url), timeoutMs: 1000 });
      expect(result).toMatchObject({ ok: false, reason: 'probe answered an invalid status 999' });
      expect(result.status).toBeUndefined();
    } finally {
      await app.close();
    }
  });

  it('decides on the head: a 100 KB health page is ok, not a failure', async () => {
    const page = 'x'.repeat(100 * 1024);
    const app = await listen((_req, res) => {
      res.setHeader('Content-Type', 'text/plain');
      res.end(page);
    });
    try {
      expect(await probe({ url: new URL(`${app.url}/healthz`), timeoutMs: 1000 })).toMatchObject({
        ok: true,
        status: 200,
      });
    } finally {
      await app.close();
    }
  });

  it('decides on the head: an endless body is ok, answered well within the timeout', async () => {
    const app = await listen((_req, res) => {
      res.writeHead(200, { 'Content-Type': 'text/plain' });
      const chunk = Buffer.alloc(16 * 1024, 'y');
      const pump = (): void => {
        while (!res.destroyed && res.write(chunk));
      };
      res.on('drain', pump);
      pump();
    });
    try {
      const result = await probe({ url: new URL(`${app.url}/healthz`), timeoutMs: 2000 });
      expect(result).toMatchObject({ ok: true, status: 200 });
      expect(result.latencyMs).toBeLessThan(2000);
    } finally {
      await app.close();
    }
  });
});
