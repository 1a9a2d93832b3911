import { createServer, type Server, type Socket } from 'node:net';
import type { AddressInfo } from 'node:net';
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
});
