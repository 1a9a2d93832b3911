/**
 * The tracker serves its stats to loopback clients only (trackRequests, exposePath). A
 * gateway on the same host connects from loopback too, so before the tracker looked at the
 * forwarding headers any client of the gateway read them, and held rise long polls open for
 * up to a minute each. A real gateway in front of a real tracked backend on loopback.
 */
import express from 'express';
import { trackRequests } from '@loadwise/health-agent';
import { get, listen, type Listening } from '../kit/agent-http';
import { startLocalGateway, type TestGateway } from '../kit/gateway';

const STATS = '/.well-known/loadwise/stats';

describe('the tracker behind a gateway on the same host', () => {
  let backend: Listening;
  let gw: TestGateway;
  beforeAll(async () => {
    const app = express();
    app.use(trackRequests({ exposePath: STATS }));
    app.get('/hello', (_req, res) => void res.send('hi'));
    backend = await listen(app);
    gw = await startLocalGateway({ backends: [{ id: 'b', url: backend.url }] });
  });
  afterAll(async () => {
    await gw.close();
    await backend.close();
  });

  it('refuses the stats to a client of the gateway, serves them to the agent beside it', async () => {
    expect((await get(`${gw.url}/hello`)).status).toBe(200);
    const through = await get(`${gw.url}${STATS}`);
    expect(through.status).toBe(403);
    // The long poll too: refused at once, not held open.
    expect((await get(`${gw.url}${STATS}?rise=1000&from=0&waitMs=60000`)).status).toBe(403);
    // The agent, reading from loopback without a proxy between: served.
    const direct = await get(`${backend.url}${STATS}`);
    expect(direct.status).toBe(200);
    expect(JSON.parse(direct.body)).toMatchObject({ completed: 1 });
  });
});
