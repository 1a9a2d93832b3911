/**
 * examples/two-gateways: two gateway processes on one broker behind the
 * round-robin TCP front. Requests through the front reach both gateways;
 * an agent's report (drain, then undrain) changes routing on both. run.js
 * prints the broker URL without its password.
 */
import http from 'node:http';
import { readdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { spawnScript } from '../kit/agent-cli';
import { startEmbeddedBroker, type EmbeddedBroker } from '@loadwise/gateway-plugin';
import type { BalancerSnapshot } from '@loadwise/gateway-plugin';
import { startCluster, type Cluster } from '../../examples/two-gateways/cluster';
import { eventually } from '../kit/fleet';

/** `n` GETs through the front, each on a connection of its own (the front balances connections). */
async function send(
  url: string,
  n: number,
): Promise<{ status: number; gateway: string; backend: string }[]> {
  const one = (): Promise<{ status: number; gateway: string; backend: string }> =>
    new Promise((resolve, reject) => {
      http
        .get(`${url}/hello`, { agent: false }, (res) => {
          res.resume();
          res.on('end', () =>
            resolve({
              status: res.statusCode ?? 0,
              gateway: String(res.headers['x-loadwise-gateway']),
              backend: String(res.headers['x-served-by']),
            }),
          );
        })
        .on('error', reject);
    });
  const out = [];
  for (let i = 0; i < n; i++) out.push(await one());
  return out;
}

function count<T>(items: T[]): Map<T, number> {
  const m = new Map<T, number>();
  for (const i of items) m.set(i, (m.get(i) ?? 0) + 1);
  return m;
}

async function status(gatewayUrl: string): Promise<BalancerSnapshot> {
  const res = await fetch(`${gatewayUrl}/_lb/status`);
  return (await res.json()) as BalancerSnapshot;
}

describe('examples/two-gateways: two gateways, one broker, a round-robin front', () => {
  let broker: EmbeddedBroker;
  let cluster: Cluster | undefined;

  beforeAll(async () => {
    broker = await startEmbeddedBroker();
    cluster = await startCluster({
      brokerUrl: broker.url,
      prefix: 'lwtest/two-gw',
      intervalMs: 250,
    });
    for (const g of cluster.gateways) {
      await eventually(
        async () => (await status(g.url)).backends.every((b) => b.reportFresh),
        20_000,
        `${g.id}: fresh reports from every agent`,
      );
    }
  }, 60_000);

  afterAll(async () => {
    await cluster?.close();
    await broker?.close();
  });

  it('sends requests through the front to both gateways, and each proxies them', async () => {
    const replies = await send(cluster!.url, 20);
    expect(replies.every((r) => r.status === 200)).toBe(true);
    const byGateway = count(replies.map((r) => r.gateway));
    // One request per connection, connections alternate: 10 each.
    expect(byGateway).toEqual(
      new Map([
        ['gw-1', 10],
        ['gw-2', 10],
      ]),
    );
    expect(cluster!.front.handed).toEqual([10, 10]);
    for (const r of replies) expect(['b1', 'b2', 'b3']).toContain(r.backend);
  });

  it('routes on an agent report in both gateways: a drained backend gets nothing, then comes back', async () => {
    const agent = cluster!.agents.get('b1')!;
    agent.signal('SIGUSR2'); // what `loadwise-agent drain --pid` sends
    for (const g of cluster!.gateways) {
      await eventually(
        async () => (await status(g.url)).backends.find((b) => b.id === 'b1')!.state === 'draining',
        10_000,
        `${g.id} sees b1 draining`,
      );
    }
    const during = await send(cluster!.url, 30);
    expect(during.every((r) => r.status === 200)).toBe(true);
    expect(count(during.map((r) => r.backend)).get('b1') ?? 0).toBe(0);
    expect(new Set(during.map((r) => r.gateway))).toEqual(new Set(['gw-1', 'gw-2']));

    agent.signal('SIGHUP'); // `loadwise-agent undrain`
    for (const g of cluster!.gateways) {
      await eventually(
        async () => (await status(g.url)).backends.find((b) => b.id === 'b1')!.state === 'healthy',
        10_000,
        `${g.id} sees b1 healthy again`,
      );
    }
    // b1 is eligible again on both gateways: it serves some of the next requests.
    let servedByB1 = 0;
    await eventually(
      async () => {
        const after = await send(cluster!.url, 20);
        servedByB1 += after.filter((r) => r.backend === 'b1').length;
        return servedByB1 > 0;
      },
      15_000,
      () => `b1 served ${servedByB1} requests after undrain`,
    );
  }, 60_000);

  it('keeps serving through the front when one gateway stops', async () => {
    await cluster!.gateways[0]!.process.stop('SIGTERM');
    const replies = await send(cluster!.url, 6);
    expect(replies.map((r) => r.status)).toEqual([200, 200, 200, 200, 200, 200]);
    expect(new Set(replies.map((r) => r.gateway))).toEqual(new Set(['gw-2']));
  }, 20_000);
});

test('run.js prints a --broker URL with its credentials masked', async () => {
  const broker = await startEmbeddedBroker();
  const url = new URL(broker.url);
  url.username = 'gw';
  url.password = 'broker-secret';
  const run = spawnScript(path.resolve(__dirname, '../../examples/dist/two-gateways/run.js'), [
    '--port',
    '0',
    '--broker',
    url.href,
    '--prefix',
    'lwtest/two-gw-run',
  ]);
  try {
    await eventually(
      () => /^front /m.test(run.stdout()),
      30_000,
      () => `the front line (${run.stderr()})`,
    );
    expect(run.stdout()).toContain(`broker   mqtt://***@${url.host}, topic prefix`);
    expect(run.stdout()).not.toContain('broker-secret');
    run.child.kill('SIGINT');
    expect(await run.exited).toBe(0);
  } finally {
    await run.kill();
    await broker.close();
  }
}, 60_000);

test('startCluster stopped while it starts: what it started is stopped, its files removed', async () => {
  // Ctrl-C in run.js's first seconds: the run's key and pid files were left in /tmp.
  const before = readdirSync(tmpdir()).filter((f) =>
    /^(lw-two-gw-|loadwise-two-gateways-)/.test(f),
  );
  const broker = await startEmbeddedBroker();
  const starting = new AbortController();
  const started = startCluster({
    brokerUrl: broker.url,
    prefix: 'lwtest/two-gw-abort',
    signal: starting.signal,
  });
  starting.abort(new Error('stopped while starting'));
  try {
    await expect(started).rejects.toThrow('stopped while starting');
    const after = readdirSync(tmpdir()).filter((f) =>
      /^(lw-two-gw-|loadwise-two-gateways-)/.test(f),
    );
    expect(after).toEqual(before);
  } finally {
    await broker.close();
  }
});
