/**
 * The example backend's runtime knobs (POST /admin/config) are for the operator on its
 * host: a gateway on the same host connects from loopback too, and a review changed a
 * backend for every gateway through one (`{"failStatus":500}`).
 */
import { startFleet, type Fleet } from '../kit/fleet';
import { startLocalGateway, type TestGateway } from '../kit/gateway';

describe('examples/backend.ts /admin', () => {
  let fleet: Fleet;
  let gw: TestGateway;
  beforeAll(async () => {
    fleet = await startFleet({ prefix: 'backend-admin', backends: [{ id: 'b1', agent: false }] });
    gw = await startLocalGateway({ backends: fleet.backendConfig(), warmUp: false });
  });
  afterAll(async () => {
    await gw.close();
    await fleet.close();
  });

  const post = (base: string): Promise<Response> =>
    fetch(`${base}/admin/config`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ failStatus: 500 }),
    });

  it('refuses a request a gateway proxied, though it comes from loopback', async () => {
    expect((await post(gw.url)).status).toBe(403);
    // Unchanged: the backend still answers 200 through the gateway.
    expect((await fetch(`${gw.url}/`)).status).toBe(200);
  });

  it("takes the operator's own request on its host", async () => {
    const b1 = fleet.get('b1');
    expect((await post(b1.url)).status).toBe(200);
    await b1.configure({ failStatus: 0 });
  });
});
