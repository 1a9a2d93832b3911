import { send, startBackend, startGateway, type TestGateway, type TestServer } from './kit';

describe('proxying', () => {
  let a: TestServer;
  let gw: TestGateway | undefined;
  beforeAll(async () => {
    a = await startBackend('a');
  });
  afterEach(async () => {
    await gw?.close();
    gw = undefined;
  });
  afterAll(() => a.close());

  it('forwards method, path, query and body to the backend', async () => {
    gw = await startGateway({ backends: [{ id: 'a', url: a.url }], strategy: 'round-robin' });
    const r = await send(`${gw.url}/x/y?z=1`, {
      method: 'POST',
      body: 'hello',
      headers: { 'content-type': 'text/plain' },
    });
    expect(r.status).toBe(200);
    const j = r.json<{ id: string; method: string; url: string; body: string }>();
    expect(j).toMatchObject({ id: 'a', method: 'POST', url: '/x/y?z=1', body: 'hello' });
  });
});
