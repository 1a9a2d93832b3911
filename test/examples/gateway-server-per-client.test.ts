/**
 * examples/gateway-server.ts with LOADWISE_GW_MAX_IN_FLIGHT_PER_CLIENT and
 * LOADWISE_GW_TRUST_FORWARDED. Behind a front that keeps no client address
 * (an L4 balancer, examples/two-gateways/front.ts) every client is the front's
 * address, and the per-client bound is one bound for all of them: 130 slow
 * uploads from one client got every other client 429 LW_GW_CLIENT_LIMIT, and
 * the program had no variable to raise the bound, turn it off, or trust the
 * proxies in front.
 */
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import { ManagedChild, waitForListening } from '../../examples/lib/processes';
import { configFromEnv } from '../../examples/gateway-server';

const GATEWAY_SERVER = path.resolve(__dirname, '../../examples/dist/gateway-server.js');
const BACKENDS = { LOADWISE_GW_BACKENDS: 'api-1=http://127.0.0.1:9' };

describe('configFromEnv', () => {
  it('reads LOADWISE_GW_MAX_IN_FLIGHT_PER_CLIENT: a bound, or off', () => {
    const bound = (v: string): unknown =>
      configFromEnv({ ...BACKENDS, LOADWISE_GW_MAX_IN_FLIGHT_PER_CLIENT: v }).options
        .maxInFlightPerClient;
    expect(bound('')).toBeUndefined();
    expect(bound('1')).toBe(1);
    expect(bound('5000')).toBe(5000);
    expect(bound('1000000')).toBe(1_000_000);
    expect(bound('off')).toBe(false);
    expect(bound('false')).toBe(false);
    for (const bad of ['0', '-1', '1.5', '1e3', '1000001', 'no', ' 64'])
      expect(() => bound(bad)).toThrow(
        `LOADWISE_GW_MAX_IN_FLIGHT_PER_CLIENT: not an integer 1..1000000 or off (got ${JSON.stringify(bad)})`,
      );
  });

  // WebSockets have their own per-address bound (256), shared behind such a front too: a
  // re-review opened 260 upgrades with the request bound off, and the 257th got 429.
  it('reads LOADWISE_GW_WS_MAX_PER_CLIENT: a bound, or off', () => {
    const ws = (v: string): unknown =>
      configFromEnv({ ...BACKENDS, LOADWISE_GW_WS_MAX_PER_CLIENT: v }).options.webSockets;
    expect(ws('')).toBeUndefined();
    expect(ws('2000')).toEqual({ maxPerClient: 2000 });
    expect(ws('off')).toEqual({ maxPerClient: false });
    for (const bad of ['0', '1e3', 'OFF'])
      expect(() => ws(bad)).toThrow(
        `LOADWISE_GW_WS_MAX_PER_CLIENT: not an integer 1..1000000 or off (got ${JSON.stringify(bad)})`,
      );
  });

  it('reads LOADWISE_GW_STATUS_TOKEN=off as statusToken: false (open on purpose, no warning)', () => {
    const token = (v: string): unknown =>
      configFromEnv({ ...BACKENDS, LOADWISE_GW_STATUS_TOKEN: v }).options.statusToken;
    expect(token('')).toBeUndefined();
    expect(token('off')).toBe(false);
    expect(token('FALSE')).toBe(false);
    expect(token('a-long-token')).toBe('a-long-token');
    // Short: refused naming the variable (the value is a secret: never shown).
    expect(() => token('short')).toThrow(
      'LOADWISE_GW_STATUS_TOKEN: at least 8 visible ASCII characters, or off (got a value that is not)',
    );
  });

  it('reads LOADWISE_GW_TRUST_FORWARDED: a number of proxies, true or false', () => {
    const trust = (v: string): unknown =>
      configFromEnv({ ...BACKENDS, LOADWISE_GW_TRUST_FORWARDED: v }).options.trustForwarded;
    expect(trust('')).toBeUndefined();
    expect(trust('0')).toBe(0);
    expect(trust('2')).toBe(2);
    expect(trust('32')).toBe(32);
    expect(trust('true')).toBe(1);
    expect(trust('false')).toBe(0);
    for (const bad of ['33', '-1', '1.0', 'yes', 'TRUE'])
      expect(() => trust(bad)).toThrow(
        `LOADWISE_GW_TRUST_FORWARDED: not an integer 0..32, true or false (got ${JSON.stringify(bad)})`,
      );
  });
});

describe('gateway-server behind a front that keeps no client address', () => {
  const held: http.ServerResponse[] = [];
  let backend: http.Server;
  let backendUrl: string;
  const gateways: ManagedChild[] = [];

  beforeAll(async () => {
    // Holds /slow until the test lets them go (slow uploads, as in the review); answers the
    // rest (the gateway's health checks and warm-up among them) at once.
    backend = http.createServer((req, res) => {
      if (req.url === '/slow') held.push(res);
      else res.end('ok');
    });
    await new Promise<void>((r) => backend.listen(0, '127.0.0.1', r));
    backendUrl = `http://127.0.0.1:${(backend.address() as AddressInfo).port}`;
  });
  afterEach(async () => {
    for (const res of held.splice(0)) res.end('ok');
    for (const g of gateways.splice(0)) await g.stop('SIGKILL');
  });
  afterAll(async () => {
    backend.closeAllConnections();
    await new Promise((r) => backend.close(r));
  });

  async function start(env: Record<string, string>): Promise<number> {
    const gateway = new ManagedChild('gateway-server', process.execPath, [GATEWAY_SERVER], {
      PATH: process.env.PATH,
      LOADWISE_GW_BACKENDS: `api-1=${backendUrl}`,
      LOADWISE_GW_PORT: '0',
      ...env,
    });
    gateways.push(gateway);
    return waitForListening(gateway, 15_000);
  }

  /** Opens `n` requests that the backend holds, and waits until it has them all. */
  async function hold(port: number, n: number, headers: Record<string, string> = {}) {
    const before = held.length;
    const answers = Array.from({ length: n }, () =>
      fetch(`http://127.0.0.1:${port}/slow`, { headers }).then(async (r) => {
        await r.arrayBuffer();
        return r.status;
      }),
    );
    const deadline = Date.now() + 10_000;
    while (held.length < before + n && Date.now() < deadline)
      await new Promise((r) => setTimeout(r, 20));
    expect(held.length).toBe(before + n);
    return answers;
  }

  async function another(port: number, headers: Record<string, string> = {}) {
    const r = await fetch(`http://127.0.0.1:${port}/fast`, {
      headers,
      signal: AbortSignal.timeout(5_000),
    });
    const body = await r.text();
    return { status: r.status, limited: body.includes('LW_GW_CLIENT_LIMIT') };
  }

  test('LOADWISE_GW_MAX_IN_FLIGHT_PER_CLIENT bounds one address, and off lifts the bound', async () => {
    const bounded = await start({ LOADWISE_GW_MAX_IN_FLIGHT_PER_CLIENT: '3' });
    const slow = await hold(bounded, 3);
    // Every client comes from 127.0.0.1 here, as every client does behind the front.
    expect(await another(bounded)).toEqual({ status: 429, limited: true });
    for (const res of held.splice(0)) res.end('ok');
    expect(await Promise.all(slow)).toEqual([200, 200, 200]);

    const off = await start({ LOADWISE_GW_MAX_IN_FLIGHT_PER_CLIENT: 'off' });
    const many = await hold(off, 70); // above the default bound, 64
    expect((await another(off)).limited).toBe(false);
    for (const res of held.splice(0)) res.end('ok');
    expect(new Set(await Promise.all(many))).toEqual(new Set([200]));
  }, 40_000);

  test('LOADWISE_GW_TRUST_FORWARDED counts the client its proxy names, not the proxy', async () => {
    const port = await start({
      LOADWISE_GW_MAX_IN_FLIGHT_PER_CLIENT: '2',
      LOADWISE_GW_TRUST_FORWARDED: '1',
    });
    const attacker = { 'x-forwarded-for': '203.0.113.66' };
    const slow = await hold(port, 2, attacker);
    expect(await another(port, attacker)).toEqual({ status: 429, limited: true });
    // Another client behind the same proxy (the same socket address) is served.
    expect(await another(port, { 'x-forwarded-for': '198.51.100.7' })).toEqual({
      status: 200,
      limited: false,
    });
    for (const res of held.splice(0)) res.end('ok');
    expect(await Promise.all(slow)).toEqual([200, 200]);
  }, 40_000);
});
