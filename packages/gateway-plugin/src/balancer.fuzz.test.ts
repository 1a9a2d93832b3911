/**
 * Property-based tests of the gateway's message handler (Balancer.receive,
 * what the MQTT source calls for every delivered message) with fast-check:
 * thousands of generated messages (valid-shaped mutations of every kind,
 * signed with the right key, a wrong key or not at all, random bytes, huge
 * numbers, prototype-pollution keys, any topic) never throw, every drop is
 * counted with a catalogued code, no message changes a configured backend's
 * address or adds a backend outside the discovery rules, and no unsigned
 * message changes eligibility or lowers an expected wait.
 */
import fc from 'fast-check';
import {
  PROTOCOL_ERRORS,
  createEncoder,
  encodeMessage,
  signPayload,
  type Message,
  type SigningKey,
} from '@loadwise/protocol';
import type { Balancer } from './balancer';
import { DROP_REASONS } from './errors';
import type { LoadBalanceOptions } from './options';
import { testBalancer } from './test-balancer';

/**
 * `npm test` runs a quarter of the cases (a few seconds); `npm run test:fuzz`
 * runs them all (LOADWISE_FUZZ_SCALE=1), or more with a larger scale.
 */
const SCALE = Number(process.env.LOADWISE_FUZZ_SCALE ?? 0.25);
const runs = (n: number): number => Math.max(100, Math.round(n * (SCALE > 0 ? SCALE : 0.25)));
const NOW = 1_800_000_000_000;
const PREFIX = 'fz';
const key: SigningKey = { keyId: 'k1', secret: Buffer.alloc(32, 3) };
const wrongKey: SigningKey = { keyId: 'k1', secret: Buffer.alloc(32, 4) };
const CONFIGURED = [
  { id: 'a', url: 'http://127.0.0.1:9001/' },
  { id: 'b', url: 'http://127.0.0.1:9002/' },
  { id: 'c', url: 'http://127.0.0.1:9003/' },
];
const CODES = new Set([...Object.keys(PROTOCOL_ERRORS), ...Object.keys(DROP_REASONS)]);
function balancer(extra: Partial<LoadBalanceOptions>): Balancer {
  return testBalancer(CONFIGURED, () => NOW, {
    topicPrefix: PREFIX,
    // Everything reaches the decoder: the limiter has its own tests.
    messageLimits: { perBackendPerSec: 1e6, totalPerSec: 1e6 },
    ...extra,
  });
}

/** A valid message of each kind, as templates to mutate. */
const enc = createEncoder({ backendId: 'a', prefix: PREFIX, now: () => NOW - 1000 });
const TEMPLATES: Message[] = [
  enc.metrics({
    intervalMs: 1000,
    state: 'online',
    host: { cpuUtilization: 0.9, memoryUtilization: 0.95, memoryAvailableBytes: 1e6 },
    queue: { inFlight: 8, queued: 30, source: { inFlight: 'tracker', queued: 'tracker' } },
    concurrencyLimit: 8,
    health: { verdict: 'degraded' },
  }).message,
  enc.status('draining', { reason: 'x' }).message,
  enc.status('offline').message,
  enc.status('offline', { will: true }).message,
  enc.registration('http://10.99.1.2:8080', 5).message,
];

const pollutionKey = fc.constantFrom('__proto__', 'constructor', 'prototype');
const anyValue = fc.oneof(
  fc.jsonValue(),
  fc.constantFrom(1e308, -1, 2 ** 53, 0.5, '', 'draining', 'offline', 'down', null, [], {}),
  fc.dictionary(pollutionKey, fc.jsonValue()),
);
const backendId = fc.oneof(fc.constantFrom('a', 'b', 'c', 'evil', 'x-1'), fc.string());
const kind = fc.oneof(fc.constantFrom('metrics', 'status', 'register'), fc.string());

/** One generated wire message: topic, payload bytes, retain flag, and how it is signed. */
const wireMessage = fc.oneof(
  // A template, re-addressed and with one field replaced, signed right, wrong or not at all.
  fc
    .record({
      template: fc.constantFrom(...TEMPLATES),
      id: backendId,
      field: fc.option(fc.string({ maxLength: 20 }), { nil: undefined }),
      value: anyValue,
      seq: fc.nat(),
      signing: fc.constantFrom('right', 'wrong', 'none'),
      retained: fc.boolean(),
      pollute: fc.boolean(),
    })
    .map((r) => {
      const m = { ...r.template, backendId: r.id, seq: r.seq } as Record<string, unknown>;
      if (r.field !== undefined) m[r.field] = r.value;
      let json = JSON.stringify(m);
      if (r.pollute) json = json.replace('{', `{"__proto__":${JSON.stringify(r.value)},`);
      const topic = `${PREFIX}/v1/backends/${r.id}/${String(r.template.kind)}`;
      const payload =
        r.signing === 'none'
          ? json
          : signPayload(topic, json, r.signing === 'right' ? key : wrongKey);
      return { topic, payload: Buffer.from(payload), retained: r.retained };
    }),
  // Anything at all on any topic.
  fc
    .record({
      id: backendId,
      kind,
      bytes: fc.oneof(fc.uint8Array({ maxLength: 400 }), fc.string({ maxLength: 400 })),
      retained: fc.boolean(),
    })
    .map((r) => ({
      topic: `${PREFIX}/v1/backends/${r.id}/${r.kind}`,
      payload: Buffer.from(r.bytes),
      retained: r.retained,
    })),
);

function addresses(lb: Balancer): Map<string, string> {
  return new Map([...lb.registry.backends.values()].map((b) => [b.id, b.target.href]));
}

describe('Balancer.receive under generated messages (fast-check)', () => {
  it('never throws, counts every drop by a catalogued code, and never moves or adds a backend outside discovery', async () => {
    const lb = balancer({
      keys: [key],
      allowUnsigned: true,
      discovery: { allowedRanges: ['10.99.0.0/16'], maxBackends: 5 },
    });
    const drops: string[] = [];
    lb.on('invalid-message', (e) => drops.push(e.code));
    let received = 0;
    try {
      fc.assert(
        fc.property(wireMessage, ({ topic, payload, retained }) => {
          const before = drops.length;
          lb.receive(topic, payload, retained);
          received++;
          for (const code of drops.slice(before)) expect(CODES.has(code)).toBe(true);
          expect(drops.length - before).toBeLessThanOrEqual(1);
          const now = addresses(lb);
          for (const c of CONFIGURED) expect(now.get(c.id)).toBe(c.url);
          for (const [id, url] of now) {
            if (CONFIGURED.some((c) => c.id === id)) continue;
            // Only a signed registration inside the allowed range can add one.
            expect(new URL(url).hostname).toMatch(/^10\.99\.\d+\.\d+$/);
          }
          expect(now.size).toBeLessThanOrEqual(CONFIGURED.length + 5);
        }),
        { numRuns: runs(2500) },
      );
      // Counted: the Prometheus counter holds exactly the drops the events announced.
      const metric = lb.metrics.registry.getSingleMetric('loadwise_invalid_messages_total');
      const counted = (await metric!.get()).values.reduce((n, v) => n + v.value, 0);
      expect(counted).toBe(drops.length);
      expect(received).toBeGreaterThan(drops.length); // some were applied, too
    } finally {
      await lb.close();
    }
    expect(Object.keys(Object.prototype)).toEqual([]);
  });

  it('lets no unsigned message change eligibility or lower an expected wait, and bounds how much it raises one', async () => {
    // Keys held and unsigned allowed: the mixed posture of a key rollout.
    const lb = balancer({ keys: [key], allowUnsigned: true, unsignedMaxPenalty: 2 });
    const waits = (): number[] =>
      [...lb.registry.backends.values()].map((b) => b.load.expectedWaitMs(NOW));
    const baseline = waits();
    try {
      fc.assert(
        fc.property(
          fc.constantFrom('a', 'b', 'c'),
          fc.constantFrom(...TEMPLATES),
          fc.option(fc.string({ maxLength: 20 }), { nil: undefined }),
          anyValue,
          fc.boolean(),
          (id, template, field, value, retained) => {
            const m = { ...template, backendId: id } as Record<string, unknown>;
            if (field !== undefined) m[field] = value;
            let payload: string;
            try {
              payload = encodeMessage(PREFIX, m as unknown as Message).payload;
            } catch {
              payload = JSON.stringify(m); // not encodable: still sent, the decoder judges it
            }
            lb.receive(
              `${PREFIX}/v1/backends/${id}/${template.kind}`,
              Buffer.from(payload),
              retained,
            );
            expect(lb.registry.eligible.map((b) => b.id)).toEqual(['a', 'b', 'c']);
            for (const b of lb.registry.backends.values()) {
              expect([b.agentState, b.verdictDown, b.conditionNow()]).toEqual([
                'online',
                false,
                'up',
              ]);
            }
            waits().forEach((w, i) => {
              expect(w).toBeGreaterThanOrEqual(baseline[i]!);
              expect(w).toBeLessThanOrEqual(baseline[i]! * 2 + 1e-9);
            });
          },
        ),
        { numRuns: runs(2000) },
      );
    } finally {
      await lb.close();
    }
  });
});
