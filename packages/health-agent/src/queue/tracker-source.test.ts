import { fire, listen, until, type Listening } from '../../../../test/kit/agent-http';
import { probe } from '../probe';
import { trackRequests } from '../tracker/track-requests';
import { httpTrackerSource, readingFromSnapshot } from './tracker-source';

const snap = {
  inFlight: 3,
  queued: 1,
  rps: 12.5,
  errorRate: 0.1,
  latencyMeanMs: 20,
  latencyP50Ms: 15,
  latencyP90Ms: 40,
  latencyP99Ms: 90,
  windowMs: 10_000,
  windowCompleted: 125,
  completed: 900,
  rejected: 0,
  aborted: 2,
};

describe('tracker source over HTTP and the probe', () => {
  const servers: Listening[] = [];
  afterEach(async () => {
    await Promise.all(servers.splice(0).map((s) => s.close()));
  });
  const serve = async (status: number, body: string): Promise<string> => {
    const s = await listen((_req, res) => {
      res.statusCode = status;
      res.end(body);
    });
    servers.push(s);
    return s.url;
  };

  it('maps a snapshot to queue, traffic and limit fields', async () => {
    const url = await serve(200, JSON.stringify({ ...snap, concurrencyLimit: 8, maxQueue: 64 }));
    expect(await httpTrackerSource(new URL(`${url}/stats`), 500).read()).toEqual({
      queue: { inFlight: 3, queued: 1, source: { inFlight: 'tracker', queued: 'tracker' } },
      traffic: {
        rps: 12.5,
        errorRate: 0.1,
        windowMs: 10_000,
        latencyMeanMs: 20,
        latencyP50Ms: 15,
        latencyP90Ms: 40,
        latencyP99Ms: 90,
      },
      concurrencyLimit: 8,
      maxQueue: 64,
    });
  });

  it('leaves latency out when nothing completed in the window', () => {
    expect(readingFromSnapshot({ ...snap, windowCompleted: 0 }).traffic).toEqual({
      rps: 12.5,
      errorRate: 0.1,
      windowMs: 10_000,
    });
  });

  it.each([
    [404, 'not found', 'tracker endpoint answered 404'],
    [200, '<html>', 'tracker endpoint did not return JSON'],
    [200, JSON.stringify({ ...snap, inFlight: -1 }), 'unexpected document'],
    [200, JSON.stringify({ inFlight: 1 }), 'unexpected document'],
  ])('rejects status %i body %j', async (status, body, message) => {
    const url = await serve(status, body);
    await expect(httpTrackerSource(new URL(url), 500).read()).rejects.toThrow(message);
  });

  it.each([
    [503, /^tracker endpoint answered 503$/],
    [429, /^tracker endpoint answered 429: its 8 early-report watches are held already/],
  ])(
    'names an error status (%i) at the head, without reading the page to its bound',
    async (status, message) => {
      // An endless error page: read to the 64 KiB bound, the warning named the bound.
      const s = await listen((_req, res) => {
        res.writeHead(status, { 'Content-Type': 'text/html' });
        const chunk = Buffer.alloc(16 * 1024, 120);
        const pump = (): void => {
          while (!res.destroyed && res.write(chunk));
          if (!res.destroyed) res.once('drain', pump);
        };
        pump();
      });
      servers.push(s);
      await expect(httpTrackerSource(new URL(`${s.url}/stats`), 2000).read()).rejects.toThrow(
        message,
      );
    },
  );

  it('holds a rise watch longer than the tracker allows (--interval-ms 120000) at its maximum', async () => {
    const tracker = trackRequests({ exposePath: '/stats' });
    const held: Array<() => void> = [];
    const urls: string[] = [];
    const s = await listen((req, res) => {
      urls.push(req.url ?? '');
      tracker(req, res, () => held.push(() => res.end('done')));
    });
    servers.push(s);
    const source = httpTrackerSource(new URL(`${s.url}/stats`), 500);
    try {
      const watch = source.waitForRise!(0, 1, 120_000, new AbortController().signal);
      // A rise answers the watch at once: no need to wait out its timeout.
      const req = fire(`${s.url}/work`);
      await until(() => held.length === 1);
      const reading = await watch;
      expect(reading.rose).toBe(true);
      expect(reading.queue).toMatchObject({ inFlight: 1 });
      expect(urls.find((u) => u.startsWith('/stats?'))).toContain('waitMs=60000');
      held[0]!();
      await req.done;
    } finally {
      source.close?.();
      tracker.close();
    }
  });

  it('probe: expected statuses, and a timeout on a server that never answers', async () => {
    const url = await serve(204, '');
    expect(await probe({ url: new URL(url), timeoutMs: 500 })).toMatchObject({
      ok: true,
      status: 204,
    });
    expect(await probe({ url: new URL(url), timeoutMs: 500, expectStatus: [200] })).toMatchObject({
      ok: false,
      status: 204,
      reason: 'probe answered 204',
    });
    const hang = await listen(() => undefined);
    servers.push(hang);
    expect(await probe({ url: new URL(hang.url), timeoutMs: 50 })).toEqual({
      ok: false,
      reason: 'probe failed: timed out after 50 ms',
    });
  });
});
