/**
 * The guarded pool against a real HTTP server: how many answers a
 * connection carries, and retiring a pool (at most once a second, on the
 * injected clock), with idle and busy connections.
 */
import http, { type Agent } from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import { createPoolAgent, retirePool, RETIRE_INTERVAL_MS } from './pool-agent';

let server: http.Server;
let port: number;
/** The client port of each request's connection, in order. */
const seen: number[] = [];
/** A request for /slow is answered when release() is called. */
let release: (() => void) | undefined;
let agents: Agent[] = [];

beforeAll(async () => {
  server = http.createServer((req, res) => {
    seen.push(req.socket.remotePort ?? 0);
    if (req.url === '/slow') release = () => res.end('slow');
    else res.end('ok');
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  port = (server.address() as AddressInfo).port;
});
afterEach(() => {
  for (const a of agents) a.destroy();
  agents = [];
  seen.length = 0;
  release = undefined;
});
afterAll(async () => {
  server.closeAllConnections();
  await new Promise((r) => server.close(r));
});

function get(agent: Agent, path = '/'): Promise<string> {
  return new Promise((resolve, reject) => {
    http
      .get({ host: '127.0.0.1', port, path, agent }, (res) => {
        let body = '';
        res.setEncoding('utf8');
        res.on('data', (d: string) => (body += d));
        res.on('end', () => resolve(body));
      })
      .on('error', reject);
  });
}

function pool(maxRequests: number, now: () => number = Date.now): Agent {
  const agent = createPoolAgent({ keepAlive: true }, undefined, maxRequests, () => {}, now);
  agents.push(agent);
  return agent;
}

const idle = (agent: Agent): Socket[] =>
  Object.values(agent.freeSockets).flatMap((list) => (list ?? []) as Socket[]);

describe('the guarded pool', () => {
  it('closes a connection after maxRequests answers', async () => {
    const agent = pool(3);
    for (let i = 0; i < 7; i++) expect(await get(agent)).toBe('ok');
    // Three, three, one: three connections in all.
    const [a, b, c] = [seen[0], seen[3], seen[6]];
    expect(seen).toEqual([a, a, a, b, b, b, c]);
    expect(new Set([a, b, c]).size).toBe(3);
  });

  it('retires idle connections at once, and again only after RETIRE_INTERVAL_MS', async () => {
    let clock = 1_000_000;
    const agent = pool(1000, () => clock);
    await Promise.all([get(agent), get(agent)]);
    const first = idle(agent);
    expect(first).toHaveLength(2);
    retirePool(agent);
    expect(first.every((s) => s.destroyed)).toBe(true);

    await Promise.all([get(agent), get(agent)]);
    const second = idle(agent).filter((s) => !s.destroyed);
    expect(second).toHaveLength(2);
    clock += RETIRE_INTERVAL_MS - 1;
    retirePool(agent);
    expect(second.some((s) => s.destroyed)).toBe(false);
    clock += 1;
    retirePool(agent);
    expect(second.every((s) => s.destroyed)).toBe(true);
  });

  it('closes a busy connection after its answer, not before', async () => {
    const agent = pool(1000);
    const slow = get(agent, '/slow');
    while (release === undefined) await new Promise((r) => setImmediate(r));
    retirePool(agent);
    release();
    expect(await slow).toBe('slow');
    expect(await get(agent)).toBe('ok');
    // The retired connection was not pooled: the next request had a new one.
    expect(seen).toHaveLength(2);
    expect(seen[1]).not.toBe(seen[0]);
  });
});
