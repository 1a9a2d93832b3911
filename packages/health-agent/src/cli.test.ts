import { chmodSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { isAgentCommandLine, secretWarnings, verdictLogger, warningLimiter } from './cli';
import { mergeSources } from './config';
import { withoutPassword } from './without-password';

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

describe('isAgentCommandLine (drain/undrain --pid)', () => {
  it.each([
    ['loadwise-agent', true],
    ['loadwise-agent --backend-id api-1', true],
    // The title cut to the argument area of `node cli.js` (12 bytes), or shorter ones.
    ['loadwise-ag', true],
    ['loadwise-a', true],
    // Too short to name the agent, or another program.
    ['loadwise', false],
    ['loadwise-', false],
    ['loadwise status --url http://127.0.0.1:8080/_lb/status', false],
    ['node server.js', false],
    ['', false],
  ])('%j -> %s', (cmd, agent) => {
    expect(isAgentCommandLine(cmd)).toBe(agent);
  });
});

describe('secretWarnings', () => {
  it('warns of a config file holding the password that other users can read', () => {
    const dir = mkdtempSync(path.join(os.tmpdir(), 'lw-cli-'));
    try {
      const config = path.join(dir, 'agent.json');
      writeFileSync(config, JSON.stringify({ backendId: 'x', password: 'S3CRET' }));
      chmodSync(config, 0o644);
      const raw = mergeSources({ config }, {});
      expect(secretWarnings(raw, true)).toEqual([
        `--config ${config} can be read by other users (mode 644): chmod 600 it`,
      ]);
      chmodSync(config, 0o600);
      expect(secretWarnings(raw, true)).toEqual([]);
      // Without a password in it, a readable config file is no secret.
      writeFileSync(config, JSON.stringify({ backendId: 'x' }));
      chmodSync(config, 0o644);
      expect(secretWarnings(mergeSources({ config }, {}), true)).toEqual([]);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('verdictLogger (the health verdict changes in the log)', () => {
  it('logs each change with its reason, each at most once a minute, never left stale', () => {
    let t = 0;
    const said = verdictLogger(() => t);
    const up = { verdict: 'up' } as const;
    const down = { verdict: 'down', reason: 'probe answered 503' } as const;
    expect(said(up)).toBeUndefined(); // a start says nothing of up
    expect(said(down)).toEqual({ level: 'warn', line: 'health up → down: probe answered 503' });
    expect(said(down)).toBeUndefined();
    t = 10_000;
    expect(said(up)).toEqual({ level: 'info', line: 'health down → up' });
    // Flapping: the same changes within the minute are held back...
    t = 20_000;
    expect(said(down)).toBeUndefined();
    t = 30_000;
    expect(said(up)).toBeUndefined();
    t = 40_000;
    expect(said(down)).toBeUndefined();
    // ...and the verdict that still differs is said once the minute is over, with the count.
    t = 60_000;
    expect(said(down)).toEqual({
      level: 'warn',
      line: 'health up → down: probe answered 503 (2 changes not shown)',
    });
    t = 61_000;
    expect(said({ verdict: 'degraded', reason: 'host CPU 95%' })).toEqual({
      level: 'warn',
      line: 'health down → degraded: host CPU 95%',
    });
  });
});

describe('warningLimiter (a repeated warning at most once a minute)', () => {
  it('takes a warning whose figures change for the same warning', () => {
    // A gauge drifting negative: each sample's warning named a new value, and every one
    // was logged (17 lines in 4 s at --interval-ms 200).
    let t = 0;
    const says = warningLimiter(() => t);
    const gauge = (v: number): string =>
      `queue source (prometheus) failed: gauge q is ${v} at http://127.0.0.1:9100/metrics: queued must be a count from 0 to 9007199254740991`;
    expect(says(gauge(-1))).toBe(true);
    for (let v = -2; v > -300; v--) {
      t += 200;
      expect([v, says(gauge(v))]).toEqual([v, false]);
    }
    // Another warning is its own.
    expect(says('queue source (prometheus) failed: gauge q not found at http://x/metrics')).toBe(
      true,
    );
    t = 60_000;
    expect(says(gauge(-301))).toBe(true);
    expect(says(gauge(-302))).toBe(false);
  });
  it('takes a warning whose quoted value changes for the same warning', () => {
    // A page whose unreadable value changed letters each scrape was logged every sample (a
    // re-review: 60 lines a minute at the default interval).
    let t = 0;
    const says = warningLimiter(() => t);
    const gauge = (v: string): string =>
      `queue source (prometheus) failed: gauge q: 1 of 2 lines unreadable (${JSON.stringify(v)}) at http://x/metrics`;
    expect(says(gauge('va'))).toBe(true);
    for (const v of ['vb', 'vc', 'x\\"y', '0x1a']) {
      t += 1000;
      expect([v, says(gauge(v))]).toEqual([v, false]);
    }
  });
});
