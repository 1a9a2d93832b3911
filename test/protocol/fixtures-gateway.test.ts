import { readdirSync, readFileSync } from 'node:fs';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { loadBalance } from '@loadwise/gateway-plugin';
import { createDecoder, parseKeyFile } from '@loadwise/protocol';
import { connectClient, endClient } from '../kit/brokers';

/**
 * The gateway's side of the golden fixtures: every fixture, published through
 * a real broker to a real gateway, is either applied or dropped with exactly
 * the code the protocol's own decoder gives it (plus the gateway's allow-list
 * rules), and never crashes anything. Unsigned fixtures go to a gateway
 * without keys, signed ones to a gateway that requires signatures.
 */
const FIXTURES = join(__dirname, '..', '..', 'packages', 'protocol', 'fixtures');
const FIXTURE_NOW_MS = 1767225600000;

interface Fixture {
  file: string;
  signed: boolean;
  topic: string;
  payload: string;
}

const keys = parseKeyFile(readFileSync(join(FIXTURES, 'keys.txt'), 'utf8'));
const fixtures: Fixture[] = readdirSync(FIXTURES)
  .filter((f) => f.endsWith('.json'))
  .sort()
  .map((file) => ({ file, ...JSON.parse(readFileSync(join(FIXTURES, file), 'utf8')) }));

describe.each([
  { signed: false, label: 'unsigned fixtures, gateway without keys, allowUnsigned' },
  { signed: true, label: 'signed fixtures, gateway requiring signatures' },
])('golden fixtures through a gateway: $label', ({ signed }) => {
  let backend: http.Server;
  let lb: ReturnType<typeof loadBalance>;
  // The fixtures were stamped at FIXTURE_NOW_MS; the gateway's clock runs from there, from
  // when this block starts (not when jest collected the file: the other block runs first).
  let t0 = Date.now();
  const now = () => FIXTURE_NOW_MS + (Date.now() - t0);

  beforeAll(async () => {
    t0 = Date.now();
    backend = http.createServer((_req, res) => res.end('ok'));
    await new Promise<void>((resolve) => backend.listen(0, '127.0.0.1', resolve));
    const url = `http://127.0.0.1:${(backend.address() as AddressInfo).port}`;
    lb = loadBalance({
      // One server; a base path each, since two backends may not share a URL.
      backends: ['api-1', 'api-2', 'api-3'].map((id) => ({ id, url: `${url}/${id}` })),
      broker: { embedded: true },
      ...(signed ? { keys } : { allowUnsigned: true }),
      healthCheck: false,
      now,
      logger: { info: () => {}, warn: () => {}, error: () => {} },
    });
    await lb.ready();
  });

  afterAll(async () => {
    await lb.close();
    backend.closeAllConnections();
    await new Promise((resolve) => backend.close(resolve));
  });

  it('applies or drops each fixture exactly as the protocol decoder says', async () => {
    const mine = fixtures.filter((f) => f.signed === signed);
    // What the contract says, computed by the reference decoder over the same sequence.
    const reference = createDecoder({ ...(signed ? { keys } : {}), now });
    const expected: string[] = [];
    for (const f of mine) {
      const verified = reference.verify(f.topic, Buffer.from(f.payload));
      if (!verified.ok) {
        expected.push(verified.code);
        continue;
      }
      // Discovery is off: the gateway drops a signed registration before parsing it.
      if (verified.keyId !== undefined && verified.topic.kind === 'register') {
        expected.push('LW_GW_REGISTRATION_REJECTED');
        continue;
      }
      const r = reference.parse(verified);
      if (!r.ok) expected.push(r.code);
      else if (r.message.kind === 'register') expected.push('LW_GW_REGISTRATION_REJECTED');
      else if (!signed && r.message.kind === 'status') expected.push('LW_GW_UNSIGNED_IGNORED');
    }
    expect(expected.length).toBeGreaterThan(3);

    const dropped: string[] = [];
    lb.balancer.on('invalid-message', (e) => dropped.push(e.code));
    const pub = await connectClient(lb.balancer.brokerUrl!);
    try {
      for (const f of mine) await pub.publishAsync(f.topic, Buffer.from(f.payload), { qos: 1 });
      const deadline = Date.now() + 10_000;
      while (dropped.length < expected.length && Date.now() < deadline) {
        await new Promise((resolve) => setTimeout(resolve, 50));
      }
    } finally {
      await endClient(pub);
    }
    expect(dropped).toEqual(expected);

    const byId = Object.fromEntries(lb.balancer.snapshot().backends.map((b) => [b.id, b]));
    if (signed) {
      // The valid signed metrics were applied, field for field as the fixture says.
      expect(byId['api-1']!.lastReport).toMatchObject({
        inFlight: 12,
        queued: 3,
        concurrencyLimit: 16,
      });
    } else {
      // Unsigned: no report is taken as the backend's state, and the draining
      // report and status excluded nothing; api-1's report (3 queued on 16
      // slots) made it look busier, within the bound.
      for (const id of ['api-1', 'api-2', 'api-3']) {
        expect([id, byId[id]!.lastReport, byId[id]!.state]).toEqual([id, null, 'healthy']);
      }
      expect(byId['api-1']!.expectedWaitMs).toBeGreaterThan(
        byId['api-2']!.expectedWaitMs ?? Infinity,
      );
    }

    // And the gateway still routes, through a real server in front of it.
    const gateway = http.createServer((req, res) => lb(req, res, () => res.end('next')));
    await new Promise<void>((resolve) => gateway.listen(0, '127.0.0.1', resolve));
    try {
      const res = await fetch(`http://127.0.0.1:${(gateway.address() as AddressInfo).port}/x`);
      expect(res.status).toBe(200);
      expect(await res.text()).toBe('ok');
    } finally {
      gateway.closeAllConnections();
      await new Promise((resolve) => gateway.close(resolve));
    }
  });
});
