/**
 * Proof: malformed, spoofed and replayed messages are dropped and counted,
 * never crash the gateway, and never route a request to an address that is
 * not allowed.
 *
 * The gateway requires signatures (key k1; the agents sign with it through
 * --key-file) and has discovery on, but only for 10.99.0.0/16. An attacker
 * with access to the broker publishes every kind of bad message under the
 * gateway's topic prefix, including a signed registration pointing at a
 * "trap" HTTP server on loopback (outside the allowed range). Each message
 * must be dropped with its protocol code, counted in the invalid-message
 * metric, and the trap must never see a request.
 */
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import type { MqttClient } from 'mqtt';
import {
  createEncoder,
  signPayload,
  topicFor,
  type MetricsBody,
  type SigningKey,
} from '@loadwise/protocol';
import { brokerTargets, connectClient, endClient, uniquePrefix } from '../kit/brokers';
import { eventually, startFleet, type Fleet } from '../kit/fleet';
import { counter, startGateway, type TestGateway } from '../kit/gateway';
import { fire, failed } from '../kit/load';

/** "I am idle": what a forger wants the gateway to believe. */
const IDLE: MetricsBody = {
  intervalMs: 250,
  state: 'online',
  host: { cpuUtilization: 0, memoryUtilization: 0, memoryAvailableBytes: 1e9 },
  queue: { inFlight: 0, queued: 0, source: { inFlight: 'tracker', queued: 'tracker' } },
  concurrencyLimit: 1000,
  health: { verdict: 'up' },
};

// Real processes on a shared machine: starting the fleet alone can take seconds.
jest.setTimeout(60_000);

describe.each(brokerTargets())('hostile messages on $name', (target) => {
  const k1: SigningKey = { keyId: 'k1', secret: randomBytes(32) };
  const dir = mkdtempSync(path.join(tmpdir(), 'lw-hostile-'));
  const keyFile = path.join(dir, 'keys');
  let broker: { url: string; close(): Promise<void> };
  let prefix: string;
  let fleet: Fleet | undefined;
  let gw: TestGateway | undefined;
  let attacker: MqttClient | undefined;
  let trap: http.Server;
  let trapHits = 0;

  beforeAll(async () => {
    writeFileSync(keyFile, `k1 ${k1.secret.toString('base64')}\n`, { mode: 0o600 });
    trap = http.createServer((_req, res) => {
      trapHits++;
      res.end('trapped');
    });
    await new Promise<void>((resolve) => trap.listen(0, '127.0.0.1', resolve));
    broker = await target.start();
    prefix = uniquePrefix('hostile');
    fleet = await startFleet({
      brokerUrl: broker.url,
      prefix,
      backends: ['a', 'b'].map((id) => ({ id, slots: 4, serviceMs: 5 })),
      agentArgs: ['--key-file', keyFile],
    });
    gw = await startGateway({
      backends: fleet.backendConfig(),
      broker: broker.url,
      topicPrefix: prefix,
      keys: [k1],
      discovery: { allowedRanges: ['10.99.0.0/16'] },
      healthCheck: { path: '/health', intervalMs: 1000 },
    });
    // Signed reports from the real agents get through.
    await eventually(
      () => gw!.snapshot().backends.every((b) => b.reportFresh),
      15_000,
      'fresh reports',
    );
    attacker = await connectClient(broker.url);
  });

  afterAll(async () => {
    if (attacker) await endClient(attacker);
    await gw?.close();
    await fleet?.close();
    await broker?.close();
    await new Promise<void>((resolve) => trap.close(() => resolve()));
    rmSync(dir, { recursive: true, force: true });
  });

  it('drops and counts every bad message, keeps serving, and never routes to the trap', async () => {
    const trapUrl = `http://127.0.0.1:${(trap.address() as AddressInfo).port}/`;
    const metricsTopic = (id: string): string => topicFor(prefix, id, 'metrics');
    // A real signed report of agent a, captured off the broker, to replay once
    // a newer one went out (so the gateway has certainly accepted one at least as new).
    const seen: Buffer[] = [];
    attacker!.on('message', (topic, payload) => {
      if (topic === metricsTopic('a')) seen.push(payload);
    });
    await attacker!.subscribeAsync(metricsTopic('a'));
    await eventually(() => seen.length >= 2, 10_000, 'two reports of a');
    await attacker!.unsubscribeAsync(metricsTopic('a'));
    const replayed = seen[0]!;

    const forgedKey: SigningKey = { keyId: 'k1', secret: randomBytes(32) };
    const unknownKey: SigningKey = { keyId: 'k9', secret: randomBytes(32) };
    const signedForA = createEncoder({ backendId: 'a', prefix, key: k1 }).metrics(IDLE);
    // One encoder for 'evil': two encoders started in the same millisecond would
    // share (epochMs, seq) and the second message would be a replay.
    const evil = createEncoder({ backendId: 'evil', prefix, key: k1 });
    const attacks: { name: string; topic: string; payload: string | Buffer; code: string }[] = [
      {
        name: 'unsigned idle report for b',
        ...createEncoder({ backendId: 'b', prefix }).metrics(IDLE),
        code: 'LW_PROTO_UNSIGNED',
      },
      {
        name: 'idle report for b signed with a forged secret',
        ...createEncoder({ backendId: 'b', prefix, key: forgedKey }).metrics(IDLE),
        code: 'LW_PROTO_BAD_SIGNATURE',
      },
      {
        name: 'signed with an unknown key id',
        ...createEncoder({ backendId: 'b', prefix, key: unknownKey }).metrics(IDLE),
        code: 'LW_PROTO_UNKNOWN_KEY',
      },
      {
        name: "a's validly signed report moved to b's topic",
        topic: metricsTopic('b'),
        payload: signedForA.payload,
        code: 'LW_PROTO_BAD_SIGNATURE',
      },
      {
        name: 'replayed report of a',
        topic: metricsTopic('a'),
        payload: replayed,
        code: 'LW_PROTO_REPLAY',
      },
      {
        name: 'signed, not JSON',
        topic: metricsTopic('a'),
        payload: signPayload(metricsTopic('a'), '{"v":1,', k1),
        code: 'LW_PROTO_MALFORMED_JSON',
      },
      {
        // Contains a line break: read as a body plus a trailer that is not a signature.
        name: 'binary garbage',
        topic: metricsTopic('a'),
        payload: Buffer.from('00ff13a7fe0a0d5c22', 'hex'),
        code: 'LW_PROTO_MALFORMED_JSON',
      },
      {
        // Above the decode bound (8 KiB), below the packet bound (64 KiB) the
        // broker is asked to keep: it arrives and is counted. Larger ones never
        // arrive (oversized.test.ts).
        name: 'oversized',
        topic: metricsTopic('a'),
        payload: Buffer.alloc(16 * 1024, 'x'),
        code: 'LW_PROTO_TOO_LARGE',
      },
      {
        name: 'signed report of a from an agent whose clock is an hour ahead',
        ...createEncoder({
          backendId: 'a',
          prefix,
          key: k1,
          now: () => Date.now() + 3_600_000,
        }).metrics(IDLE),
        code: 'LW_PROTO_CLOCK_SKEW',
      },
      {
        name: 'unknown kind in the topic',
        topic: `${prefix}/v1/backends/a/bogus`,
        payload: signedForA.payload,
        code: 'LW_PROTO_BAD_TOPIC',
      },
      {
        name: 'signed report for a backend not configured',
        ...evil.metrics(IDLE),
        code: 'LW_GW_UNKNOWN_BACKEND',
      },
      {
        name: 'signed registration outside the allowed ranges',
        ...evil.registration(trapUrl),
        code: 'LW_GW_REGISTRATION_REJECTED',
      },
      {
        name: 'unsigned registration',
        ...createEncoder({ backendId: 'evil2', prefix }).registration(trapUrl),
        code: 'LW_PROTO_UNSIGNED',
      },
    ];

    const eventsBefore = gw!.events.length;
    const countsBefore = new Map<string, number>();
    for (const code of new Set(attacks.map((a) => a.code))) {
      countsBefore.set(code, await counter(gw!, 'invalid_messages_total', { code }));
    }
    for (const a of attacks) await attacker!.publishAsync(a.topic, a.payload, { qos: 1 });

    const dropped = (): string[] =>
      gw!.events
        .slice(eventsBefore)
        .filter((e) => e.name === 'invalid-message')
        .map((e) => String(e.data['code']));
    await eventually(() => dropped().length >= attacks.length, 10_000, 'every attack dropped');
    // Exactly the expected codes (the agents' own reports are all valid and not in this list).
    expect(dropped().sort()).toEqual(attacks.map((a) => a.code).sort());
    for (const [code, before] of countsBefore) {
      const expected = attacks.filter((a) => a.code === code).length;
      expect({
        code,
        counted: (await counter(gw!, 'invalid_messages_total', { code })) - before,
      }).toEqual({
        code,
        counted: expected,
      });
    }

    // Still serving, only from the configured backends; the trap saw nothing.
    const result = await fire({ url: `${gw!.url}/work`, total: 200, concurrency: 8 });
    expect(failed(result)).toBe(0);
    expect([...result.servedBy.keys()].sort()).toEqual(['a', 'b']);
    expect(
      gw!
        .snapshot()
        .backends.map((b) => b.id)
        .sort(),
    ).toEqual(['a', 'b']);
    expect(gw!.events.some((e) => e.name === 'backend-added')).toBe(false);
    expect(trapHits).toBe(0);
    // The forged "idle" never replaced b's real report.
    expect(gw!.backend('b').lastReport?.concurrencyLimit).toBe(4);
  });
});
