import { rawHttpApp, within } from '../../../test/kit/agent-http';
import { createAgent } from './agent';
import { httpGet } from './http-get';
import { probe } from './probe';
import { prometheusSource } from './queue/prometheus-source';
import { httpTrackerSource } from './queue/tracker-source';

const SWITCHING = 'HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\nConnection: Upgrade\r\n\r\n';

/** A raw TCP "app" that answers every request with a 101 nobody asked for. */
const switchingApp = (): ReturnType<typeof rawHttpApp> => rawHttpApp(() => SWITCHING);

/** `p`'s outcome, or 'still pending' after `ms`: the hang this guards against fails the test, never stalls it. */
const settled = <T>(p: Promise<T>, ms = 3000): Promise<T | Error | 'still pending'> =>
  within(
    p.catch((err: Error) => err),
    ms,
  );

// node:http destroys the socket of an unasked-for 101 without an 'error', and
// the timeout's destroy() then did nothing: every read below never settled.
describe('httpGet and its callers on a 101 Switching Protocols answer', () => {
  let app: Awaited<ReturnType<typeof switchingApp>>;
  beforeEach(async () => {
    app = await switchingApp();
  });
  afterEach(() => app.close());

  it('httpGet rejects with a coded error, head-only or not', async () => {
    for (const headOnly of [false, true]) {
      const err = await settled(httpGet(new URL(`${app.url}/x`), 5000, undefined, { headOnly }));
      expect(err).toBeInstanceOf(Error);
      expect(err).toMatchObject({
        code: 'LW_HTTP_UNEXPECTED_UPGRADE',
        message: 'answered 101 Switching Protocols, an upgrade not asked for',
      });
    }
  });

  it('the probe fails, naming it, and the sample settles with the backend down', async () => {
    expect(await settled(probe({ url: new URL(`${app.url}/healthz`), timeoutMs: 5000 }))).toEqual({
      ok: false,
      reason: 'probe failed: answered 101 Switching Protocols, an upgrade not asked for',
    });
    const agent = createAgent({
      backendId: 'probe-101',
      probe: { url: `${app.url}/healthz` },
      cgroup: false,
    });
    const report = await settled(agent.sampleReport());
    expect(report).toMatchObject({ health: { verdict: 'down' } });
    expect((report as { health: { reason: string } }).health.reason).toContain('101');
  });

  it('the tracker read and its rise watch reject', async () => {
    const source = httpTrackerSource(new URL(`${app.url}/stats`), 5000);
    try {
      expect(await settled(source.read())).toMatchObject({ code: 'LW_HTTP_UNEXPECTED_UPGRADE' });
      expect(
        await settled(source.waitForRise!(0, 1, 1000, new AbortController().signal)),
      ).toMatchObject({ code: 'LW_HTTP_UNEXPECTED_UPGRADE' });
    } finally {
      source.close?.();
    }
  });

  it('the Prometheus read rejects', async () => {
    const source = prometheusSource(new URL(`${app.url}/metrics`), 'q', 'queued', 5000);
    expect(await settled(source.read())).toMatchObject({ code: 'LW_HTTP_UNEXPECTED_UPGRADE' });
  });

  it('a sample with the queue source answered 101 goes out without the queue block', async () => {
    for (const queue of [
      { source: 'tracker' as const, url: `${app.url}/stats` },
      { source: 'prometheus' as const, url: `${app.url}/metrics`, gauge: 'q' },
    ]) {
      const agent = createAgent({ backendId: 'queue-101', queue, cgroup: false });
      const warnings: string[] = [];
      agent.on('warning', (w: string) => warnings.push(w));
      const report = await settled(agent.sampleReport());
      expect(report).toMatchObject({ health: { verdict: expect.any(String) } });
      expect((report as { queue?: unknown }).queue).toBeUndefined();
      expect(warnings).toContainEqual(expect.stringContaining('101 Switching Protocols'));
    }
  });
});
