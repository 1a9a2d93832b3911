import { parseStatusArgs } from './index';

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
