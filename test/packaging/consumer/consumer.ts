// A TypeScript consumer, compiled with "module": "node16" in a project that
// installed the packed tarballs: the README's gateway, agent and protocol
// usage, end to end, in one process. Prints one JSON line; exits 0 on success.
import { randomBytes } from 'node:crypto';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import express from 'express';
import {
  GatewayError,
  loadBalance,
  type BalancerSnapshot,
  type LoadBalanceOptions,
} from '@loadwise/gateway-plugin';
import { createAgent, trackRequests, type AgentOptions } from '@loadwise/health-agent';
import {
  createDecoder,
  createEncoder,
  type SigningKey,
  type StatusMessage,
} from '@loadwise/protocol';

const PREFIX = 'packtest';
const STATUS_TOKEN = 'pack-test-status-token';

function listen(app: express.Express): Promise<{ server: http.Server; url: string }> {
  return new Promise((resolve) => {
    const server = http.createServer(app).listen(0, '127.0.0.1', () => {
      resolve({ server, url: `http://127.0.0.1:${(server.address() as AddressInfo).port}` });
    });
  });
}

async function until(check: () => boolean, what: string): Promise<void> {
  const deadline = Date.now() + 15_000;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`timed out: ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

async function main(): Promise<void> {
  // Protocol: encode, then decode what was encoded.
  const encoder = createEncoder({ backendId: 'api-1', prefix: PREFIX });
  const encoded = encoder.status('draining', { reason: 'pack test' });
  const decoded = createDecoder({ prefix: PREFIX }).decode(encoded.topic, encoded.payload);
  if (!decoded.ok) throw new Error(`decode failed: ${decoded.code}`);
  const status = decoded.message as StatusMessage;

  // A backend with the request tracker.
  const tracker = trackRequests({ concurrencyLimit: 4 });
  const backendApp = express();
  backendApp.use(tracker);
  backendApp.get('/hello', (_req, res) => {
    res.send('hello from api-1');
  });
  const backend = await listen(backendApp);

  // The gateway: app.use(loadBalance(opts)) with the embedded broker, holding the key the
  // agent signs with (a gateway without keys refuses every report, as the README says).
  const key: SigningKey = { keyId: 'pack', secret: randomBytes(32) };
  const options: LoadBalanceOptions = {
    backends: [{ id: 'api-1', url: backend.url }],
    broker: { embedded: true },
    topicPrefix: PREFIX,
    keys: [key],
    statusPath: '/_lb/status',
    // As the README sets it: without one the gateway warns (status-unprotected), a second
    // stderr line the pack test does not expect.
    statusToken: STATUS_TOKEN,
  };
  const lb = loadBalance(options);
  const gatewayApp = express();
  gatewayApp.use(lb);
  const gateway = await listen(gatewayApp);
  await lb.ready();

  // The agent, in-process, reading the tracker.
  const agentOptions: AgentOptions = {
    backendId: 'api-1',
    broker: { url: lb.balancer.brokerUrl! },
    prefix: PREFIX,
    intervalMs: 100,
    jitterMs: 0,
    queue: { source: 'tracker', tracker },
    cgroup: false,
    signingKey: key,
  };
  const agent = createAgent(agentOptions);
  await agent.start();
  await until(() => lb.balancer.snapshot().backends[0]!.reportFresh, 'a fresh agent report');

  const res = await fetch(`${gateway.url}/hello`);
  const body = await res.text();
  const snapshot = (await (
    await fetch(`${gateway.url}/_lb/status`, { headers: { 'x-loadwise-token': STATUS_TOKEN } })
  ).json()) as BalancerSnapshot;

  let errorCode: string | undefined;
  try {
    loadBalance({ backends: [] });
  } catch (err) {
    if (err instanceof GatewayError) errorCode = err.code;
  }

  // The agent says `offline` as it stops; the gateway logs the backend down (one warning,
  // the pack test expects it). Waiting for it keeps the log from racing lb.close().
  await agent.stop({ graceMs: 0 });
  await until(() => lb.balancer.snapshot().backends[0]!.state === 'down', 'api-1 seen offline');
  await lb.close();
  tracker.close();
  for (const s of [gateway.server, backend.server]) {
    s.closeAllConnections();
    await new Promise<void>((r) => s.close(() => r()));
  }
  process.stdout.write(
    `${JSON.stringify({
      decoded: { kind: status.kind, state: status.state, reason: status.reason },
      proxied: { status: res.status, body },
      reportFresh: snapshot.backends[0]!.reportFresh,
      errorCode,
    })}\n`,
  );
}

main().catch((err: unknown) => {
  process.stderr.write(`${(err as Error).stack ?? String(err)}\n`);
  process.exit(1);
});
