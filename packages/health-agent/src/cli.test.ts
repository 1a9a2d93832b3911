import { withoutPassword } from './cli';

describe('withoutPassword (the broker URL in log lines)', () => {
  it.each([
    ['mqtt://alice:S3CRET-PW@127.0.0.1:1883', 'mqtt://alice:***@127.0.0.1:1883'],
    ['mqtts://gw:pw@broker:8883/x?y=1', 'mqtts://gw:***@broker:8883/x?y=1'],
    ['wss://u:pw@broker:443/mqtt', 'wss://u:***@broker/mqtt'],
    // A password holding '@' (percent-encoded or not): nothing of it may show.
    ['mqtt://u:p@ss@broker:1883', 'mqtt://u:***@broker:1883'],
    ['mqtt://u:p%40ss@broker:1883', 'mqtt://u:***@broker:1883'],
    ['mqtt://:only-pw@broker', 'mqtt://:***@broker'],
  ])('%s -> %s', (url, shown) => {
    expect(withoutPassword(url)).toBe(shown);
  });

  it.each([
    // Nothing to hide: left exactly as written, not normalised.
    'mqtt://127.0.0.1:1883',
    'ws://broker:8080',
    'mqtt://alice@broker:1883',
    'ws://broker/mqtt?token=a@b',
    // Unparsable: returned unchanged (the agent refuses such a broker URL anyway).
    'not a url',
    'mqtt://u:pw@broker:99999',
    '',
  ])('leaves %j unchanged', (url) => {
    expect(withoutPassword(url)).toBe(url);
  });
});
