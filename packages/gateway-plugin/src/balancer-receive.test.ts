/**
 * The control channel's rules at the gateway, message by message, through
 * Balancer.receive (what the MQTT source calls for every delivered message)
 * with an injected clock: the default posture refuses unsigned reports with
 * one warning; allowUnsigned lets them only raise an expected wait, within
 * the bound, for their freshness; forged sequence numbers lock nobody out;
 * stale retained claims are ignored; floods are cut by the rate limits. Every
 * drop is counted by code.
 */
import {
  createEncoder,
  encodeMessage,
  signPayload,
  type MetricsBody,
  type SigningKey,
} from '@loadwise/protocol';
import type { Balancer } from './balancer';
import type { LoadBalanceOptions, Logger } from './options';
import { calmReport, testBalancer } from './test-balancer';

const T0 = 1_800_000_000_000;
const PREFIX = 'rx';
const key: SigningKey = { keyId: 'k1', secret: Buffer.alloc(32, 5) };

const calm = calmReport;
/** What a forger sends: every claim that would take the backend out, if believed. */
const hostile: MetricsBody = {
  ...calm,
  state: 'draining',
  queue: { inFlight: 8, queued: 500, source: { inFlight: 'tracker', queued: 'tracker' } },
  concurrencyLimit: 1,
  health: { verdict: 'down' },
};

interface Rig {
  lb: Balancer;
  clock: { t: number };
  drops: string[];
  warnings: string[];
  send(m: { topic: string; payload: string | Buffer }, retained?: boolean): void;
  counted(code: string): Promise<number>;
  close(): Promise<void>;
}

function rig(extra: Partial<LoadBalanceOptions> = {}): Rig {
  const clock = { t: T0 };
  const warnings: string[] = [];
  // pino-style calls pass (fields, msg): keep the sentence.
  const logger: Logger = {
    info: () => {},
    warn: (a: object | string, msg?: string) => void warnings.push(msg ?? String(a)),
    error: () => {},
  };
  const lb = testBalancer(
    ['a', 'b', 'c'].map((id, i) => ({ id, url: `http://127.0.0.1:${9100 + i}` })),
    () => clock.t,
    { topicPrefix: PREFIX, logger, ...extra },
  );
  const drops: string[] = [];
  lb.on('invalid-message', (e) => drops.push(e.code));
  return {
    lb,
    clock,
    drops,
    warnings,
    send: (m, retained = false) => lb.receive(m.topic, Buffer.from(m.payload), retained),
    async counted(code) {
      const metric = lb.metrics.registry.getSingleMetric('loadwise_invalid_messages_total');
      const values = (await metric!.get()).values;
      return values.find((v) => v.labels['code'] === code)?.value ?? 0;
    },
    close: () => lb.close(),
  };
}

const eligible = (lb: Balancer): string[] => lb.registry.eligible.map((b) => b.id);
const waitOf = (r: Rig, id: string): number =>
  r.lb.registry.get(id)!.load.expectedWaitMs(r.clock.t);

describe('default posture: no keys, unsigned refused', () => {
  it('refuses forged draining, offline and down claims, counts each, and warns once', async () => {
    const r = rig();
    try {
      for (const id of ['a', 'b', 'c']) {
        const forger = createEncoder({ backendId: id, prefix: PREFIX, now: () => r.clock.t });
        for (let i = 0; i < 10; i++) {
          r.send(forger.status('draining'));
          r.send(forger.status('offline'), true);
          r.send(forger.metrics(hostile));
        }
      }
      expect(eligible(r.lb)).toEqual(['a', 'b', 'c']);
      expect(new Set(r.drops)).toEqual(new Set(['LW_PROTO_UNSIGNED']));
      expect(await r.counted('LW_PROTO_UNSIGNED')).toBe(90);
      expect(r.warnings).toHaveLength(1);
      expect(r.warnings[0]).toMatch(/no signing keys are configured.*Set keys.*allowUnsigned/);
      // A signed report with a key the gateway does not have: refused too, as unknown key.
      const signed = createEncoder({ backendId: 'a', prefix: PREFIX, key, now: () => r.clock.t });
      r.send(signed.metrics(calm));
      expect(r.drops.at(-1)).toBe('LW_PROTO_UNKNOWN_KEY');
    } finally {
      await r.close();
    }
  });
});

describe('allowUnsigned: unsigned reports only raise an expected wait, within the bound', () => {
  it('ignores unsigned statuses and never excludes, however hostile the report', async () => {
    const r = rig({ allowUnsigned: true, unsignedMaxPenalty: 2 });
    try {
      const before = waitOf(r, 'a');
      const forger = createEncoder({ backendId: 'a', prefix: PREFIX, now: () => r.clock.t });
      r.send(forger.status('draining'));
      r.send(forger.status('offline'));
      r.send(forger.status('offline', { will: true }));
      expect(r.drops).toEqual(Array(3).fill('LW_GW_UNSIGNED_IGNORED'));
      r.send(forger.metrics(hostile));
      expect(eligible(r.lb)).toEqual(['a', 'b', 'c']);
      expect(r.lb.registry.get('a')!.conditionNow()).toBe('up');
      // Exactly the bound: twice the wait local signals give.
      expect(waitOf(r, 'a')).toBeCloseTo(2 * before, 9);
      expect(waitOf(r, 'b')).toBeCloseTo(before, 9);
      // Not shown as the backend's report, and gone once a report of its interval would be stale.
      expect(r.lb.snapshot().backends[0]).toMatchObject({ lastReport: null, reportFresh: false });
      r.clock.t += 3001;
      expect(waitOf(r, 'a')).toBeCloseTo(before, 9);
    } finally {
      await r.close();
    }
  });

  it('with keys too: signed messages still drain, unsigned ones still cannot', async () => {
    const r = rig({ keys: [key], allowUnsigned: true });
    try {
      const agent = createEncoder({ backendId: 'b', prefix: PREFIX, key, now: () => r.clock.t });
      r.send(agent.status('draining'));
      expect(eligible(r.lb)).toEqual(['a', 'c']);
      const forger = createEncoder({ backendId: 'b', prefix: PREFIX, now: () => r.clock.t });
      r.send(forger.status('online'));
      expect(eligible(r.lb)).toEqual(['a', 'c']);
      expect(r.drops).toEqual(['LW_GW_UNSIGNED_IGNORED']);
    } finally {
      await r.close();
    }
  });
});

describe('replay state cannot be poisoned', () => {
  it.each([
    ['keys, unsigned refused', { keys: [key] }],
    ['keys, unsigned allowed', { keys: [key], allowUnsigned: true }],
  ])(
    '%s: a forged far-ahead sequence or epoch locks the genuine agent out of nothing',
    async (_n, opts) => {
      const r = rig(opts);
      try {
        const agent = createEncoder({ backendId: 'a', prefix: PREFIX, key, now: () => r.clock.t });
        r.send(agent.metrics(calm));
        expect(r.lb.registry.get('a')!.lastReport).toBeDefined();
        const first = agent.metrics(calm).message;
        // Unsigned, same epoch, sequence far ahead; and an epoch an hour in the future.
        r.send(encodeMessage(PREFIX, { ...first, seq: 2 ** 52 }));
        r.send(encodeMessage(PREFIX, { ...first, epochMs: r.clock.t + 3_600_000, seq: 0 }));
        // Signed but from the future (a compromised or badly skewed agent): refused before it counts.
        r.send(encodeMessage(PREFIX, { ...first, epochMs: r.clock.t + 3_600_000, seq: 0 }, key));
        expect(r.drops.at(-1)).toBe('LW_PROTO_CLOCK_SKEW');
        const before = r.drops.length;
        for (let i = 0; i < 5; i++) {
          r.clock.t += 1000;
          r.send(agent.metrics(calm));
        }
        expect(r.drops.length).toBe(before); // all five genuine reports accepted
        expect(r.drops).not.toContain('LW_PROTO_REPLAY');
        expect(r.lb.snapshot().backends[0]!.reportAgeMs).toBe(0);
      } finally {
        await r.close();
      }
    },
  );
});

describe('signed messages that can change nothing', () => {
  it('are dropped before they are parsed: a report of an unknown id, a registration with discovery off', async () => {
    const r = rig({ keys: [key] });
    try {
      // Parsed, each gave the replay guard and the copy cache an entry per made-up id.
      // The body is not even JSON: no parse, so the drop is for the id, not the body.
      for (const kind of ['metrics', 'status'] as const) {
        const topic = `${PREFIX}/v1/backends/x1/${kind}`;
        r.send({ topic, payload: signPayload(topic, 'not json', key) });
      }
      const topic = `${PREFIX}/v1/backends/x1/register`;
      r.send({ topic, payload: signPayload(topic, 'not json', key) });
      expect(r.drops).toEqual([
        'LW_GW_UNKNOWN_BACKEND',
        'LW_GW_UNKNOWN_BACKEND',
        'LW_GW_REGISTRATION_REJECTED',
      ]);
      // A configured backend's message is parsed as before.
      const own = `${PREFIX}/v1/backends/a/metrics`;
      r.send({ topic: own, payload: signPayload(own, 'not json', key) });
      expect(r.drops.at(-1)).toBe('LW_PROTO_MALFORMED_JSON');
    } finally {
      await r.close();
    }
  });
});

describe('Last Will replays', () => {
  // An agent signs its will once per run and the broker publishes it to every
  // subscriber when the agent's connection breaks: anyone on the broker can keep a copy.
  it("cannot end a drain, bring back a stopped backend, or use up the agent's budget", async () => {
    const r = rig({
      keys: [key],
      messageLimits: { perBackendPerSec: 10, perBackendBurst: 20, totalPerSec: 50_000 },
    });
    try {
      const agent = createEncoder({ backendId: 'b', prefix: PREFIX, key, now: () => r.clock.t });
      const will = agent.status('offline', { will: true });
      r.send(agent.metrics(calm));
      r.send(will); // the connection broke once: a genuine will, the agent is lost
      expect([eligible(r.lb), r.lb.registry.get('b')!.agentLost]).toEqual([['a', 'b', 'c'], true]);
      r.clock.t += 1000;
      r.send(agent.metrics(calm)); // reconnected
      r.send(agent.status('draining'));
      expect(eligible(r.lb)).toEqual(['a', 'c']);
      for (let i = 0; i < 1000; i++) r.send(will);
      expect(eligible(r.lb)).toEqual(['a', 'c']);
      expect(r.lb.registry.get('b')!.condition).toBe('draining');
      // The first copy marked the agent lost (it may be); the others changed nothing and cost nothing.
      expect(await r.counted('LW_PROTO_REPLAY')).toBe(999);
      expect(await r.counted('LW_GW_RATE_LIMITED')).toBe(0);
      r.send(agent.metrics({ ...calm, state: 'draining' }));
      expect(r.lb.registry.get('b')!.lastReport?.state).toBe('draining');
      // A planned stop: the signed offline takes it out, and no will brings it back.
      r.send(agent.status('offline'));
      for (let i = 0; i < 10; i++) r.send(will);
      expect(eligible(r.lb)).toEqual(['a', 'c']);
      // The agent's next run: online, then its own will (a crash) leaves the backend routable.
      r.clock.t += 1000;
      const next = createEncoder({ backendId: 'b', prefix: PREFIX, key, now: () => r.clock.t });
      r.send(next.status('online'));
      r.send(next.status('offline', { will: true }));
      expect(eligible(r.lb)).toEqual(['a', 'b', 'c']);
    } finally {
      await r.close();
    }
  });

  it('signed messages of an unknown id do not use the bucket registrations need', async () => {
    const r = rig({
      keys: [key],
      discovery: { allowedRanges: ['127.0.0.0/8'] },
      messageLimits: { perBackendPerSec: 10, perBackendBurst: 20, totalPerSec: 50_000 },
    });
    try {
      const ghost = createEncoder({
        backendId: 'ghost',
        prefix: PREFIX,
        key,
        now: () => r.clock.t,
      });
      const will = ghost.status('offline', { will: true });
      const report = ghost.metrics(calm);
      for (let i = 0; i < 100; i++) {
        r.send(will);
        r.send(report);
      }
      expect(await r.counted('LW_GW_RATE_LIMITED')).toBe(0);
      const fresh = createEncoder({ backendId: 'new2', prefix: PREFIX, key, now: () => r.clock.t });
      r.send(fresh.registration('http://127.0.0.1:9200'));
      expect(r.lb.registry.get('new2')).toBeDefined();
    } finally {
      await r.close();
    }
  });
});

describe('registrations, charged per signing key', () => {
  // Agents' keys bound to their own ids (`<keyId> <secret> <backend id>`), and one key
  // shared by a fleet (unbound), as the key file allows.
  const own = (id: string, fill: number): SigningKey => ({
    keyId: `k-${id}`,
    secret: Buffer.alloc(32, fill),
    backends: [id],
  });
  const evilKey = own('evil', 7);
  const goodKey = own('good', 8);
  const fleetKey: SigningKey = { keyId: 'k-fleet', secret: Buffer.alloc(32, 9) };
  const agentOf = (r: Rig, id: string, by: SigningKey) =>
    createEncoder({ backendId: id, prefix: PREFIX, key: by, now: () => r.clock.t });

  /**
   * `seconds` of a flood by the holder of `by`: `perTick` refused registrations of its own
   * id (an address outside allowedRanges, so the id stays unknown) every 10 ms, each with
   * a fresh seq. `midway` runs after the first second, amid the flood.
   */
  function flood(r: Rig, by: SigningKey, perTick: number, seconds: number, midway: () => void) {
    const evil = agentOf(r, 'evil', by);
    for (let tick = 0; tick < seconds * 100; tick++) {
      for (let i = 0; i < perTick; i++) r.send(evil.registration('http://10.9.9.9:8080'));
      if (tick === 100) midway();
      r.clock.t += 10;
    }
  }

  it("never lets one key's flood of refused registrations keep another key's agent out", async () => {
    const r = rig({
      keys: [evilKey, goodKey],
      discovery: { allowedRanges: ['127.0.0.0/8'] },
    });
    const limited: string[] = [];
    r.lb.on('invalid-message', (e) => {
      if (e.code === 'LW_GW_RATE_LIMITED') limited.push(e.detail ?? '');
    });
    try {
      let admittedAt: number | undefined;
      const good = agentOf(r, 'good', goodKey);
      // 900 msg/s for 5 s. One bucket for every unknown id, refilled at 20/s, kept the
      // genuine agent out for as long as the flood lasted.
      flood(r, evilKey, 9, 5, () => {
        r.send(good.registration('http://127.0.0.1:9300'));
        if (r.lb.registry.get('good')) admittedAt = r.clock.t;
      });
      expect(admittedAt).toBe(T0 + 1_000);
      expect(r.lb.registry.get('evil')).toBeUndefined();
      // The flood had its own key's bucket: its burst (40), then 20/s.
      const refused = await r.counted('LW_GW_REGISTRATION_REJECTED');
      expect(refused).toBeGreaterThanOrEqual(40 + 20 * 5 - 2);
      expect(refused).toBeLessThanOrEqual(40 + 20 * 5 + 1);
      expect(refused + (await r.counted('LW_GW_RATE_LIMITED'))).toBe(4500);
      expect(new Set(limited)).toEqual(
        new Set(['signed message rate of unknown backends signed by key k-evil exceeded']),
      );
      // The admitted agent's reports are its own backend's, not dropped as unknown.
      r.send(good.metrics(calm));
      expect(r.lb.registry.get('good')!.lastReport?.seq).toBe(1);
    } finally {
      await r.close();
    }
  });

  it("gives a key shared by a fleet a fleet's burst, and its holder the reach of that key only", async () => {
    const r = rig({
      keys: [fleetKey, goodKey],
      discovery: { allowedRanges: ['127.0.0.0/8'], maxBackends: 62 },
    });
    try {
      // A gateway subscribing gets every retained registration of the fleet at once.
      for (let i = 0; i < 60; i++) {
        const agent = agentOf(r, `f${i}`, fleetKey);
        r.send(agent.registration(`http://127.0.0.1:${20_000 + i}`), true);
      }
      expect(r.lb.registry.discoveredCount).toBe(60);
      expect(await r.counted('LW_GW_RATE_LIMITED')).toBe(0);
      // A holder of the shared key floods: the agents of that key wait (documented), the
      // agents of another key do not.
      r.clock.t += 10_000;
      const late = agentOf(r, 'late', fleetKey);
      const good = agentOf(r, 'good', goodKey);
      flood(r, fleetKey, 9, 3, () => {
        r.send(late.registration('http://127.0.0.1:9301'));
        r.send(good.registration('http://127.0.0.1:9300'));
      });
      expect(r.lb.registry.get('good')).toBeDefined();
      expect(r.lb.registry.get('late')).toBeUndefined();
      // Once the flood is over, the key's next registration (an agent's renewal) gets in.
      r.clock.t += 1_000;
      r.send(late.registration('http://127.0.0.1:9301'));
      expect(r.lb.registry.get('late')).toBeDefined();
    } finally {
      await r.close();
    }
  });
});

describe("discovery's refused addresses", () => {
  /** Registers each url under its own id; the ids admitted, and why the others were refused. */
  async function register(
    allowedRanges: string[],
    urls: Record<string, string>,
  ): Promise<{ admitted: string[]; refused: Record<string, string> }> {
    const r = rig({ keys: [key], discovery: { allowedRanges } });
    const refused: Record<string, string> = {};
    r.lb.on('invalid-message', (e) => {
      if (e.code === 'LW_GW_REGISTRATION_REJECTED') refused[`${e.backendId}`] = e.detail ?? '';
    });
    try {
      for (const [id, url] of Object.entries(urls)) {
        const agent = createEncoder({ backendId: id, prefix: PREFIX, key, now: () => r.clock.t });
        r.send(agent.registration(url));
      }
      const admitted = [...r.lb.registry.backends.values()]
        .filter((b) => b.origin === 'discovery')
        .map((b) => b.id);
      return { admitted, refused };
    } finally {
      await r.close();
    }
  }

  it('refuses loopback and NAT64 (and NAT64 of a special IPv4) under ranges of everything', async () => {
    const { admitted, refused } = await register(['0.0.0.0/0', '::/0'], {
      gatewayStatus: 'http://127.0.0.1:8080/',
      loopback: 'http://127.1.2.3:9000/',
      loopback6: 'http://[::1]:9000/',
      nat64Metadata: 'http://[64:ff9b::169.254.169.254]/',
      nat64Loopback: 'http://[64:ff9b::7f00:1]:8080/',
      nat64: 'http://[64:ff9b::10.1.2.3]:9000/',
      compatMetadata: 'http://[::169.254.169.254]/',
      localNat64: 'http://[64:ff9b:1::a9fe:a9fe]/',
      plain: 'http://10.1.2.3:9000/',
    });
    expect(admitted).toEqual(['plain']);
    expect(Object.keys(refused).sort()).toEqual(
      [
        'gatewayStatus',
        'loopback',
        'loopback6',
        'nat64Metadata',
        'nat64Loopback',
        'nat64',
        'compatMetadata',
        'localNat64',
      ].sort(),
    );
    expect(refused['compatMetadata']).toMatch(/IPv4-compatible/);
    expect(refused['localNat64']).toMatch(/local-use NAT64/);
    expect(refused['gatewayStatus']).toMatch(/is loopback/);
    expect(refused['loopback6']).toMatch(/is loopback/);
    expect(refused['nat64Metadata']).toMatch(/NAT64 of 169\.254\.169\.254, link-local/);
    expect(refused['nat64Loopback']).toMatch(/NAT64 of 127\.0\.0\.1, loopback/);
    expect(refused['nat64']).toMatch(/is NAT64/);
  });

  it('refuses port 0, which no server listens on', async () => {
    const { admitted, refused } = await register(['127.0.0.0/8', '10.0.0.0/8', '::/0'], {
      zero: 'http://127.0.0.1:0',
      zeros: 'https://10.1.2.3:000/x',
      zero6: 'http://[2001:db8::1]:0/',
      plain: 'http://10.1.2.3:9000/',
    });
    expect(admitted).toEqual(['plain']);
    expect(refused).toEqual({
      zero: 'registration url "http://127.0.0.1:0": port 0 is no server\'s port',
      zeros: 'registration url "https://10.1.2.3:000/x": port 0 is no server\'s port',
      zero6: 'registration url "http://[2001:db8::1]:0/": port 0 is no server\'s port',
    });
  });

  it('admits loopback and NAT64 only inside a range that lies in those blocks', async () => {
    const { admitted, refused } = await register(
      ['0.0.0.0/0', '::/0', '127.0.0.2/32', '::1/128', '64:ff9b::/96'],
      {
        listed: 'http://127.0.0.2:9000/',
        unlisted: 'http://127.0.0.1:9000/',
        // Another port: every loopback address on one port is one server (server.ts hostKey).
        loopback6: 'http://[::1]:9001/',
        nat64: 'http://[64:ff9b::10.1.2.3]:9000/',
        nat64Metadata: 'http://[64:ff9b::169.254.169.254]/',
        nat64Multicast: 'http://[64:ff9b::224.0.0.1]/',
      },
    );
    expect(admitted.sort()).toEqual(['listed', 'loopback6', 'nat64']);
    expect(Object.keys(refused).sort()).toEqual(['nat64Metadata', 'nat64Multicast', 'unlisted']);
    // The quick start's and the tests' range.
    expect((await register(['127.0.0.0/8'], { q: 'http://127.0.0.1:9000/' })).admitted).toEqual([
      'q',
    ]);
  });
});

describe('what a dropped message held', () => {
  it('reaches the log and the event as printable ASCII only', async () => {
    const r = rig({ allowUnsigned: true });
    const details: string[] = [];
    r.lb.on('invalid-message', (e) => details.push(e.detail ?? ''));
    try {
      // V8's JSON error quotes the text around the fault: a CR, U+2028 and an escape sequence here.
      r.send({ topic: `${PREFIX}/v1/backends/a/metrics`, payload: 'x\r\u2028\u001b[2K' });
      expect(r.drops).toEqual(['LW_PROTO_MALFORMED_JSON']);
      expect(details).toHaveLength(1);
      expect(details[0]).toMatch(/^[\x20-\x7e]+$/);
    } finally {
      await r.close();
    }
  });
});

describe('retained messages', () => {
  it('ignores a signed retained offline older than maxRetainedAgeMs; honours a fresh one', async () => {
    const r = rig({ keys: [key] });
    try {
      const old = createEncoder({
        backendId: 'a',
        prefix: PREFIX,
        key,
        now: () => r.clock.t - 3_600_000,
      }).status('offline', { reason: 'agent stopped' });
      r.send(old, true);
      expect(r.drops).toEqual(['LW_PROTO_STALE']);
      expect(eligible(r.lb)).toEqual(['a', 'b', 'c']);
      // The Last Will is judged by its epoch, not its age: benign, the backend stays routable.
      const will = createEncoder({
        backendId: 'b',
        prefix: PREFIX,
        key,
        now: () => r.clock.t - 3_600_000,
      }).status('offline', { will: true });
      r.send(will, true);
      expect(r.drops).toHaveLength(1);
      expect(eligible(r.lb)).toEqual(['a', 'b', 'c']);
      const fresh = createEncoder({
        backendId: 'c',
        prefix: PREFIX,
        key,
        now: () => r.clock.t - 10_000,
      }).status('offline');
      r.send(fresh, true);
      expect(eligible(r.lb)).toEqual(['a', 'b']);
    } finally {
      await r.close();
    }
  });
});

describe('size and rate', () => {
  it('drops a payload above maxPayloadBytes before parsing it', async () => {
    const r = rig({ keys: [key] });
    try {
      r.send({ topic: `${PREFIX}/v1/backends/a/metrics`, payload: Buffer.alloc(16 * 1024, 0x7b) });
      expect(r.drops).toEqual(['LW_PROTO_TOO_LARGE']);
    } finally {
      await r.close();
    }
  });

  it("cuts a flood at the backend's bucket, never at a genuine agent's, counts each drop and logs once", async () => {
    const r = rig({
      keys: [key],
      allowUnsigned: true,
      messageLimits: { perBackendPerSec: 10, perBackendBurst: 20, totalPerSec: 5000 },
    });
    try {
      const forger = createEncoder({ backendId: 'a', prefix: PREFIX, now: () => r.clock.t });
      const forged = forger.metrics(hostile);
      const agent = createEncoder({ backendId: 'a', prefix: PREFIX, key, now: () => r.clock.t });
      const captured = agent.metrics(calm);
      r.send(captured);
      for (let i = 0; i < 1000; i++) {
        r.send(forged);
        r.send(captured); // a replay of a captured signed report: refused, and not charged
      }
      expect(await r.counted('LW_GW_RATE_LIMITED')).toBe(980);
      expect(await r.counted('LW_PROTO_REPLAY')).toBe(1000);
      expect(r.warnings.filter((w) => w.includes('LW_GW_RATE_LIMITED'))).toHaveLength(1);
      // The genuine agent's next reports get through: the flood used the unsigned bucket.
      for (let i = 0; i < 5; i++) r.send(agent.metrics(calm));
      expect(await r.counted('LW_GW_RATE_LIMITED')).toBe(980);
      expect(r.lb.registry.get('a')!.lastReport?.seq).toBe(5);
      // Random backend ids share one bucket per class.
      const before = await r.counted('LW_GW_RATE_LIMITED');
      for (let i = 0; i < 100; i++) {
        r.send({ topic: `${PREFIX}/v1/backends/x${i}/metrics`, payload: forged.payload });
      }
      expect((await r.counted('LW_GW_RATE_LIMITED')) - before).toBe(80);
    } finally {
      await r.close();
    }
  });

  it('caps the messages it looks at in all, before any check', async () => {
    const r = rig({ keys: [key], messageLimits: { totalPerSec: 100, totalBurst: 100 } });
    try {
      const junk = { topic: 'somewhere/else', payload: 'x' };
      for (let i = 0; i < 1000; i++) r.send(junk);
      expect(await r.counted('LW_GW_RATE_LIMITED')).toBe(900);
      expect(await r.counted('LW_PROTO_BAD_TOPIC')).toBe(100);
    } finally {
      await r.close();
    }
  });
});

describe('a burst of registrations (a gateway subscribing gets every retained one at once)', () => {
  it('recomputes the eligible set once for the burst, and before anything reads it', async () => {
    const r = rig({ keys: [key], discovery: { allowedRanges: ['10.0.0.0/8'], maxBackends: 500 } });
    const recompute = jest.spyOn(r.lb.registry, 'recompute');
    try {
      for (let i = 0; i < 300; i++) {
        const agent = createEncoder({
          backendId: `d${i}`,
          prefix: PREFIX,
          key,
          now: () => r.clock.t,
        });
        r.send(agent.registration(`http://10.0.${i >> 8}.${i & 255}:9000/`));
      }
      // One per registration, O(n²) in all, took 2.1 s for 3,000.
      expect(recompute).toHaveBeenCalledTimes(0);
      // Whatever reads the set (a request's pick) sees every one of them.
      expect(eligible(r.lb)).toHaveLength(303);
      expect(recompute).toHaveBeenCalledTimes(1);
      // A second server for a known one is still refused, by lookup.
      const twin = createEncoder({ backendId: 'twin', prefix: PREFIX, key, now: () => r.clock.t });
      const refused: string[] = [];
      r.lb.on('invalid-message', (e) => refused.push(e.detail ?? ''));
      r.send(twin.registration('http://10.0.0.7:9000/x'));
      expect(refused).toEqual(['http://10.0.0.7:9000 is the server of backend d7 already']);
    } finally {
      await r.close();
    }
  });

  it('takes the server as host and port, whatever the scheme: an https backend cannot be registered again as http', async () => {
    const r = rig({ keys: [key], discovery: { allowedRanges: ['10.0.0.0/8'] } });
    try {
      const refused: string[] = [];
      r.lb.on('invalid-message', (e) => refused.push(e.detail ?? ''));
      const reg = (id: string, url: string): void =>
        r.send(
          createEncoder({ backendId: id, prefix: PREFIX, key, now: () => r.clock.t }).registration(
            url,
          ),
        );
      reg('api', 'https://10.0.0.5:8443/');
      reg('api443', 'https://10.0.0.6/');
      // Keyed by URL origin these were other servers: the second id's requests (cookies,
      // tokens) went in cleartext to the TLS port, and failed over to the real backend
      // unseen.
      reg('rogue', 'http://10.0.0.5:8443/');
      reg('rogue443', 'http://10.0.0.6:443/');
      reg('same443', 'https://10.0.0.6:443/');
      expect(refused).toEqual([
        'http://10.0.0.5:8443 is the server of backend api already',
        'http://10.0.0.6:443 is the server of backend api443 already',
        'https://10.0.0.6 is the server of backend api443 already',
      ]);
      // Another port is another server, and so is port 80 beside an https default.
      reg('web', 'http://10.0.0.6/');
      expect(refused).toHaveLength(3);
      expect(r.lb.snapshot().backends.map((b) => b.id)).toEqual(
        expect.arrayContaining(['api', 'api443', 'web']),
      );
      expect(r.lb.snapshot().backends.map((b) => b.id)).not.toContain('rogue');
    } finally {
      await r.close();
    }
  });

  it("refuses another id at the address a configured backend's name resolves to", async () => {
    // Compared as text, `http://127.0.0.1:P` was another server than a configured
    // `http://localhost:P`: a key holder took a second id on it (a review: 165 of 300
    // requests on that one server, its estimate split into two that each looked idle).
    const clock = { t: T0 };
    const lb = testBalancer(
      [
        { id: 'named', url: 'http://localhost:9300' },
        { id: 'lit', url: 'http://127.0.0.1:9301' },
      ],
      () => clock.t,
      {
        topicPrefix: PREFIX,
        keys: [key],
        discovery: { allowedRanges: ['127.0.0.0/8', '::1/128'] },
      },
    );
    const refused: string[] = [];
    lb.on('invalid-message', (e) => refused.push(e.detail ?? ''));
    const reg = (id: string, at: string): void => {
      const m = createEncoder({ backendId: id, prefix: PREFIX, key, now: () => clock.t });
      const r = m.registration(at);
      lb.receive(r.topic, Buffer.from(r.payload), false);
    };
    try {
      // The name not resolved yet: nothing on its port can be told apart from it.
      reg('early', 'http://127.0.0.1:9300');
      expect(refused).toEqual([
        'http://127.0.0.1:9300 cannot be told apart from backend named yet: localhost is not resolved',
      ]);
      // Resolved (the system's resolver, /etc/hosts): each try is another agent's.
      for (let i = 0; i < 200 && refused.at(-1)!.includes('not resolved'); i++) {
        await new Promise((r) => setTimeout(r, 10));
        reg(`evil${i}`, 'http://127.0.0.1:9300');
      }
      expect(refused.at(-1)).toBe(
        'http://127.0.0.1:9300 is the server of backend named (localhost) already',
      );
      // Every loopback address reaches a server listening on all of them (Node's default):
      // one server, whatever the loopback address or family.
      reg('evil-2', 'http://127.0.0.2:9300');
      expect(refused.at(-1)).toBe(
        'http://127.0.0.2:9300 is the server of backend named (localhost) already',
      );
      reg('evil-6', 'http://[::1]:9300');
      expect(refused.at(-1)).toBe(
        'http://[::1]:9300 is the server of backend named (localhost) already',
      );
      // The literal one as before, and at another loopback address; another port is
      // another server.
      reg('evil-lit', 'http://127.0.0.1:9301/x');
      expect(refused.at(-1)).toBe('http://127.0.0.1:9301 is the server of backend lit already');
      reg('evil-lit3', 'http://127.0.0.3:9301');
      expect(refused.at(-1)).toBe('http://127.0.0.3:9301 is the server of backend lit already');
      const before = refused.length;
      reg('other', 'http://127.0.0.1:9302');
      expect(refused).toHaveLength(before);
      expect(lb.snapshot().backends.map((b) => b.id)).toEqual(['named', 'lit', 'other']);
      // A configured name that comes to resolve to a discovered backend's server (a DNS
      // change; a name that did not exist yet): that backend is let go, not kept beside it.
      const removed: Array<[string, string]> = [];
      lb.on('backend-removed', (e) => removed.push([e.id, e.reason]));
      (
        lb as unknown as {
          namedServerResolved(id: string, port: number, a: ReadonlySet<string>): void;
        }
      ).namedServerResolved('named', 9302, new Set(['loopback']));
      expect(removed).toEqual([['other', 'configured-server']]);
      expect(lb.snapshot().backends.map((b) => b.id)).toEqual(['named', 'lit']);
    } finally {
      await lb.close();
    }
  });

  it('recomputes on its own once the burst is over, with nobody reading', async () => {
    const r = rig({ keys: [key], discovery: { allowedRanges: ['10.0.0.0/8'] } });
    const recompute = jest.spyOn(r.lb.registry, 'recompute');
    try {
      const agent = createEncoder({ backendId: 'late', prefix: PREFIX, key, now: () => r.clock.t });
      r.send(agent.registration('http://10.9.9.9:9000/'));
      await new Promise((resolve) => setImmediate(resolve));
      expect(recompute).toHaveBeenCalledTimes(1);
      expect(r.lb.registry.eligible.map((b) => b.id)).toContain('late');
      expect(recompute).toHaveBeenCalledTimes(1);
    } finally {
      await r.close();
    }
  });
});
