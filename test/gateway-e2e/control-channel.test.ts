/**
 * Proof: someone who can publish on the broker cannot steer the gateway.
 * Each case is one of the attacks that worked before the control channel was
 * locked down, run against real agents (signing with the fleet's key), a real
 * broker and a real gateway under load:
 *
 * - forged `draining`, `offline` and `down` claims (they took a backend's
 *   share from 1/3 to 0, sent all traffic to one backend, or answered 503 to
 *   everything): refused, every backend keeps its share;
 * - a forged `(epochMs, seq)` far ahead (it made the genuine agent's reports
 *   "replays" for a minute): the genuine agent is still heard;
 * - retained forged and stale `offline` statuses (a gateway started later
 *   answered 503 to every request): ignored by a gateway started afterwards;
 * - with `allowUnsigned`, the same claims unsigned: never exclude a backend,
 *   only make it look busier within the bound;
 * - a flood (thousands of messages a second): cut by the rate limits, counted,
 *   requests keep being served and genuine reports keep arriving.
 *
 * No timing thresholds: counts, shares and codes.
 */
import type { MqttClient } from 'mqtt';
import { createEncoder, encodeMessage, topicFor, type MetricsBody } from '@loadwise/protocol';
import {
  brokerTargets,
  clearRetained,
  connectClient,
  endClient,
  uniquePrefix,
} from '../kit/brokers';
import { eventually, startFleet, type Fleet } from '../kit/fleet';
import { runHostile } from '../kit/hostile';
import { counter, everyBackendHealthy, startGateway, type TestGateway } from '../kit/gateway';
import { failed, fire, shares } from '../kit/load';
import { internals } from '@loadwise/gateway-plugin/internals';

/** Every claim that would take a backend out of rotation, if believed. */
const HOSTILE: MetricsBody = {
  intervalMs: 250,
  state: 'draining',
  host: { cpuUtilization: 1, memoryUtilization: 1, memoryAvailableBytes: 0 },
  queue: { inFlight: 4, queued: 500, source: { inFlight: 'tracker', queued: 'tracker' } },
  concurrencyLimit: 1,
  health: { verdict: 'down', reason: 'forged' },
};
const IDS = ['a', 'b', 'c'];

// Real processes on a shared machine: starting the fleet alone can take seconds.
jest.setTimeout(60_000);
const REQUESTS = 300;

describe.each(brokerTargets())('control channel under attack on $name', (target) => {
  let broker: { url: string; close(): Promise<void> };
  let prefix: string;
  let fleet: Fleet | undefined;
  const gateways: TestGateway[] = [];
  let attacker: MqttClient | undefined;

  const gateway = async (extra: Record<string, unknown> = {}): Promise<TestGateway> => {
    const gw = await startGateway({
      backends: fleet!.backendConfig(),
      broker: broker.url,
      topicPrefix: prefix,
      keys: fleet!.keys,
      healthCheck: { path: '/health', intervalMs: 1000 },
      ...extra,
    });
    gateways.push(gw);
    return gw;
  };
  const dropped = (gw: TestGateway, from: number, code: string): number =>
    gw.events.slice(from).filter((e) => e.name === 'invalid-message' && e.data['code'] === code)
      .length;
  const publishAll = async (msgs: { topic: string; payload: string }[], retain = false) => {
    for (const m of msgs) await attacker!.publishAsync(m.topic, m.payload, { qos: 1, retain });
  };

  beforeAll(async () => {
    broker = await target.start();
    prefix = uniquePrefix('ctl');
    fleet = await startFleet({
      brokerUrl: broker.url,
      prefix,
      backends: IDS.map((id) => ({ id, slots: 4, serviceMs: 10 })),
    });
    attacker = await connectClient(broker.url);
  });

  afterAll(async () => {
    if (attacker) {
      await clearRetained(
        attacker,
        IDS.map((id) => topicFor(prefix, id, 'status')),
      );
      await endClient(attacker);
    }
    for (const gw of gateways) await gw.close();
    await fleet?.close();
    await broker?.close();
  });

  it('refuses forged draining, offline and down claims and a poisoned sequence: shares stay, the agent is still heard', async () => {
    const gw = await gateway();
    await eventually(() => gw.snapshot().backends.every((b) => b.reportFresh), 15_000, 'fresh');
    const url = `${gw.url}/work`;
    const before = await fire({ url, total: REQUESTS, concurrency: 6 });
    expect(failed(before)).toBe(0);

    const from = gw.events.length;
    const forged = IDS.flatMap((id) => {
      const enc = createEncoder({ backendId: id, prefix });
      return [enc.status('draining'), enc.status('offline'), enc.metrics(HOSTILE)];
    });
    // A far-ahead sequence in a's current epoch, and an epoch an hour ahead.
    const seen = gw.backend('a');
    expect(seen.lastReport).not.toBeNull();
    const real = createEncoder({ backendId: 'a', prefix }).metrics(HOSTILE).message;
    const poison = [
      encodeMessage(prefix, { ...real, state: 'online', seq: 2 ** 52 }),
      encodeMessage(prefix, { ...real, epochMs: Date.now() + 3_600_000, seq: 0 }),
    ];
    await publishAll([...forged, ...poison]);
    await eventually(
      () => dropped(gw, from, 'LW_PROTO_UNSIGNED') >= forged.length + poison.length,
      10_000,
      'forgeries refused',
    );
    // Three rounds' worth: with free slots everywhere one slow response can idle a backend
    // for the ~2 s the gateway's peak latency memory of it takes to decay (load/peak-ewma.ts).
    const after = await fire({ url, total: 3 * REQUESTS, concurrency: 6 });
    expect(failed(after)).toBe(0);
    const s = shares(after);
    // Measured 0 for the "drained" backends before the fix; now each keeps a fair part.
    for (const id of IDS) expect([id, s[id]! > 0.08]).toEqual([id, true]);
    expect(gw.events.slice(from).some((e) => e.name === 'backend-draining')).toBe(false);
    // Healthy (waited for: a starved probe can report one "down" that the next report ends;
    // a forged drain would have stayed, and emits backend-draining above).
    await everyBackendHealthy(gw);
    // The genuine agent of a is still heard: new reports, none taken for a replay.
    const reportsBefore = fleet!.monitor!.backends.get('a')!.reports;
    await eventually(
      () => fleet!.monitor!.backends.get('a')!.reports >= reportsBefore + 3,
      10_000,
      'three more reports of a',
    );
    await eventually(() => gw.backend('a').reportAgeMs! < 1000, 5_000, 'a fresh');
    expect(dropped(gw, from, 'LW_PROTO_REPLAY')).toBe(0);
    console.log(
      `[${target.name}] shares before ${JSON.stringify(shares(before))} after forged claims ${JSON.stringify(s)}`,
    );
  });

  it('a gateway started after retained forged and stale offline statuses serves every request', async () => {
    const offline = IDS.flatMap((id) => {
      const enc = createEncoder({ backendId: id, prefix });
      return [enc.status('offline'), enc.status('offline', { reason: 'forged twice' })];
    });
    // Signed with the real key but an hour old: an agent stopped long ago, or a recording.
    const stale = createEncoder({
      backendId: 'c',
      prefix,
      key: fleet!.keys[0],
      now: () => Date.now() - 3_600_000,
    }).status('offline', { reason: 'agent stopped' });
    await publishAll([...offline, stale], true);

    const gw = await gateway();
    const result = await fire({ url: `${gw.url}/work`, total: REQUESTS, concurrency: 6 });
    expect(failed(result)).toBe(0);
    expect([...result.servedBy.keys()].sort()).toEqual(IDS);
    expect(dropped(gw, 0, 'LW_PROTO_UNSIGNED')).toBeGreaterThanOrEqual(2);
    expect(dropped(gw, 0, 'LW_PROTO_STALE')).toBe(1);
    expect(await counter(gw, 'invalid_messages_total', { code: 'LW_PROTO_STALE' })).toBe(1);
  });

  it('with allowUnsigned, unsigned claims never exclude a backend: statuses are ignored, reports only add a bounded penalty', async () => {
    const gw = await gateway({ allowUnsigned: true });
    await eventually(() => gw.snapshot().backends.every((b) => b.reportFresh), 15_000, 'fresh');
    const from = gw.events.length;
    const enc = createEncoder({ backendId: 'a', prefix });
    // Keep the forged claims fresh while the load runs (a report counts for 3 intervals).
    let forging = true;
    const forger = (async () => {
      while (forging) {
        await publishAll([enc.status('draining'), enc.metrics(HOSTILE)]);
        await new Promise((r) => setTimeout(r, 150));
      }
    })();
    try {
      await eventually(() => dropped(gw, from, 'LW_GW_UNSIGNED_IGNORED') >= 1, 10_000, 'ignored');
      // The forged report may double a's expected wait (unsignedMaxPenalty 2), no more: a
      // costs what a genuinely busy backend would. While b and c have free slots that is
      // enough to keep a idle (12 clients leave them 3-4 in flight each, measured); once
      // they queue past twice a's wait, a takes its part. 24 clients on 12 slots queue b
      // and c (a new request there waits >= 3.25 service times against a's 2). One slow
      // response on a (the gateway's peak latency memory of it, decaying over ~2 s) can
      // idle it for a while on top: the round is long enough to see it come back.
      // What this test holds is "never excluded": a forged `draining` status took a to 0
      // before the fix. How large a's part is under the penalty is a property of the
      // expected-wait routing and the machine's timing (measured 0.042-0.14 over fresh-clone
      // runs, lowest on the in-process aedes broker), so the bound is 1% of 2,400
      // requests (24), not a share.
      const result = await fire({ url: `${gw.url}/work`, total: 8 * REQUESTS, concurrency: 24 });
      expect(failed(result)).toBe(0);
      const s = shares(result);
      expect(s['a']).toBeGreaterThan(0.01);
      const penalty = (
        internals(gw.lb).registry.get('a')!.load.snapshot(Date.now()) as {
          penaltyFactor: number;
        }
      ).penaltyFactor;
      // The forgery counts (the factor also carries a's genuine, signed CPU figure, so
      // its bound is checked in unsigned-report.test.ts, not here).
      expect(penalty).toBeGreaterThan(1);
      console.log(
        `[${target.name}] allowUnsigned, a forged as draining/down: shares ${JSON.stringify(s)}`,
      );
    } finally {
      forging = false;
      await forger;
    }
    expect(gw.events.slice(from).some((e) => e.name === 'backend-draining')).toBe(false);
    expect(gw.backend('a').state).toBe('healthy');
    // Its genuine, signed report is what the status page shows.
    expect(gw.backend('a').lastReport?.concurrencyLimit).toBe(4);
  });

  it('cuts a flood at the rate limits, counts it, and keeps serving and hearing the agents', async () => {
    // allowUnsigned: the forgeries get past the signature check and meet the
    // per-backend buckets (with keys alone they die at the signature check).
    // No overload shedding: it answers 503 on event-loop delay, which on a
    // shared machine says more about the neighbours than about the flood
    // (bench/hostile/control-flood.ts measures the latency).
    const gw = await gateway({ allowUnsigned: true, overload: false });
    await eventually(() => gw.snapshot().backends.every((b) => b.reportFresh), 15_000, 'fresh');
    const limited = async (): Promise<number> =>
      counter(gw, 'invalid_messages_total', { code: 'LW_GW_RATE_LIMITED' });
    const before = await limited();
    const payloads = IDS.map((id) => createEncoder({ backendId: id, prefix }).metrics(HOSTILE));
    const flood = runHostile({
      brokerUrl: broker.url,
      mode: 'flood',
      topics: payloads.map((p) => p.topic),
      payloads: payloads.map((p) => p.payload),
      ratePerSec: 3000,
      durationMs: 2000,
    });
    const load = await fire({ url: `${gw.url}/work`, total: REQUESTS, concurrency: 6 });
    const { sent } = await flood;
    const why = load.failures.map((f) => `${f.status} ${String(f.headers['x-loadwise-error'])}`);
    expect([failed(load), why]).toEqual([0, []]);
    // What reached the gateway beyond 20/s per backend (burst 40) is dropped
    // and counted (a broker may also shed part of a QoS 0 flood to a busy subscriber).
    await eventually(async () => (await limited()) - before >= sent * 0.5, 10_000, 'flood cut');
    console.log(`[${target.name}] flood: ${sent} sent, ${(await limited()) - before} rate-limited`);
    // The genuine agents kept reporting through it: the forgeries used the unsigned buckets.
    await eventually(
      () => gw.snapshot().backends.every((b) => b.reportFresh && b.reportAgeMs! < 1000),
      5_000,
      'fresh reports after the flood',
    );
    for (const id of IDS) expect(gw.backend(id).lastReport?.concurrencyLimit).toBe(4);
    // Healthy (waited for: a starved probe can report one "down" that the next report ends;
    // a forged drain would have stayed, and emits backend-draining above).
    await everyBackendHealthy(gw);
  });
});
