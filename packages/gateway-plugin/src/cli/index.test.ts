import { createServer, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { fetchStatus, frameOf, parseStatusArgs, shownUrl } from './index';
import * as render from './render';

describe('parseStatusArgs', () => {
  const url = ['--url', 'http://127.0.0.1:8080/_lb/status'];

  it('refuses an interval or timeout longer than a timer can wait (Node fires those after 1 ms)', () => {
    for (const flag of ['--interval-ms', '--timeout-ms']) {
      const extra = flag === '--interval-ms' ? ['--watch'] : [];
      expect(() => parseStatusArgs([...url, ...extra, flag, '3000000000'], {})).toThrow(
        `${flag}: must be an integer from`,
      );
    }
    expect(parseStatusArgs([...url, '--watch', '--interval-ms', '2147483647'], {})).toMatchObject({
      intervalMs: 2147483647,
    });
  });

  it('sends the token in the gateway own header by default, which the gateway never proxies', () => {
    const o = parseStatusArgs([...url, '--token', 'tok-12345678'], {});
    expect(o).not.toBe('help');
    if (o === 'help') return;
    expect(o.headers).toMatchObject({ 'x-loadwise-token': 'tok-12345678' });
    expect(o.headers['authorization']).toBeUndefined();
  });
});

describe('what the CLI prints of the endpoint', () => {
  it('shows the URL without its user and password (they are still sent)', () => {
    expect(shownUrl(new URL('http://ops:s3cret@gw:8080/_lb/status'))).toBe(
      'http://gw:8080/_lb/status',
    );
    expect(shownUrl(new URL('http://gw/_lb/status'))).toBe('http://gw/_lb/status');
  });

  it("never passes an error body's control bytes to the terminal", async () => {
    const server = createServer((_req, res) => {
      res.statusCode = 500;
      res.end('\x1b]0;PWNED\x07\x1b[2Jboom');
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
    try {
      const { port } = server.address() as AddressInfo;
      const r = await fetchStatus({
        url: new URL(`http://u:pw@127.0.0.1:${port}/_lb/status`),
        headers: {},
        tokenHeader: undefined,
        timeoutMs: 2000,
      });
      expect(r.ok).toBe(false);
      if (r.ok) return;
      // eslint-disable-next-line no-control-regex
      expect(r.error).not.toMatch(/[\x00-\x1f]/);
      expect(r.error).toContain('HTTP 500');
      expect(r.error).not.toContain('pw@');
    } finally {
      await new Promise((r) => server.close(r));
    }
  });
});

describe('one read, as the CLI shows it', () => {
  const o = { url: new URL('http://gw/_lb/status'), json: false };

  it('a document that cannot be shown is a failed read, in one line: --watch retries it', () => {
    // render.ts reads every field defensively; should a document still defeat it, the
    // exception used to end the command (and --watch) with a stack.
    const spy = jest.spyOn(render, 'renderStatus').mockImplementation(() => {
      throw new TypeError('Cannot convert object to primitive value\nat x');
    });
    try {
      const f = frameOf(o, { ok: true, body: { backends: [] } });
      expect(f.error).toBe(
        'http://gw/_lb/status: cannot show the status document: Cannot convert object to primitive value?at x',
      );
      expect(f.text).toMatch(/^http:\/\/gw\/_lb\/status {2}\S+\n$/);
    } finally {
      spy.mockRestore();
    }
    expect(frameOf(o, { ok: true, body: { backends: [] } }).error).toBeUndefined();
    expect(frameOf({ ...o, json: true }, { ok: false, error: 'x' })).toEqual({
      text: '',
      error: 'x',
    });
  });

  it('an aborted read ends at once, not at its timeout', async () => {
    const open = new Set<ServerResponse>();
    let arrived!: () => void;
    const arrival = new Promise<void>((r) => (arrived = r));
    // Never answers: the read would wait for its whole --timeout-ms.
    const server = createServer((_req, res) => {
      open.add(res);
      arrived();
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
    try {
      const { port } = server.address() as AddressInfo;
      const abort = new AbortController();
      const started = Date.now();
      const read = fetchStatus(
        {
          url: new URL(`http://127.0.0.1:${port}/_lb/status`),
          headers: {},
          tokenHeader: undefined,
          timeoutMs: 10_000,
        },
        abort.signal,
      );
      await arrival;
      abort.abort();
      const r = await read;
      expect(r.ok).toBe(false);
      expect(Date.now() - started).toBeLessThan(5_000);
    } finally {
      for (const res of open) res.destroy();
      server.closeAllConnections();
      await new Promise((r) => server.close(r));
    }
  });
});
