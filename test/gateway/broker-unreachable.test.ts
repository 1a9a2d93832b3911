/**
 * Saying what is wrong, once: a broker nobody answers on is one log line with
 * its URL and the error, one `broker-unreachable` event, and `ready()`
 * rejects with LW_GW_BROKER_UNREACHABLE after its timeout, while requests
 * keep being routed on local signals. A backend that refuses connections is
 * a log line naming it, its URL, the errno and the attempt, rate-limited.
 */
import { once } from 'node:events';
import { loadBalance, startEmbeddedBroker, type BalancerEvents } from '@loadwise/gateway-plugin';
import { refusedPort, send, startBackend, type TestServer } from '../kit/http';
import { startLocalGateway, type TestGateway } from '../kit/gateway';
import { rawExchange } from '../kit/raw-http';
import { internals } from '@loadwise/gateway-plugin/internals';

/** Lines as a `(msg: string)` logger prints them (the fields object's toString is the sentence). */
function captureLogger(): {
  lines: string[];
  info(m: string): void;
  warn(m: string): void;
  error(m: string): void;
} {
  const lines: string[] = [];
  const line = (level: string) => (m: string | Record<string, unknown>) =>
    void lines.push(`${level} ${String(m)}`);
  return { lines, info: line('info'), warn: line('warn'), error: line('error') };
}

describe('saying what is wrong', () => {
  let a: TestServer;
  beforeAll(async () => {
    a = await startBackend('a');
  });
  afterAll(() => a.close());

  it('an unreachable broker at start: ready() resolves at its timeout with one warning, and routing goes on', async () => {
    // Every recipe awaits ready() before listening: a rejection kept a restarted gateway,
    // or each worker of a pool until the pool gave up, from listening while the broker
    // was down, though the gateway routes on local signals without it.
    const port = await refusedPort();
    const url = `mqtt://127.0.0.1:${port}`;
    const logger = captureLogger();
    const gw = await startLocalGateway({
      backends: [{ id: 'a', url: a.url }],
      broker: { url, reconnectPeriodMs: 50 },
      logger,
    });
    try {
      await gw.lb.ready({ timeoutMs: 300 });
      expect(gw.lb.balancer.brokerConnected).toBe(false);
      const ready = logger.lines.filter((l) => l.includes('ready on local signals'));
      expect(ready).toEqual([
        expect.stringMatching(
          new RegExp(
            `^warn broker ${url.replace(/\./g, '\\.')} not connected and subscribed after 300 ms: .*ECONNREFUSED.*; ready on local signals, still reconnecting$`,
          ),
        ),
      ]);
      expect((await send(`${gw.url}/x`)).status).toBe(200);
    } finally {
      await gw.close();
    }
  });

  it('a readiness probe calling ready() while the broker is unreachable leaves nothing behind', async () => {
    // Each call's handler stayed on the broker's pending promise after its own timeout:
    // about 850 bytes a call, for as long as the broker had never been reached.
    const gw = await startLocalGateway({
      backends: [{ id: 'a', url: a.url }],
      broker: { url: `mqtt://127.0.0.1:${await refusedPort()}`, reconnectPeriodMs: 50 },
    });
    try {
      const calls = Array.from({ length: 200 }, () => gw.lb.ready({ timeoutMs: 1 }));
      expect(internals(gw.lb).readyCallsWaiting).toBe(200);
      await Promise.all(calls);
      expect(internals(gw.lb).readyCallsWaiting).toBe(0);
    } finally {
      await gw.close();
    }
  });

  it('an unreachable broker with requireBroker: one line with URL and error, ready() rejects, routing goes on', async () => {
    const port = await refusedPort();
    const url = `mqtt://alice:S3CRET@127.0.0.1:${port}`;
    // The password never reaches an error or a line: applications log ready()'s error.
    const shown = `mqtt://***@127.0.0.1:${port}`;
    const logger = captureLogger();
    const gw = await startLocalGateway({
      backends: [{ id: 'a', url: a.url }],
      broker: { url, reconnectPeriodMs: 50 },
      logger,
    });
    let broker: Awaited<ReturnType<typeof startEmbeddedBroker>> | undefined;
    try {
      const err = await gw.lb.ready({ timeoutMs: 600, requireBroker: true }).then(
        () => undefined,
        (e: Error & { code?: string }) => e,
      );
      expect(err?.code).toBe('LW_GW_BROKER_UNREACHABLE');
      expect(err?.message).toContain(shown);
      expect(err?.message).not.toContain('S3CRET');
      expect(err?.message).toContain('ECONNREFUSED');
      // Several reconnect attempts failed by now (every 50 ms), still one line.
      const warned = logger.lines.filter((l) => l.includes('unreachable'));
      expect(warned).toEqual([
        expect.stringMatching(
          new RegExp(
            `^warn broker mqtt://\\*\\*\\*@127\\.0\\.0\\.1:${port} unreachable: .*ECONNREFUSED.*; routing on local signals, reconnecting$`,
          ),
        ),
      ]);
      expect((await send(`${gw.url}/x`)).status).toBe(200);

      // The broker comes: connected, and a line says so.
      const connected = once(internals(gw.lb).events, 'broker-connected');
      broker = await startEmbeddedBroker({ port });
      await connected;
      await gw.lb.ready({ timeoutMs: 1000 });
      expect(logger.lines).toContain(`info broker connected (${shown})`);
      expect(logger.lines.join('\n')).not.toContain('S3CRET');
    } finally {
      await gw.close();
      await broker?.close();
    }
  });

  it('ready({ timeoutMs: Infinity }) waits for the broker as long as it takes, until close()', async () => {
    // Node fires a timer past 2^31 - 1 ms after 1 ms: with requireBroker it rejected at once.
    const port = await refusedPort();
    const gw = await startLocalGateway({
      backends: [{ id: 'a', url: a.url }],
      broker: { url: `mqtt://127.0.0.1:${port}`, reconnectPeriodMs: 50 },
      logger: captureLogger(),
    });
    try {
      let settled: unknown = 'pending';
      const ready = gw.lb.ready({ timeoutMs: Infinity, requireBroker: true }).then(
        () => (settled = 'resolved'),
        (err: { code?: string }) => (settled = err.code),
      );
      await new Promise((r) => setTimeout(r, 300));
      expect(settled).toBe('pending');
      void gw.lb.close();
      await ready;
      expect(settled).toBe('LW_GW_CLOSED');
    } finally {
      await gw.close();
    }
  });

  it('emits broker-unreachable with the URL and the error', async () => {
    const url = `mqtt://127.0.0.1:${await refusedPort()}`;
    const lb = loadBalance({
      backends: [{ id: 'a', url: a.url }],
      broker: { url, reconnectPeriodMs: 50 },
      logger: captureLogger(),
      // These tests read every log line: the warm-up's would be one more.
      warmUp: false,
    });
    // Attached in the same tick as the constructor: before any connection attempt ends.
    const unreachable = once(internals(lb).events, 'broker-unreachable');
    try {
      const [e] = (await unreachable) as BalancerEvents['broker-unreachable'];
      expect(e.url).toBe(url);
      expect(e.error).toMatch(/ECONNREFUSED/);
    } finally {
      await lb.close();
    }
  });

  it('a broker that speaks only MQTT 3.1.1 (aedes): connected, with no unreachable line or event', async () => {
    // The gateway asks for MQTT 5 first and retries at once with 3.1.1 when the
    // CONNACK refuses the version: a negotiation, not an outage. Every quick
    // start (an aedes broker given by URL) used to begin with a false
    // "unreachable: Connection refused: Unacceptable protocol version".
    const broker = await startEmbeddedBroker();
    const logger = captureLogger();
    const lb = loadBalance({
      backends: [{ id: 'a', url: a.url }],
      broker: broker.url,
      logger,
      warmUp: false,
      // Every log line is checked: an event-loop stall of the test process must not add one.
      overload: false,
    });
    const unreachable: unknown[] = [];
    lb.balancer.on('broker-unreachable', (e) => unreachable.push(e));
    try {
      await lb.ready({ timeoutMs: 5000 });
      expect(lb.balancer.brokerConnected).toBe(true);
      expect(unreachable).toEqual([]);
      expect(logger.lines).toEqual([`info broker connected (${broker.url})`]);
    } finally {
      await lb.close();
      await broker.close();
    }
  });

  /** A gateway whose only backend refuses connections, its log captured; closed after `use`. */
  async function withRefusedBackend(
    use: (gw: TestGateway, dead: string, logger: ReturnType<typeof captureLogger>) => Promise<void>,
  ): Promise<void> {
    const dead = `http://127.0.0.1:${await refusedPort()}/`;
    const logger = captureLogger();
    const gw = await startLocalGateway({ backends: [{ id: 'dead', url: dead }], logger });
    try {
      await use(gw, dead, logger);
    } finally {
      await gw.close();
    }
  }

  it('a refused backend: a line naming it, its URL, the errno and the attempt, rate-limited', () =>
    withRefusedBackend(async (gw, dead, logger) => {
      for (let i = 0; i < 5; i++) {
        const r = await send(`${gw.url}/x${i}`);
        // A GET no backend could take: 503 + Retry-After (docs/gateway.md, failure semantics).
        expect(r.status).toBe(503);
      }
      const lines = logger.lines.filter((l) => l.includes('ECONNREFUSED'));
      expect(lines).toEqual([
        `warn attempt 1 of GET /x0 to dead (${dead}) failed: ECONNREFUSED; no backend left to try, answered LW_GW_NO_BACKEND`,
      ]);
      // Nothing was retried: there was no other backend (it used to count five retries, and
      // spend five of the retry budget's).
      const spent = (internals(gw.lb).budget as unknown as { retries: Float64Array }).retries;
      expect(spent.reduce((a, b) => a + b, 0)).toBe(0);
      const text = await gw.lb.balancer.metricsRegistry.metrics();
      expect(text).not.toMatch(/^loadwise_retries_total\{[^}]*backend="dead"[^}]*\} [1-9]/m);
      expect(text).toMatch(/^loadwise_shed_total\{[^}]*reason="no-backend"[^}]*\} 5$/m);
      // Its fields for a JSON logger: the structured-warnings test below.
    }));

  it('a POST to a refused backend: 503 LW_GW_NO_BACKEND (it reached none) and a line saying so', () =>
    withRefusedBackend(async (gw, dead, logger) => {
      const r = await send(`${gw.url}/orders`, { method: 'POST', body: '{"n":1}' });
      expect([r.status, r.headers['x-loadwise-error']]).toEqual([503, 'LW_GW_NO_BACKEND']);
      expect(logger.lines.filter((l) => l.includes('ECONNREFUSED'))).toEqual([
        `warn attempt 1 of POST /orders to dead (${dead}) failed: ECONNREFUSED; no backend left to try, answered LW_GW_NO_BACKEND`,
      ]);
    }));

  it('request-path warnings are structured too: event first, then what explains it', async () => {
    const dead = `http://127.0.0.1:${await refusedPort()}/`;
    const lines: { fields: Record<string, unknown>; msg: string | undefined }[] = [];
    const record = (obj: object | string, msg?: string): void =>
      void lines.push(
        typeof obj === 'string' ? { fields: {}, msg: obj } : { fields: { ...obj }, msg },
      );
    const gw = await startLocalGateway({
      backends: [{ id: 'dead', url: dead }],
      logger: { info: record, warn: record, error: record },
    });
    try {
      expect((await send(`${gw.url}/x?token=S3CRET`)).status).toBe(503);
      // The query is left out of the line: it may carry a credential (a dashboard token).
      const r = await rawExchange(gw.port, 'GET /a/../b?token=S3CRET HTTP/1.1\r\nHost: a\r\n\r\n', {
        responses: 1,
      });
      expect(r.responses[0]?.status).toBe(400);
      expect(lines).toEqual([
        {
          fields: {
            event: 'upstream-failed',
            backend: 'dead',
            url: dead,
            error: 'ECONNREFUSED',
            attempt: 1,
            method: 'GET',
            path: '/x?...',
            outcome: 'LW_GW_NO_BACKEND',
          },
          msg: `attempt 1 of GET /x?... to dead (${dead}) failed: ECONNREFUSED; no backend left to try, answered LW_GW_NO_BACKEND`,
        },
        {
          fields: { event: 'request-refused', code: 'LW_GW_BAD_PATH' },
          msg: 'request refused (LW_GW_BAD_PATH): dot-segment in the path; GET /a/../b?... from 127.0.0.1',
        },
      ]);
    } finally {
      await gw.close();
    }
  });
});
