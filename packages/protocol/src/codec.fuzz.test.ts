/**
 * Property-based tests of the decoder (fast-check): over many thousands of
 * generated payloads (random bytes, random JSON, valid reports with one field
 * replaced by anything, huge numbers, prototype-pollution keys), decode never
 * throws, every rejection carries a catalogued code, and what it accepts is a
 * valid message for the topic it came on. Replay state can only be moved by
 * verified signed messages.
 */
import fc from 'fast-check';
import {
  createDecoder,
  createEncoder,
  encodeMessage,
  type Decoder,
  type MetricsBody,
} from './codec';
import { PROTOCOL_ERRORS } from './errors';
import { signPayload, type SigningKey } from './signing';
import { validateMessage } from './validate';

/**
 * `npm test` runs a quarter of the cases (a few seconds); `npm run test:fuzz`
 * runs them all (LOADWISE_FUZZ_SCALE=1), or more with a larger scale.
 */
const SCALE = Number(process.env.LOADWISE_FUZZ_SCALE ?? 0.25);
const runs = (n: number): number => Math.max(100, Math.round(n * (SCALE > 0 ? SCALE : 0.25)));
const NOW = 1_800_000_000_000;
const now = (): number => NOW;
const key: SigningKey = { keyId: 'k1', secret: Buffer.alloc(32, 7) };
const topic = 'loadwise/v1/backends/b1/metrics';
const codes = new Set(Object.keys(PROTOCOL_ERRORS));

const body: MetricsBody = {
  intervalMs: 1000,
  state: 'online',
  host: { cpuUtilization: 0.5, memoryUtilization: 0.25, memoryAvailableBytes: 1 << 30 },
  process: { pid: 42, cpuCores: 0.3, rssBytes: 1e8 },
  cgroup: { cpuLimitCores: 1.5, cpuUtilization: 0.2, memoryLimitBytes: 1e9 },
  queue: { inFlight: 4, queued: 1, source: { inFlight: 'tracker', queued: 'tracker' } },
  concurrencyLimit: 8,
  traffic: { rps: 100, errorRate: 0.01, latencyMeanMs: 20, windowMs: 10_000 },
  health: { verdict: 'up', reason: 'fine', probeStatus: 200 },
};
const template = createEncoder({ backendId: 'b1', now }).metrics(body).message;

/** Every JSON path of the template, so a mutation can hit any field at any depth. */
function paths(value: unknown, prefix: string[] = []): string[][] {
  if (typeof value !== 'object' || value === null) return [prefix];
  return [prefix, ...Object.entries(value).flatMap(([k, v]) => paths(v, [...prefix, k]))].filter(
    (p) => p.length > 0,
  );
}
const PATHS = paths(template);

const hostileKey = fc.constantFrom(
  '__proto__',
  'constructor',
  'prototype',
  'toString',
  'hasOwnProperty',
);
/** Values a forger would try: huge and odd numbers, wrong types, pollution objects. */
const hostileValue = fc.oneof(
  fc.jsonValue(),
  fc.constantFrom(
    Number.MAX_VALUE,
    -Number.MAX_VALUE,
    Number.MAX_SAFE_INTEGER + 2,
    1e308,
    -0,
    2 ** 53,
    0.5,
    -1,
    '',
    'x'.repeat(300),
    [],
    {},
    null,
    true,
  ),
  fc.dictionary(hostileKey, fc.jsonValue()),
);

function mutate(path: string[], value: unknown, raw: boolean): string {
  const m = structuredClone(template) as unknown as Record<string, unknown>;
  let node = m;
  for (const k of path.slice(0, -1)) node = node[k] as Record<string, unknown>;
  const last = path[path.length - 1]!;
  node[last] = value;
  const json = JSON.stringify(m);
  // `raw`: splice the value in as source text, so keys like "__proto__" reach JSON.parse as keys.
  return raw ? json.replace('"v":1', `"__proto__":${JSON.stringify(value)},"v":1`) : json;
}

function check(decoder: Decoder, t: string, payload: string | Uint8Array): void {
  const result = decoder.decode(t, typeof payload === 'string' ? payload : Buffer.from(payload));
  if (result.ok) {
    // Accepted: a valid message for exactly the topic it came on.
    expect(validateMessage(result.message, { backendId: 'b1', kind: 'metrics' })).toBeUndefined();
    expect(result.message.backendId).toBe('b1');
  } else {
    expect(codes.has(result.code)).toBe(true);
  }
}

afterAll(() => {
  // No generated payload polluted Object.prototype.
  expect(Object.keys(Object.prototype)).toEqual([]);
  expect(({} as Record<string, unknown>)['polluted']).toBeUndefined();
});

describe('decode under generated input (fast-check)', () => {
  it('never throws on random bytes, strings and topics, and codes every rejection', () => {
    const decoders = [
      createDecoder({ now }),
      createDecoder({ now, keys: [key] }),
      createDecoder({ now, requireSignature: true }),
    ];
    fc.assert(
      fc.property(
        fc.oneof(fc.uint8Array({ maxLength: 600 }), fc.string({ maxLength: 600 })),
        fc.oneof(fc.constant(topic), fc.string({ maxLength: 80 })),
        fc.boolean(),
        (payload, t, retained) => {
          for (const d of decoders) {
            const r = d.decode(t, typeof payload === 'string' ? payload : Buffer.from(payload), {
              retained,
            });
            if (!r.ok) expect(codes.has(r.code)).toBe(true);
          }
        },
      ),
      { numRuns: runs(2500) },
    );
  });

  it('never throws on valid reports with any field replaced by anything, and accepts only valid ones', () => {
    const decoder = createDecoder({ now });
    fc.assert(
      fc.property(fc.constantFrom(...PATHS), hostileValue, fc.boolean(), (path, value, raw) => {
        check(decoder, topic, mutate(path, value, raw));
      }),
      { numRuns: runs(4000) },
    );
  });

  it('treats signed mutations alike, and a valid one round-trips through the signature', () => {
    const decoder = createDecoder({ now, keys: [key] });
    let seq = 1;
    fc.assert(
      fc.property(fc.constantFrom(...PATHS), hostileValue, (path, value) => {
        const m = JSON.parse(mutate(path, value, false)) as Record<string, unknown>;
        m['seq'] = seq++;
        const json = JSON.stringify(m);
        const result = decoder.decode(topic, signPayload(topic, json, key));
        if (result.ok) {
          expect(result.keyId).toBe('k1');
          expect(JSON.stringify(result.message)).toBe(json);
        } else {
          expect(codes.has(result.code)).toBe(true);
        }
      }),
      { numRuns: runs(2000) },
    );
  });

  it('lets no unsigned message move replay state: a genuine signed report is accepted after any of them', () => {
    fc.assert(
      fc.property(
        fc.array(
          fc.record({
            epochMs: fc.oneof(
              fc.integer({ min: 0, max: NOW + 10 * 3_600_000 }),
              fc.constant(Number.MAX_SAFE_INTEGER),
            ),
            seq: fc.oneof(fc.nat(), fc.constant(Number.MAX_SAFE_INTEGER)),
            ts: fc.integer({ min: NOW - 120_000, max: NOW + 120_000 }),
          }),
          { maxLength: 8 },
        ),
        (forged) => {
          const decoder = createDecoder({ now, keys: [key], requireSignature: false });
          const genuine = createEncoder({ backendId: 'b1', key, now: () => NOW - 5000 });
          expect(decoder.decode(topic, genuine.metrics(body).payload).ok).toBe(true);
          for (const f of forged) {
            const m = encodeMessage('loadwise', { ...template, ...f });
            const r = decoder.decode(m.topic, m.payload);
            // Unsigned: accepted (as unsigned) or rejected for time, never a replay verdict.
            expect(r.ok ? r.keyId : r.code).not.toBe('LW_PROTO_REPLAY');
            if (r.ok) expect(r.keyId).toBeUndefined();
          }
          const next = decoder.decode(topic, genuine.metrics(body).payload);
          expect(next).toMatchObject({ ok: true, keyId: 'k1' });
        },
      ),
      { numRuns: runs(500) },
    );
  });

  it('accepts no message whose ts or epochMs is beyond the skew window', () => {
    const decoder = createDecoder({ now, keys: [key], requireSignature: false });
    fc.assert(
      fc.property(
        fc.integer({ min: 0, max: 2 * NOW }),
        fc.integer({ min: 0, max: 2 * NOW }),
        fc.boolean(),
        (ts, epochMs, retained) => {
          const m = encodeMessage('loadwise', { ...template, ts, epochMs });
          const r = decoder.decode(m.topic, m.payload, { retained });
          if (r.ok) {
            expect(ts).toBeLessThanOrEqual(NOW + 30_000);
            expect(epochMs).toBeLessThanOrEqual(NOW + 30_000);
            expect(ts).toBeGreaterThanOrEqual(NOW - (retained ? 60_000 : 30_000));
          }
        },
      ),
      { numRuns: runs(3000) },
    );
  });
});
