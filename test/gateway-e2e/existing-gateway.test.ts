/**
 * examples/existing-gateway.ts, run as a real process: an Express 5 gateway
 * with a request id, a rate limit, Bearer auth, express.json() on one route,
 * its own /health, and two services (/api/users, /api/orders) of two backends
 * each, every backend with trackRequests() and a real agent, on one broker
 * (Mosquitto when MQTT_URL is set, else an embedded one). Checks what a user
 * of an existing gateway sees: parsed bodies arrive, each balancer hears only
 * its own agents, one status page and one metrics registry cover both,
 * WebSocket upgrades obey the app's auth and mount paths, and SIGTERM with a
 * 2 s request in flight lets it finish with 200. Its stdout shows no token of
 * the user's and no broker password, and a flag it cannot use (a broker URL
 * that is not MQTT, a prefix with a space, an empty token) is one line and
 * exit 2 before anything starts: it was a stack trace and exit 1 once four
 * backends and agents ran.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import path from 'node:path';
import { createInterface } from 'node:readline';
import { startEmbeddedBroker } from '@loadwise/gateway-plugin';
import { uniquePrefix } from '../kit/brokers';
import { eventually } from '../kit/fleet';
import { GATEWAY_BIN, spawnScript } from '../kit/agent-cli';
import { alive } from '../kit/pids';
import { TRACKER_STATS_PATH } from '../../examples/lib/processes';
import { wsExchange } from '../kit/ws-client';

const SCRIPT = path.resolve(__dirname, '../../examples/dist/existing-gateway.js');
const TOKEN = 'app-token-e2e';
const OPS = 'ops-token-e2e';
const APP = { authorization: `Bearer ${TOKEN}` };

interface Started {
  child: ChildProcess;
  base: string;
  backends: { service: string; id: string; url: string }[];
  stdout: string[];
  stderr: () => string;
  exited: Promise<{ code: number | null; signal: string | null }>;
}

async function start(
  flags: string[] = ['--token', TOKEN, '--status-token', OPS],
  env: NodeJS.ProcessEnv = process.env,
  broker = process.env.MQTT_URL,
): Promise<Started> {
  const args = [SCRIPT, '--port', '0', ...flags];
  args.push('--interval-ms', '250', '--prefix', uniquePrefix('existing'));
  if (broker) args.push('--broker', broker);
  const child = spawn(process.execPath, args, { stdio: ['ignore', 'pipe', 'pipe'], env });
  const stdout: string[] = [];
  let stderr = '';
  child.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
  createInterface({ input: child.stdout! }).on('line', (l) => stdout.push(l));
  const exited = new Promise<{ code: number | null; signal: string | null }>((resolve) =>
    child.once('exit', (code, signal) => resolve({ code, signal })),
  );
  const events = (): {
    event: string;
    port?: number;
    service?: string;
    id?: string;
    url?: string;
  }[] => stdout.filter((l) => l.startsWith('{')).map((l) => JSON.parse(l) as never);
  await eventually(
    () => events().some((e) => e.event === 'listening'),
    30_000,
    () => `gateway listening (stderr: ${stderr})`,
  );
  // Its human lines follow the listening line in the same turn, but may come in a later read
  // of the pipe: the tests that read them raced them (the status curl line is the last).
  await eventually(
    () => stdout.some((l) => l.includes('/_lb/status')),
    10_000,
    () => `the lines after listening (stdout: ${stdout.join(' | ')})`,
  );
  const port = events().find((e) => e.event === 'listening')!.port!;
  const backends = events()
    .filter((e) => e.event === 'backend')
    .map((e) => ({ service: e.service!, id: e.id!, url: e.url! }));
  return {
    child,
    base: `http://127.0.0.1:${port}`,
    backends,
    stdout,
    stderr: () => stderr,
    exited,
  };
}

interface Status {
  services: {
    service: string;
    brokerConnected: boolean;
    backends: { id: string; reportFresh: boolean }[];
  }[];
}

describe('an existing Express gateway with two services (examples/existing-gateway.ts)', () => {
  let gw: Started;
  beforeAll(async () => {
    gw = await start();
  }, 40_000);
  afterAll(() => {
    // On a failed assertion, leave nothing behind.
    if (gw && gw.child.pid !== undefined && alive(gw.child.pid)) gw.child.kill('SIGKILL');
  });

  it('prints placeholders for the tokens it was given, never their values', () => {
    const out = gw.stdout.join('\n');
    expect(out).not.toContain(TOKEN);
    expect(out).not.toContain(OPS);
    expect(out).toContain(`curl -H 'authorization: Bearer <app token>' ${gw.base}/api/users/hello`);
    expect(out).toContain("-H 'x-loadwise-token: <ops token>'");
  });

  it('keeps the app in charge: own /health, auth, request id, and each mount path to its own backends', async () => {
    const health = await fetch(`${gw.base}/health`);
    expect(health.status).toBe(200);
    const denied = await fetch(`${gw.base}/api/users/x`);
    expect(denied.status).toBe(401);
    const users = await fetch(`${gw.base}/api/users/x`, {
      headers: { ...APP, 'x-request-id': 'req-42' },
    });
    expect(users.status).toBe(200);
    expect(users.headers.get('x-request-id')).toBe('req-42');
    expect(users.headers.get('x-served-by')).toMatch(/^users-[12]$/);
    expect(await users.json()).toMatchObject({ path: '/x' });
    const orders = await fetch(`${gw.base}/api/orders/y`, { headers: APP });
    expect(orders.headers.get('x-served-by')).toMatch(/^orders-[12]$/);
  });

  it('forwards a JSON body that express.json() parsed before the balancer, at once', async () => {
    const body = { name: 'Ada', roles: ['admin'] };
    const started = Date.now();
    const res = await fetch(`${gw.base}/api/users/echo`, {
      method: 'POST',
      headers: { ...APP, 'content-type': 'application/json' },
      body: JSON.stringify(body),
    });
    expect(res.status).toBe(200);
    expect(await res.json()).toMatchObject({
      body,
      contentLength: String(JSON.stringify(body).length),
    });
    expect(Date.now() - started).toBeLessThan(5000);
    // The streamed route (no parser in front) carries it as well.
    const orders = await fetch(`${gw.base}/api/orders/echo`, {
      method: 'POST',
      headers: { ...APP, 'content-type': 'application/json' },
      body: JSON.stringify({ order: 7 }),
    });
    expect(await orders.json()).toMatchObject({ body: { order: 7 } });
  });

  it('one status page lists both services, read with the ops token next to the app token', async () => {
    const status = async (): Promise<Status> => {
      const res = await fetch(`${gw.base}/_lb/status`, {
        headers: { ...APP, 'x-loadwise-token': OPS },
      });
      expect(res.status).toBe(200);
      return (await res.json()) as Status;
    };
    await eventually(
      async () => (await status()).services.every((s) => s.backends.every((b) => b.reportFresh)),
      20_000,
      'fresh reports from all four agents',
    );
    const s = await status();
    expect(s.services.map((x) => [x.service, x.backends.map((b) => b.id).sort()])).toEqual([
      ['users', ['users-1', 'users-2']],
      ['orders', ['orders-1', 'orders-2']],
    ]);
    const noOps = await fetch(`${gw.base}/_lb/status`, { headers: APP });
    expect(noOps.status).toBe(401);
  });

  it('`loadwise status` reads that page: the app token with --header, a table per service', async () => {
    const p = spawnScript(
      GATEWAY_BIN,
      ['status', '--url', `${gw.base}/_lb/status`, '--header', `authorization: Bearer ${TOKEN}`],
      { LOADWISE_STATUS_TOKEN: OPS, LOADWISE_STATUS_TOKEN_HEADER: 'x-loadwise-token' },
    );
    expect(await p.exited).toBe(0);
    const lines = p.stdout().split('\n');
    const users = lines.findIndex((l) => l.startsWith('service users: strategy load-aware'));
    const orders = lines.findIndex((l) => l.startsWith('service orders: strategy load-aware'));
    expect(users).toBeGreaterThan(0);
    expect(orders).toBeGreaterThan(users);
    const ids = (from: number, to?: number): string[] =>
      lines
        .slice(from, to)
        .map((l) => /^(\S+) +healthy /.exec(l)?.[1])
        .filter((id): id is string => id !== undefined)
        .sort();
    expect(ids(users, orders)).toEqual(['users-1', 'users-2']);
    expect(ids(orders)).toEqual(['orders-1', 'orders-2']);
  });

  it('each balancer hears only its own agents: no LW_GW_UNKNOWN_BACKEND, one registry with a service label', async () => {
    // A few more report rounds (every 250 ms) after every agent was heard.
    await new Promise((r) => setTimeout(r, 1500));
    // Fresh at one instant: a report is fresh for 1 s, so a starved agent or test process
    // could miss that instant; the next report (250 ms) makes it fresh again.
    let text = '';
    await eventually(
      async () => {
        const res = await fetch(`${gw.base}/_lb/metrics`, {
          headers: { 'x-loadwise-token': OPS },
        });
        expect(res.status).toBe(200);
        text = await res.text();
        return /^loadwise_backend_report_fresh\{[^}]*\} 0$/m.test(text) === false;
      },
      5_000,
      () => `every report fresh in /_lb/metrics:\n${text}`,
    );
    expect(text).not.toContain('LW_GW_UNKNOWN_BACKEND');
    expect(text).toMatch(/^loadwise_backend_report_fresh\{service="users",backend="users-1"\} 1$/m);
    expect(text).toMatch(
      /^loadwise_backend_report_fresh\{service="orders",backend="orders-2"\} 1$/m,
    );
    expect(text).toMatch(
      /^loadwise_picks_total\{service="users",backend="users-[12]",strategy="load-aware"\} \d+$/m,
    );
    expect(gw.stderr()).not.toContain('LW_GW_UNKNOWN_BACKEND');
  });

  it('WebSocket upgrades go through the app: auth and mount paths apply', async () => {
    const ws = (p: string): string => `${gw.base.replace('http', 'ws')}${p}`;
    await expect(wsExchange(ws('/api/users/ws'))).resolves.toEqual({ status: 401 });
    await expect(wsExchange(ws('/anything'), APP)).resolves.toEqual({ status: 404 });
    const users = await wsExchange(ws('/api/users/ws'), APP);
    expect(users).toEqual({ echo: expect.stringMatching(/^users-[12]: ping$/) });
    const orders = await wsExchange(ws('/api/orders/ws'), APP);
    expect(orders).toEqual({ echo: expect.stringMatching(/^orders-[12]: ping$/) });
  });

  it('SIGTERM with a 2 s request in flight: the client gets 200, then everything stops', async () => {
    // Both users backends now take 2 s per request.
    for (const b of gw.backends.filter((x) => x.service === 'users')) {
      const r = await fetch(`${b.url}/admin/config`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ serviceMs: 2000 }),
      });
      expect(r.status).toBe(200);
    }
    const started = Date.now();
    const slow = fetch(`${gw.base}/api/users/slow`, { headers: APP });
    // SIGTERM once a users backend has it (its tracker says so), not after a guessed sleep:
    // a request not yet read when the server closes is on an idle connection, and is closed.
    const inFlightAtUsers = async (): Promise<boolean> => {
      for (const b of gw.backends.filter((x) => x.service === 'users')) {
        const stats = await fetch(`${b.url}${TRACKER_STATS_PATH}`);
        if (((await stats.json()) as { inFlight: number }).inFlight > 0) return true;
      }
      return false;
    };
    await eventually(inFlightAtUsers, 10_000, 'the slow request at a users backend');
    gw.child.kill('SIGTERM');
    const res = await slow;
    expect(res.status).toBe(200);
    expect(await res.json()).toMatchObject({ path: '/slow' });
    expect(Date.now() - started).toBeGreaterThanOrEqual(1900);
    expect(await gw.exited).toEqual({ code: 0, signal: null });
    expect(gw.stdout).toContain('stopped');
    // The agents, backends and broker stop after the balancers closed: no
    // balancer says so (nothing fires after close()).
    expect(gw.stderr()).not.toMatch(/backend \S+ (down|ejected)|broker connection lost/);
    // The backends it started are gone too.
    for (const b of gw.backends) {
      await expect(fetch(`${b.url}/health`)).rejects.toThrow();
    }
  }, 20_000);
});

describe('existing-gateway with empty token variables and a broker URL with a password', () => {
  test('takes LB_TOKEN= and GATEWAY_TOKEN= as unset (the built-in tokens, printed), and masks the password', async () => {
    const broker = await startEmbeddedBroker();
    const url = new URL(broker.url);
    url.username = 'gw';
    url.password = 'broker-secret';
    const env = { ...process.env, LB_TOKEN: '', GATEWAY_TOKEN: '' };
    let gw: Started | undefined;
    try {
      gw = await start([], env, url.href);
      const out = gw.stdout.join('\n');
      expect(out).not.toContain('broker-secret');
      expect(out).toContain(`(broker mqtt://***@${url.host})`);
      expect(out).toContain(
        "-H 'authorization: Bearer app-token' -H 'x-loadwise-token: ops-token-123'",
      );
      // The status page takes the built-in ops token: the handlers were not given ''.
      const res = await fetch(`${gw.base}/_lb/status`, {
        headers: { authorization: 'Bearer app-token', 'x-loadwise-token': 'ops-token-123' },
      });
      expect(res.status).toBe(200);
      gw.child.kill('SIGTERM');
      expect(await gw.exited).toEqual({ code: 0, signal: null });
    } finally {
      if (gw && gw.child.pid !== undefined && alive(gw.child.pid)) gw.child.kill('SIGKILL');
      await broker.close();
    }
  }, 40_000);
});

describe('existing-gateway refuses a flag it cannot use, before starting anything', () => {
  test.each([
    [
      ['--broker', 'http://x'],
      '--broker http://x: expected mqtt://, mqtts://, ws://, wss://, tcp:// or ssl://',
    ],
    [['--broker', 'mqtt://gw:pw@['], '--broker mqtt://***@[: not a URL'],
    [['--prefix', 'a b'], '--prefix: topic prefix "a b" must be levels of'],
    [['--status-token', ''], '--status-token must not be empty'],
    [['--token', ''], '--token must not be empty'],
  ])(
    '%j: one line, exit 2',
    async (flags, says) => {
      const p = spawnScript(SCRIPT, ['--port', '0', ...flags]);
      const guard = setTimeout(() => void p.kill(), 20_000);
      const code = await p.exited;
      clearTimeout(guard);
      expect(code).toBe(2);
      expect(p.stderr()).toMatch(/^existing-gateway: [^\n]+\n$/);
      expect(p.stderr()).toContain(says);
      // Nothing started: no backend line.
      expect(p.stdout()).toBe('');
    },
    30_000,
  );
});
