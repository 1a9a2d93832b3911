/**
 * A backend that is the gateway itself (a configured URL with the gateway's own port, a
 * registration naming its listener): every request sent to it came back and was proxied
 * again, so three client requests became 195 before the per-client limit stopped them.
 * Now a request that comes back is answered 508 LW_GW_LOOP, and the backend it came
 * through is out of rotation for good; a forged X-Loadwise-Via costs its sender a 508
 * and takes nothing out; two gateways in a chain pass each other's requests on.
 */
import http from 'node:http';
import express from 'express';
import {
  loadBalance,
  type LoadBalanceOptions,
  type LoadBalancerMiddleware,
} from '@loadwise/gateway-plugin';
import { listen, send, startBackend, type TestServer } from '../kit/http';
import { quietLogger } from '../kit/gateway';
import { internals, MAX_RETURNS } from '@loadwise/gateway-plugin/internals';
import { wsExchange } from '../kit/ws-client';

interface Gateway extends TestServer {
  lb: LoadBalancerMiddleware;
  /** Requests that reached this gateway's app, looped ones included. */
  arrived: () => number;
  errors: string[];
}

/** A gateway whose port is known before its options are built, so a backend can name it. */
async function gatewayNamingItself(
  opts: (
    self: string,
  ) => Omit<LoadBalanceOptions, 'logger'> | Promise<Omit<LoadBalanceOptions, 'logger'>>,
): Promise<Gateway> {
  const server = http.createServer();
  const srv = await listen(server);
  let arrived = 0;
  const errors: string[] = [];
  const lb = loadBalance({
    overload: false,
    warmUp: false,
    healthCheck: false,
    logger: { ...quietLogger, error: (_f: unknown, msg?: string) => errors.push(msg ?? '') },
    ...(await opts(srv.url)),
  });
  const app = express();
  app.use((_req, _res, next) => {
    arrived++;
    next();
  });
  app.use(lb);
  server.on('request', app);
  server.on('upgrade', lb.upgrade);
  return {
    ...srv,
    lb,
    arrived: () => arrived,
    errors,
    close: async () => {
      const closed = srv.close();
      await lb.close();
      await closed;
    },
  };
}

let a: TestServer;
const open: Gateway[] = [];
beforeAll(async () => {
  a = await startBackend('a');
});
afterEach(async () => {
  for (const gw of open.splice(0)) await gw.close();
});
afterAll(() => a.close());

const condition = (gw: Gateway, id: string) =>
  gw.lb.balancer.snapshot().backends.find((b) => b.id === id)!;

it('answers 508 to a request that came back, and takes the backend that is itself out for good', async () => {
  const gw = await gatewayNamingItself((self) => ({ backends: [{ id: 'self', url: self }] }));
  open.push(gw);
  const first = await send(`${gw.url}/x`);
  expect([first.status, first.headers['x-loadwise-error']]).toEqual([508, 'LW_GW_LOOP']);
  // The client's request and the one that came back: nothing more.
  expect(gw.arrived()).toBe(2);
  expect(condition(gw, 'self')).toMatchObject({
    state: 'down',
    stateReason: expect.stringMatching(/this gateway itself/),
  });
  // And, the only backend gone, that nothing routable is left (the 503 below).
  expect(gw.errors).toEqual([
    expect.stringMatching(/^backend self \(http:\/\/127\.0\.0\.1:\d+\/\) is this gateway itself/),
    expect.stringMatching(/^no routable backend is left .* 503 LW_GW_NO_BACKEND/),
  ]);
  const next = await send(`${gw.url}/y`);
  expect([next.status, next.headers['x-loadwise-error']]).toEqual([503, 'LW_GW_NO_BACKEND']);
  expect(gw.arrived()).toBe(3);
});

it('serves from the other backends once the loop is found', async () => {
  const gw = await gatewayNamingItself((self) => ({
    backends: [
      { id: 'self', url: self },
      { id: 'a', url: a.url },
    ],
  }));
  open.push(gw);
  const statuses: number[] = [];
  for (let i = 0; i < 30; i++) statuses.push((await send(`${gw.url}/r${i}`)).status);
  // At most the one request that found the loop; every other one served by `a`.
  expect(statuses.filter((s) => s !== 200).length).toBeLessThanOrEqual(1);
  expect(statuses.filter((s) => s !== 200 && s !== 508)).toEqual([]);
  expect(gw.arrived()).toBeLessThanOrEqual(31);
  if (statuses.includes(508)) expect(condition(gw, 'self')).toMatchObject({ state: 'down' });
});

it('refuses a WebSocket upgrade that came back', async () => {
  const gw = await gatewayNamingItself((self) => ({ backends: [{ id: 'self', url: self }] }));
  open.push(gw);
  expect(await wsExchange(gw.url.replace('http', 'ws') + '/ws')).toEqual({ status: 508 });
  expect(condition(gw, 'self')).toMatchObject({ state: 'down' });
});

it('takes nothing out for a forged X-Loadwise-Via, and passes a chain of gateways on', async () => {
  const inner = await gatewayNamingItself(() => ({ backends: [{ id: 'a', url: a.url }] }));
  open.push(inner);
  const outer = await gatewayNamingItself(() => ({ backends: [{ id: 'inner', url: inner.url }] }));
  open.push(outer);
  // Through both: each adds its entry, and neither takes the other's for its own.
  const r = await send(`${outer.url}/chain`);
  expect(r.status).toBe(200);
  const via = String(r.json<{ headers: Record<string, string> }>().headers['x-loadwise-via']);
  expect(via).toMatch(/^[0-9a-f]{12}\/inner, [0-9a-f]{12}\/a$/);

  // The inner gateway's id, as the backend saw it: a client that learnt it and sends it.
  const innerEntry = via.split(', ')[1]!;
  const once = await send(`${inner.url}/forged`, { headers: { 'x-loadwise-via': innerEntry } });
  expect(once.status).toBe(200);
  const many = Array(MAX_RETURNS).fill(innerEntry).join(', ');
  const forged = await send(`${inner.url}/forged`, { headers: { 'x-loadwise-via': many } });
  expect([forged.status, forged.headers['x-loadwise-error']]).toEqual([508, 'LW_GW_LOOP']);
  expect(condition(inner, 'a')).toMatchObject({ state: 'healthy' });
  expect(inner.errors).toEqual([]);
  expect((await send(`${inner.url}/after`)).status).toBe(200);
});

it('finds the loop by its own last entry, whatever entries of it a client forged before', async () => {
  // An HTTP-side review: a client that learnt the gateway's id sent `<id>/b1` on every
  // request; the loop check read the first of the gateway's entries (the forged one), so
  // the proof named the wrong backend, every request went round MAX_RETURNS times and the
  // backend that is the gateway itself stayed in rotation.
  const gw = await gatewayNamingItself((self) => ({ backends: [{ id: 'self', url: self }] }));
  open.push(gw);
  const forged = `${internals(gw.lb).loops.id}/b1`;
  const r = await send(`${gw.url}/x`, { headers: { 'x-loadwise-via': forged } });
  expect([r.status, r.headers['x-loadwise-error']]).toEqual([508, 'LW_GW_LOOP']);
  expect(gw.arrived()).toBe(2);
  expect(condition(gw, 'self')).toMatchObject({ state: 'down' });
});

it('answers a loop through two gateways after a bounded number of turns', async () => {
  // A sends to B, B sends back to A: A sees its own entry on a connection that is not its
  // own (B's), serves it as a callback would be, until its entries come back MAX_RETURNS
  // times: a 508, and nobody is taken out on a header's word.
  let gwB: Gateway | undefined;
  const gwA = await gatewayNamingItself(async (self) => {
    gwB = await gatewayNamingItself(() => ({ backends: [{ id: 'a', url: self }] }));
    open.push(gwB);
    return { backends: [{ id: 'b', url: gwB.url }] };
  });
  open.push(gwA);
  const r = await send(`${gwA.url}/loop`);
  expect([r.status, r.headers['x-loadwise-error']]).toEqual([508, 'LW_GW_LOOP']);
  expect([gwA.arrived(), gwB!.arrived()]).toEqual([1 + MAX_RETURNS, MAX_RETURNS]);
  expect(condition(gwA, 'b')).toMatchObject({ state: 'healthy' });
  expect(gwA.errors).toEqual([]);
});

it('serves a backend that calls back through the gateway and passes the headers on', async () => {
  // A BFF or SSR layer, or nginx's proxy_pass, forwards every header of the request it
  // serves, X-Loadwise-Via included, on its own request back through the gateway: the
  // first version answered that 508.
  let gatewayUrl = '';
  const bff = await startBackend('bff', (req, res) => {
    if (req.url !== '/page') return void res.end('part');
    const headers = { ...req.headers } as Record<string, string>;
    delete headers.host;
    send(`${gatewayUrl}/part`, { headers }).then(
      (part) => res.end(`page(${part.status} ${part.body})`),
      (err: Error) => res.end(`page(${err.message})`),
    );
  });
  try {
    const gw = await gatewayNamingItself(() => ({ backends: [{ id: 'bff', url: bff.url }] }));
    open.push(gw);
    gatewayUrl = gw.url;
    const r = await send(`${gw.url}/page`);
    expect([r.status, r.body]).toEqual([200, 'page(200 part)']);
    expect(condition(gw, 'bff')).toMatchObject({ state: 'healthy' });
  } finally {
    for (const gw of open.splice(0)) await gw.close();
    await bff.close();
  }
});
