import { readFileSync } from 'node:fs';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import express from 'express';
import { createAgent, trackRequests } from '@loadwise/health-agent';
import { createDecoder, encodeMessage, parseKeyFile, type MetricsReport } from '@loadwise/protocol';

/**
 * The agent's side of the golden fixtures: what a real agent publishes must
 * decode, and must not carry a field the contract (the full metrics fixture)
 * does not know, so agent and gateway cannot drift apart unnoticed.
 */
const FIXTURES = join(__dirname, '..', '..', 'packages', 'protocol', 'fixtures');
const fixture = (name: string): MetricsReport =>
  JSON.parse(readFileSync(join(FIXTURES, name), 'utf8')).expect.message as MetricsReport;
const full = fixture('valid-metrics-full.json');
// A busy host (real CPU at 90%+) makes the verdict degraded, with a reason and its causes:
// fields the degraded fixture pins.
const degraded = fixture('valid-metrics-degraded-draining.json');
const keys = parseKeyFile(readFileSync(join(FIXTURES, 'keys.txt'), 'utf8'));

/** Every leaf's path, an array's entries as `*` (`health.causes.*`). */
function paths(value: unknown, prefix = ''): string[] {
  if (typeof value !== 'object' || value === null) return [prefix];
  return Object.entries(value).flatMap(([k, v]) => {
    const key = Array.isArray(value) ? '*' : k;
    return paths(v, prefix ? `${prefix}.${key}` : key);
  });
}

describe('agent reports against the golden fixtures', () => {
  let server: http.Server;
  const tracker = trackRequests({ concurrencyLimit: 4, bypassPaths: ['/health'] });

  beforeAll(async () => {
    const app = express();
    app.use(tracker);
    app.get('/health', (_req, res) => void res.send('ok'));
    app.get('/work', (_req, res) => void setTimeout(() => res.send('done'), 5));
    server = http.createServer(app);
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    const { port } = server.address() as AddressInfo;
    // Real traffic so the report carries traffic figures, not just zeros.
    for (let i = 0; i < 5; i++) {
      await new Promise<void>((resolve, reject) =>
        http
          .get(`http://127.0.0.1:${port}/work`, (res) => res.resume().on('end', resolve))
          .on('error', reject),
      );
    }
  });

  afterAll(async () => {
    tracker.close();
    server.closeAllConnections();
    await new Promise((resolve) => server.close(resolve));
  });

  it('a real sample decodes, signed, and uses only fields the fixture knows', async () => {
    const { port } = server.address() as AddressInfo;
    const agent = createAgent({
      backendId: 'api-1',
      service: { pid: process.pid },
      queue: { source: 'tracker', tracker },
      probe: { url: `http://127.0.0.1:${port}/health` },
    });
    try {
      const report = await agent.sampleReport();
      expect(report.traffic?.latencyP50Ms).toBeGreaterThan(0);
      expect(report.queue?.source.inFlight).toBe('tracker');
      expect(report.process?.pid).toBe(process.pid);
      expect(report.health.verdict).not.toBe('down');

      const encoded = encodeMessage('loadwise', report, keys[0]);
      const decoded = createDecoder({ keys }).decode(encoded.topic, Buffer.from(encoded.payload));
      expect(decoded).toEqual({ ok: true, message: report, keyId: 'fixture-k1' });

      const known = new Set([...paths(full), ...paths(degraded)]);
      const unknown = paths(report).filter((p) => !known.has(p));
      expect(unknown).toEqual([]);
    } finally {
      await agent.stop();
    }
  });
});
