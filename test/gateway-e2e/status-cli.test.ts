/**
 * `loadwise status` against a real gateway (real backends, real agents over
 * a real broker), run as a process through its committed bin shim, the way
 * npm links it: the table, --json, tokens, --watch, and its exit codes.
 */
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { GATEWAY_BIN, spawnScript, type AgentProcess } from '../kit/agent-cli';
import { eventually } from '../kit/fleet';
import { freePort } from '../kit/ports';
import { listen } from '../kit/http';
import { fleetGatewayOnEmbeddedBroker } from '../kit/gateway';
import { fire } from '../kit/load';

const TOKEN = 'status-token-for-tests';
const ESC = '\x1b';

async function loadwise(args: string[], env: NodeJS.ProcessEnv = {}): Promise<AgentProcess> {
  const p = spawnScript(GATEWAY_BIN, args, env);
  await p.exited;
  return p;
}

/** The table's row for a backend, split on the two-space column gaps. */
function row(out: string, id: string): string[] {
  const line = out.split('\n').find((l) => l.startsWith(`${id}  `));
  if (!line) throw new Error(`no row for ${id} in:\n${out}`);
  return line.split(/ {2,}/);
}

describe('loadwise status CLI against a real gateway', () => {
  const suite = fleetGatewayOnEmbeddedBroker({
    label: 'status-cli',
    backends: [
      { id: 'api-1', slots: 4, serviceMs: 5 },
      { id: 'api-2', slots: 8, serviceMs: 5 },
    ],
    gateway: { statusPath: '/_lb/status', statusToken: TOKEN },
  });
  let statusUrl: string;

  beforeAll(async () => {
    statusUrl = `${suite.gw.url}/_lb/status`;
    await fire({ url: `${suite.gw.url}/work`, total: 40, concurrency: 4 });
    // Both serve, so both have a latency to show: in one full CI run (the whole suite on two
    // cores) one backend served none of the 40 and its LATENCY was "-" (the test's own
    // comment below: a starved probe can say "down" until the next report).
    for (let round = 0; round < 10; round++) {
      if (suite.gw.snapshot().backends.every((b) => b.requestsTotal > 0)) break;
      await new Promise((r) => setTimeout(r, 500));
      await fire({ url: `${suite.gw.url}/work`, total: 20, concurrency: 4 });
    }
  }, 30_000);

  it('prints every backend with its state, share, load and report age', async () => {
    // The table is read at one instant: a report is fresh for 1 s and one starved probe can
    // report "down" until the next report, so read it again (up to 5 s) until every row is
    // healthy with a report age, then check the whole table.
    let out = '';
    await eventually(
      async () => {
        const p = await loadwise(['status', '--url', statusUrl, '--token', TOKEN]);
        expect(p.stderr()).toBe('');
        expect(await p.exited).toBe(0);
        out = p.stdout();
        return suite.gw.snapshot().backends.every((b) => {
          const [, state, , , , , age] = row(out, b.id);
          return state === 'healthy' && /^\d+(\.\d)? m?s$/.test(age ?? '');
        });
      },
      5_000,
      () => `every row healthy with a fresh report:\n${out}`,
    );
    expect(out).toContain(statusUrl);
    expect(out).toMatch(/strategy load-aware, \d+ in flight, broker connected/);
    expect(out).toMatch(
      /^ID +STATE +SHARE +IN-FLIGHT +LATENCY +EXP\. WAIT +REPORT AGE +CPU +MEM +BUSY +QUEUED$/m,
    );
    const snap = suite.gw.snapshot();
    for (const b of snap.backends) {
      const [id, state, share, inFlight, latency, , age, cpu, mem, busy, queued] = row(out, b.id);
      expect(id).toBe(b.id);
      expect(state).toBe('healthy');
      expect(share).toMatch(/^\d+%$/);
      expect(inFlight).toMatch(/^\d+$/);
      expect(latency).toMatch(/^\d+(\.\d)? m?s$/); // both served requests above
      expect(age).toMatch(/^\d+(\.\d)? m?s$/); // a fresh report, not "none" or "stale"
      expect(cpu).toMatch(/^\d+%$/);
      expect(mem).toMatch(/^\d+%$/);
      // The agent reports the tracker's limit: busy/limit.
      expect(busy).toMatch(new RegExp(`^\\d+/${suite.fleet.get(b.id).spec.slots}$`));
      expect(queued).toMatch(/^\d+$/);
    }
  });

  it('shows a draining backend with its reason', async () => {
    const agent = suite.fleet.get('api-2').agent!;
    agent.signal('SIGUSR2');
    try {
      await eventually(
        () => suite.gw.backend('api-2').state === 'draining',
        10_000,
        'api-2 draining',
      );
      const p = await loadwise(['status', '--url', statusUrl], { LOADWISE_STATUS_TOKEN: TOKEN });
      expect(await p.exited).toBe(0);
      expect(row(p.stdout(), 'api-2')[1]).toBe('draining: agent reported draining');
      expect(row(p.stdout(), 'api-1')[1]).toBe('healthy');
    } finally {
      agent.signal('SIGHUP');
      await eventually(() => suite.gw.backend('api-2').state === 'healthy', 10_000, 'api-2 back');
    }
  }, 30_000);

  it('--json prints the status document as the gateway serves it', async () => {
    const p = await loadwise(['status', '--url', statusUrl, '--token', TOKEN, '--json']);
    expect(await p.exited).toBe(0);
    const doc = JSON.parse(p.stdout());
    expect(doc.strategy).toBe('load-aware');
    expect(doc.backends.map((b: { id: string }) => b.id).sort()).toEqual(['api-1', 'api-2']);
  });

  it('--watch refreshes every --interval-ms and stops after --count', async () => {
    const p = await loadwise([
      'status',
      '--url',
      statusUrl,
      '--token',
      TOKEN,
      '--watch',
      '--interval-ms',
      '300',
      '--count',
      '2',
    ]);
    expect(await p.exited).toBe(0);
    const out = p.stdout();
    // Not a terminal (a pipe): no cursor movement, frames one after the other.
    expect(out).not.toContain('\x1b[');
    const stamps = [...out.matchAll(/_lb\/status {2}(\S+)/g)].map((m) => Date.parse(m[1]!));
    expect(stamps).toHaveLength(2);
    // Two reads of the gateway, at least one interval apart.
    expect(stamps[1]! - stamps[0]!).toBeGreaterThanOrEqual(300);
    expect(out.match(/^ID +STATE/gm)).toHaveLength(2);
  });

  it('--watch on a terminal redraws in place', async () => {
    // util-linux `script` gives the CLI a pseudo-terminal (stdout.isTTY).
    const cmd = [
      process.execPath,
      GATEWAY_BIN,
      'status',
      '--url',
      statusUrl,
      '--watch',
      '--interval-ms',
      '200',
      '--count',
      '2',
    ].join(' ');
    const p = spawn('script', ['-qec', cmd, '/dev/null'], {
      env: { PATH: process.env.PATH, LOADWISE_STATUS_TOKEN: TOKEN },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let out = '';
    p.stdout.setEncoding('utf8').on('data', (c: string) => (out += c));
    const [code] = await once(p, 'exit');
    expect(code).toBe(0);
    // Each frame: cursor home, lines ending in erase-to-end-of-line, then
    // erase below (ECMA-48 CUP, EL, ED).
    const frames = out.split('\x1b[H').slice(1);
    expect(frames).toHaveLength(2);
    for (const f of frames) {
      expect(f).toMatch(new RegExp(`^ID +STATE.*${ESC}\\[K\\r?\\n`, 'm'));
      expect(f.trimEnd().endsWith('\x1b[J')).toBe(true);
    }
  });

  it('--watch --json prints one document per line', async () => {
    const p = await loadwise(
      ['status', '--url', statusUrl, '--watch', '--interval-ms', '100', '--count', '3', '--json'],
      { LOADWISE_STATUS_TOKEN: TOKEN },
    );
    expect(await p.exited).toBe(0);
    const lines = p.stdout().trim().split('\n');
    expect(lines).toHaveLength(3);
    for (const l of lines) expect(JSON.parse(l).backends).toHaveLength(2);
  });

  it('explains a missing or refused token (exit 1)', async () => {
    const none = await loadwise(['status', '--url', statusUrl]);
    expect(await none.exited).toBe(1);
    expect(none.stderr()).toMatch(/401 unauthorized: the gateway has a statusToken/);
    expect(none.stdout()).toBe('');

    const wrong = await loadwise(['status', '--url', statusUrl, '--token', 'not-the-token']);
    expect(await wrong.exited).toBe(1);
    expect(wrong.stderr()).toMatch(/token sent in x-loadwise-token was refused/);
  });

  it('sends the token in the header --token-header names', async () => {
    // A server of the test's own in front of the real status document, to
    // see the headers the CLI sends (the gateway only reads Authorization).
    const seen: http.IncomingHttpHeaders[] = [];
    const front = http.createServer((req, res) => {
      seen.push(req.headers);
      res.setHeader('content-type', 'application/json');
      res.end(JSON.stringify(suite.gw.snapshot()));
    });
    await new Promise<void>((r) => front.listen(0, '127.0.0.1', r));
    try {
      const url = `http://127.0.0.1:${(front.address() as AddressInfo).port}/_lb/status`;
      const p = await loadwise(['status', '--url', url, '--token-header', 'Authorization'], {
        LOADWISE_STATUS_TOKEN: TOKEN,
      });
      expect(await p.exited).toBe(0);
      expect(seen[0]!['authorization']).toBe(`Bearer ${TOKEN}`);
      expect(seen[0]!['x-loadwise-token']).toBeUndefined();
      // By default the gateway's own header, which it never proxies: a --url that misses
      // the status path (a trailing slash) and reaches a backend does not give it the token.
      const q = await loadwise(['status', '--url', url, '--token', TOKEN]);
      expect(await q.exited).toBe(0);
      expect(seen[1]!['x-loadwise-token']).toBe(TOKEN);
      expect(seen[1]!['authorization']).toBeUndefined();
      // An app's own credentials next to the status token: --header (repeatable), or one in the variable.
      const h = await loadwise(
        ['status', '--url', url, '--header', 'Authorization: Bearer app', '--header', 'x-tenant:a'],
        { LOADWISE_STATUS_TOKEN: TOKEN, LOADWISE_STATUS_TOKEN_HEADER: 'x-loadwise-token' },
      );
      expect(await h.exited).toBe(0);
      expect(seen[2]).toMatchObject({
        authorization: 'Bearer app',
        'x-tenant': 'a',
        'x-loadwise-token': TOKEN,
      });
      const e = await loadwise(['status', '--url', url], {
        LOADWISE_STATUS_HEADER: 'authorization: Bearer from-env',
      });
      expect(await e.exited).toBe(0);
      expect(seen[3]!['authorization']).toBe('Bearer from-env');
    } finally {
      await new Promise<void>((r) => front.close(() => r()));
    }
  });

  it('gives up on an answer that trickles past --timeout-ms (a deadline, not an idle timeout)', async () => {
    // Headers, then a byte every 100 ms: never idle for --timeout-ms, never ending.
    const timers = new Set<NodeJS.Timeout>();
    const drip = await listen(
      http.createServer((_req, res) => {
        res.writeHead(200, { 'content-type': 'application/json' });
        const t = setInterval(() => res.write(' '), 100);
        timers.add(t);
        res.on('close', () => (clearInterval(t), timers.delete(t)));
      }),
    );
    try {
      const p = await loadwise([
        'status',
        '--url',
        `${drip.url}/_lb/status`,
        '--timeout-ms',
        '500',
      ]);
      expect(await p.exited).toBe(1);
      expect(p.stderr()).toMatch(/no answer within 500 ms/);
    } finally {
      for (const t of timers) clearInterval(t);
      await drip.close();
    }
  });

  it('exits 1 when nothing answers, 2 on invalid usage', async () => {
    const down = await loadwise([
      'status',
      '--url',
      `http://127.0.0.1:${await freePort()}/_lb/status`,
    ]);
    expect(await down.exited).toBe(1);
    expect(down.stderr()).toMatch(/ECONNREFUSED/);

    const notStatus = await loadwise(['status', '--url', `${suite.gw.url}/work`]);
    expect(await notStatus.exited).toBe(1);
    expect(notStatus.stderr()).toMatch(/not a loadwise status document/);

    for (const args of [
      ['status'],
      ['status', '--url', 'ftp://x/'],
      ['status', '--url', statusUrl, '--count', '2'],
      ['status', '--url', statusUrl, '--watch', '--interval-ms', '10'],
      ['status', '--url', statusUrl, '--bogus'],
      ['status', '--url', statusUrl, '--header', 'no-colon-secret'],
      ['status', '--url', statusUrl, '--token', 't', '--header', 'X-Loadwise-Token: secret'],
      ['stats'],
    ]) {
      const p = await loadwise(args);
      expect({ args, code: await p.exited }).toEqual({ args, code: 2 });
      expect(p.stderr().trim().split('\n')).toHaveLength(1);
      expect(p.stderr()).toMatch(/^loadwise: /);
      expect(p.stderr()).not.toContain('secret'); // a header's value is never echoed
    }
  }, 20_000);

  it('--help lists every option and its variable', async () => {
    const p = await loadwise(['--help']);
    expect(await p.exited).toBe(0);
    for (const flag of [
      '--url',
      '--token',
      '--token-header',
      '--header',
      '--watch',
      '--interval-ms',
    ])
      expect(p.stdout()).toContain(flag);
    for (const env of ['LOADWISE_STATUS_URL', 'LOADWISE_STATUS_TOKEN', 'LOADWISE_STATUS_HEADER'])
      expect(p.stdout()).toContain(env);
  });
});
