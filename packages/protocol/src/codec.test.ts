import { createDecoder, createEncoder, encodeMessage } from './codec';
import { ReplayGuard, replayRetentionMs } from './replay';
import { ProtocolError } from './errors';
import type { MetricsReport } from './messages';
import type { SigningKey } from './signing';

const key: SigningKey = { keyId: 'k1', secret: Buffer.alloc(32, 9) };
const body: Omit<MetricsReport, 'v' | 'kind' | 'backendId' | 'epochMs' | 'seq' | 'ts'> = {
  intervalMs: 1000,
  state: 'online',
  host: { cpuUtilization: 0.5, memoryUtilization: 0.25, memoryAvailableBytes: 1 << 30 },
  queue: { inFlight: 4, queued: 1, source: { inFlight: 'tracker', queued: 'tracker' } },
  concurrencyLimit: 8,
  health: { verdict: 'up' },
};

function clock(start = 1_800_000_000_000) {
  let t = start;
  return { now: () => t, advance: (ms: number) => (t += ms) };
}

describe('encoder', () => {
  it('stamps version, ids and an increasing sequence, and round-trips through the decoder', () => {
    const c = clock();
    const enc = createEncoder({ backendId: 'b1', prefix: 'site/eu', now: c.now });
    const dec = createDecoder({ prefix: 'site/eu', now: c.now });
    const a = enc.metrics(body);
    c.advance(1000);
    const b = enc.metrics(body);
    expect(a.topic).toBe('site/eu/v1/backends/b1/metrics');
    expect([a.message.seq, b.message.seq]).toEqual([0, 1]);
    expect(a.message.epochMs).toBe(b.message.epochMs);
    expect(dec.decode(a.topic, Buffer.from(a.payload))).toEqual({
      ok: true,
      message: a.message,
      keyId: undefined,
    });
    expect(dec.decode(b.topic, b.payload)).toMatchObject({
      ok: true,
      message: { seq: 1, ts: a.message.ts + 1000 },
    });
  });

  it('round-trips status, will and registration messages, signed', () => {
    const c = clock();
    const enc = createEncoder({ backendId: 'b1', key, now: c.now });
    const dec = createDecoder({ keys: [key], now: c.now });
    for (const m of [
      enc.status('online'),
      enc.status('draining', { reason: 'deploy' }),
      enc.registration('https://10.1.2.3:8443', 3),
    ]) {
      expect(dec.decode(m.topic, m.payload)).toEqual({ ok: true, message: m.message, keyId: 'k1' });
    }
    const will = enc.status('offline', { will: true });
    expect(will.message).toMatchObject({ state: 'offline', will: true });
    expect(dec.decode(will.topic, will.payload).ok).toBe(true);
  });

  it('refuses to encode what would not decode, with the decoder code', () => {
    const enc = createEncoder({ backendId: 'b1' });
    const bad = (patch: object) => () => enc.metrics({ ...body, ...patch } as typeof body);
    expect(bad({ host: { ...body.host, cpuUtilization: Number.NaN } })).toThrow(
      expect.objectContaining({ code: 'LW_PROTO_NOT_FINITE' }),
    );
    expect(bad({ intervalMs: 0 })).toThrow(
      expect.objectContaining({ code: 'LW_PROTO_OUT_OF_RANGE' }),
    );
    expect(bad({ health: { verdict: 'up', reason: 'x'.repeat(201) } })).toThrow(ProtocolError);
    expect(() =>
      encodeMessage('loadwise', { ...enc.metrics(body).message, backendId: 'a/b' }),
    ).toThrow(expect.objectContaining({ code: 'LW_PROTO_INVALID_BACKEND_ID' }));
  });

  it('rejects invalid options with coded errors', () => {
    expect(() => createEncoder({ backendId: 'has space' })).toThrow(
      expect.objectContaining({ code: 'LW_PROTO_INVALID_BACKEND_ID' }),
    );
    expect(() => createEncoder({ backendId: 'b', prefix: 'a/#' })).toThrow(
      expect.objectContaining({ code: 'LW_PROTO_INVALID_OPTION' }),
    );
    expect(() =>
      createEncoder({ backendId: 'b', key: { keyId: 'k', secret: Buffer.alloc(8) } }),
    ).toThrow(expect.objectContaining({ code: 'LW_PROTO_INVALID_OPTION' }));
    expect(() => createDecoder({ prefix: '/abs' })).toThrow(
      expect.objectContaining({ code: 'LW_PROTO_INVALID_OPTION' }),
    );
    expect(() => createDecoder({ maxPayloadBytes: 10 })).toThrow(
      expect.objectContaining({ code: 'LW_PROTO_INVALID_OPTION' }),
    );
    expect(() => createDecoder({ maxRetainedAgeMs: 0 })).toThrow(
      expect.objectContaining({ code: 'LW_PROTO_INVALID_OPTION' }),
    );
    expect(() => createDecoder({ maxClockSkewMs: Number.NaN })).toThrow(
      expect.objectContaining({ code: 'LW_PROTO_INVALID_OPTION' }),
    );
  });
});

describe('decoder never throws', () => {
  const dec = createDecoder();
  const topic = 'loadwise/v1/backends/b1/metrics';
  it.each<[string, string | Buffer]>([
    ['empty', ''],
    ['null', 'null'],
    ['array', '[1,2]'],
    ['number', '42'],
    ['binary', Buffer.from([0xff, 0xfe, 0x00, 0x01])],
    ['trailer garbage', '{}\nnot a trailer'],
    ['proto pollution', '{"__proto__":{"v":1},"v":1,"kind":"metrics","backendId":"b1"}'],
    ['deep nesting', '['.repeat(5000) + ']'.repeat(5000)],
  ])('%s payload gives a coded result', (_name, payload) => {
    const result = dec.decode(topic, payload);
    expect(result.ok).toBe(false);
    expect(!result.ok && result.code).toMatch(/^LW_PROTO_/);
  });

  it('codes each bad number distinctly', () => {
    const enc = createEncoder({ backendId: 'b1' });
    const good = JSON.parse(enc.metrics(body).payload);
    const codeFor = (mutate: (m: typeof good) => void) => {
      const m = structuredClone(good);
      mutate(m);
      m.seq = Math.floor(Math.random() * 1e9) + 1;
      const r = createDecoder().decode(topic, JSON.stringify(m));
      return r.ok ? 'ok' : r.code;
    };
    expect(codeFor((m) => (m.queue.inFlight = 1.5))).toBe('LW_PROTO_OUT_OF_RANGE');
    expect(codeFor((m) => (m.queue.inFlight = -3))).toBe('LW_PROTO_NEGATIVE');
    expect(codeFor((m) => (m.queue.inFlight = null))).toBe('LW_PROTO_WRONG_TYPE');
    // queue.source is informational: a source or a figure a newer agent has is kept, not fatal.
    expect(codeFor((m) => (m.queue.source = { inFlight: 'ebpf' }))).toBe('ok');
    expect(codeFor((m) => (m.queue.source = { depth: 'tracker' }))).toBe('ok');
    expect(codeFor((m) => (m.queue.source = { inFlight: 'Not A Token' }))).toBe(
      'LW_PROTO_INVALID_VALUE',
    );
    expect(codeFor((m) => (m.queue.source = { inFlight: 'x'.repeat(33) }))).toBe(
      'LW_PROTO_INVALID_VALUE',
    );
    expect(codeFor((m) => (m.queue.source = { inFlight: 3 }))).toBe('LW_PROTO_WRONG_TYPE');
    expect(codeFor((m) => (m.health = 'up'))).toBe('LW_PROTO_WRONG_TYPE');
    // health.causes: short tokens, open to a newer agent's, at most 8.
    const causes = (c: unknown) =>
      codeFor((m) => (m.health = { verdict: 'degraded', causes: c as string[] }));
    expect(causes(['cpu'])).toBe('ok');
    expect(causes(['cpu', 'memory', 'queue', 'disk-io'])).toBe('ok');
    expect(causes([])).toBe('ok');
    expect(causes(Array(9).fill('cpu'))).toBe('LW_PROTO_OUT_OF_RANGE');
    expect(causes('cpu')).toBe('LW_PROTO_WRONG_TYPE');
    expect(causes([1])).toBe('LW_PROTO_WRONG_TYPE');
    expect(causes(['CPU'])).toBe('LW_PROTO_INVALID_VALUE');
    expect(causes(['x'.repeat(33)])).toBe('LW_PROTO_INVALID_VALUE');
    expect(codeFor((m) => delete m.state)).toBe('LW_PROTO_MISSING_FIELD');
    expect(codeFor((m) => delete m.v)).toBe('LW_PROTO_MISSING_FIELD');
    expect(codeFor((m) => (m.kind = 5))).toBe('LW_PROTO_WRONG_TYPE');
    expect(codeFor((m) => (m.extraFromNewerAgent = { x: 1 }))).toBe('ok');
  });

  it('rejects a registration whose url is not a plain http(s) URL', () => {
    const c = clock();
    const enc = createEncoder({ backendId: 'b1', now: c.now });
    const base = JSON.parse(enc.registration('http://127.0.0.1:1').payload);
    const regTopic = 'loadwise/v1/backends/b1/register';
    for (const url of ['ftp://x', 'http://user:pw@h/', 'not a url', 'javascript:alert(1)']) {
      const r = createDecoder({ now: c.now }).decode(regTopic, JSON.stringify({ ...base, url }));
      expect(!r.ok && r.code).toBe('LW_PROTO_INVALID_VALUE');
    }
  });
});

/** An encoded message as decode()'s first two arguments. */
function parts(m: { topic: string; payload: string }): [string, string] {
  return [m.topic, m.payload];
}

describe('replay protection', () => {
  it('drops repeated and older sequence numbers; a restarted agent (newer epoch) is accepted', () => {
    const c = clock();
    const enc = createEncoder({ backendId: 'b1', key, now: c.now });
    const dec = createDecoder({ keys: [key], now: c.now });
    const m0 = enc.metrics(body);
    const m1 = enc.metrics(body);
    expect(dec.decode(m1.topic, m1.payload).ok).toBe(true);
    expect(dec.decode(m1.topic, m1.payload)).toMatchObject({
      ok: false,
      code: 'LW_PROTO_REPLAY',
      backendId: 'b1',
    });
    expect(dec.decode(m0.topic, m0.payload)).toMatchObject({ ok: false, code: 'LW_PROTO_REPLAY' });
    c.advance(10);
    const restarted = createEncoder({ backendId: 'b1', key, now: c.now }).metrics(body);
    expect(restarted.message.seq).toBe(0);
    expect(dec.decode(restarted.topic, restarted.payload).ok).toBe(true);
  });

  it("an earlier agent run's live reports are refused, said to be another run's; a stop does not reopen them to replays", () => {
    const c = clock();
    const dec = createDecoder({ keys: [key], now: c.now });
    // Run A reports, then run B of the same backend (a restart, or a second agent).
    const a = createEncoder({ backendId: 'b1', key, now: c.now });
    const captured = [a.metrics(body), a.metrics(body)];
    for (const m of captured) expect(dec.decode(...parts(m)).ok).toBe(true);
    // More reports of A push the captured ones out of the cache of copies (8 a topic):
    // only the order rules stand between them and a replay.
    for (let i = 0; i < 10; i++) expect(dec.decode(...parts(a.metrics(body))).ok).toBe(true);
    c.advance(1_000);
    const b = createEncoder({ backendId: 'b1', key, now: c.now });
    const bReports = [b.metrics(body), b.metrics(body)];
    for (const m of bReports) expect(dec.decode(...parts(m)).ok).toBe(true);
    for (let i = 0; i < 10; i++) expect(dec.decode(...parts(b.metrics(body))).ok).toBe(true);
    // A still speaking: refused, and the detail says it is another run, not a capture.
    c.advance(500);
    const refused = dec.decode(...parts(a.metrics(body)));
    expect(refused).toMatchObject({ ok: false, code: 'LW_PROTO_REPLAY' });
    expect((refused as { detail: string }).detail).toMatch(
      /an earlier agent run than the one heard/,
    );
    // B stops (the operator takes the backend out). Captures of A and of B, replayed live
    // within the skew window, stay refused: a version that handed an ended run's backend
    // on to an earlier run accepted them, and a replayed report of A undid the signed stop.
    expect(dec.decode(...parts(b.status('offline'))).ok).toBe(true);
    c.advance(1_000);
    for (const m of [...captured, ...bReports])
      expect(dec.decode(...parts(m))).toMatchObject({ ok: false });
  });

  it('with defer, moves the order only by what the reader takes; a held run and any run held before it stay replays', () => {
    // A gateway refusing a second agent run's registration: taken into the order, that run
    // made every later message of the admitted run a replay. Put back (3babdce, reverted),
    // the refused run's captured messages, and an earlier refused run's, passed again.
    const c = clock();
    const dec = createDecoder({ keys: [key], requireSignature: false, now: c.now });
    const defer = { defer: true };
    const read = (m: { topic: string; payload: string }, how: 'accept' | 'hold') => {
      const r = dec.decode(m.topic, m.payload, defer);
      if (r.ok) dec[how](r);
      return r.ok ? 'ok' : r.code;
    };
    const admitted = createEncoder({ backendId: 'b1', key, now: c.now });
    const capturedOfAdmitted = admitted.metrics(body);
    expect(read(admitted.metrics(body), 'accept')).toBe('ok');
    c.advance(1_000);
    const first = createEncoder({ backendId: 'b1', key, now: c.now });
    const capturedOfFirst = first.metrics(body);
    expect(read(first.registration('http://192.168.0.1:80'), 'hold')).toBe('ok');
    expect(read(first.metrics(body), 'hold')).toBe('ok');
    c.advance(1_000);
    const second = createEncoder({ backendId: 'b1', key, now: c.now });
    const capturedOfSecond = second.metrics(body);
    expect(read(second.registration('http://192.168.0.1:80'), 'hold')).toBe('ok');
    // The admitted run goes on; the held runs' captured messages are replays (never seen
    // here, so the order rules refuse them, not the cache of copies).
    for (let i = 0; i < 3; i++) expect(read(admitted.metrics(body), 'accept')).toBe('ok');
    expect(read(second.metrics(body), 'hold')).toBe('ok');
    expect(read(capturedOfSecond, 'hold')).toBe('LW_PROTO_REPLAY');
    expect(read(capturedOfFirst, 'hold')).toBe('LW_PROTO_REPLAY');
    expect(read(first.metrics(body), 'hold')).toBe('LW_PROTO_REPLAY');
    expect(read(capturedOfAdmitted, 'accept')).toBe('LW_PROTO_REPLAY');
    // A forged, unsigned (epochMs, seq) far ahead moves nothing, even if a reader settles it.
    const forged = createEncoder({ backendId: 'b1', now: () => c.now() + 20_000 });
    expect(read(forged.metrics(body), 'accept')).toBe('ok');
    expect(read(forged.metrics(body), 'hold')).toBe('ok');
    expect(read(admitted.metrics(body), 'accept')).toBe('ok');
    expect(read(second.metrics(body), 'hold')).toBe('ok');
    // Without defer a message moves the order as before; a held run taken by the reader
    // becomes the order, and the run before it is over.
    expect(read(second.registration('http://10.0.0.1:80'), 'accept')).toBe('ok');
    expect(read(admitted.metrics(body), 'accept')).toBe('LW_PROTO_REPLAY');
    expect(dec.decode(...parts(second.metrics(body))).ok).toBe(true);
    expect(read(capturedOfSecond, 'accept')).toBe('LW_PROTO_REPLAY');
  });

  it('keeps one order and one held place per backend, swept with it', () => {
    let now = 1_000_000;
    const guard = new ReplayGuard({
      maxClockSkewMs: 30_000,
      maxRetainedAgeMs: 60_000,
      maxTrackedBackends: 10,
      now: () => now,
    });
    const signed = { retained: false, signed: true };
    const msg = (id: string, epochMs: number, seq: number) =>
      ({ kind: 'metrics', backendId: id, ts: now, epochMs, seq }) as never;
    guard.accept(msg('b', now - 10, 0));
    for (let run = 1; run <= 50; run++) {
      expect(guard.judge(msg('b', now - 10 + run, 0), signed)).toBeUndefined();
      guard.hold(msg('b', now - 10 + run, 0));
    }
    for (let i = 0; i < 20; i++) guard.hold(msg(`other${i}`, now, 0));
    expect(guard.size).toBe(10);
    now += replayRetentionMs({ maxClockSkewMs: 30_000, maxRetainedAgeMs: 60_000 }) + 1;
    guard.sweep();
    expect(guard.size).toBe(0);
  });

  it('sweep() drops the states past their retention, and only those', () => {
    // Refused or quickly forgotten ids kept their state until the same id was checked
    // again or the bound was reached: 0.4-0.8 KB each for good.
    let now = 1_000_000;
    const guard = new ReplayGuard({
      maxClockSkewMs: 30_000,
      maxRetainedAgeMs: 60_000,
      maxTrackedBackends: 100_000,
      now: () => now,
    });
    const signed = { retained: false, signed: true };
    const msg = (id: string) =>
      ({
        kind: 'status',
        backendId: id,
        ts: now,
        epochMs: now - 5,
        seq: 0,
        state: 'online',
      }) as never;
    for (let i = 0; i < 50; i++) expect(guard.check(msg(`old${i}`), signed)).toBeUndefined();
    now += 60_000;
    expect(guard.check(msg('young'), signed)).toBeUndefined();
    guard.sweep();
    expect(guard.size).toBe(51);
    now += replayRetentionMs({ maxClockSkewMs: 30_000, maxRetainedAgeMs: 60_000 }) - 60_000 + 1;
    guard.sweep();
    expect(guard.size).toBe(1);
    expect(guard.currentEpoch('young')).toBeDefined();
  });

  it('at its bound, forgets the least recently heard backend by one step, not a scan of all', () => {
    const c = clock();
    const dec = createDecoder({ keys: [key], now: c.now, maxTrackedBackends: 1000 });
    const send = (id: string) => {
      const m = createEncoder({ backendId: id, key, now: c.now }).metrics(body);
      return dec.decode(m.topic, m.payload);
    };
    for (let i = 0; i < 1000; i++) expect(send(`b${i}`).ok).toBe(true);
    // Every state is live: each further id replaced the oldest one in a step or two. The
    // whole map was walked on every insert, 1.4 ms a message at 100,000 states, so a key
    // that may sign for any id kept it full and stalled the gateway's loop.
    const iterate = Map.prototype[Symbol.iterator];
    const entries = Map.prototype.entries;
    let steps = 0;
    const counted = function (this: Map<unknown, unknown>) {
      const it = entries.call(this);
      const next = it.next.bind(it);
      return Object.assign(it, { next: () => (steps++, next()) });
    };
    Map.prototype[Symbol.iterator] = counted;
    Map.prototype.entries = counted;
    try {
      for (let i = 1000; i < 1100; i++) expect(send(`b${i}`).ok).toBe(true);
    } finally {
      Map.prototype[Symbol.iterator] = iterate;
      Map.prototype.entries = entries;
    }
    expect(steps).toBeLessThan(100 * 5);
  });

  it('remembers at most 3 signatures per tracked backend in all, the oldest topics going first', () => {
    const c = clock();
    const dec = createDecoder({ keys: [key], now: c.now, maxTrackedBackends: 3 });
    // 4 reports from each of 3 backends: 12 signatures for a cache of 9.
    const sent = ['b1', 'b2', 'b3'].map((id) => {
      const enc = createEncoder({ backendId: id, key, now: c.now });
      return Array.from({ length: 4 }, () => {
        const m = enc.metrics(body);
        expect(dec.decode(m.topic, m.payload).ok).toBe(true);
        return m;
      });
    });
    // b1's topic was forgotten whole: its copy is judged by the order rules, a replay still.
    const old = sent[0]![3]!;
    const again = dec.decode(old.topic, old.payload);
    expect(again).toMatchObject({ code: 'LW_PROTO_REPLAY' });
    expect(again).not.toMatchObject({ detail: 'a copy of a message already seen' });
    const recent = sent[2]![3]!;
    expect(dec.decode(recent.topic, recent.payload)).toMatchObject({
      code: 'LW_PROTO_REPLAY',
      detail: 'a copy of a message already seen',
    });
  });

  it('drops a live copy of a retained message just delivered quietly: the subscribe race, not a replay', () => {
    // An agent publishing while the gateway subscribes has its message delivered both ways.
    const c = clock();
    const dec = createDecoder({ keys: [key], now: c.now });
    const m = createEncoder({ backendId: 'b1', key, now: c.now }).status('online');
    expect(dec.decode(m.topic, m.payload, { retained: true }).ok).toBe(true);
    expect(dec.decode(m.topic, m.payload)).toMatchObject({
      code: 'LW_PROTO_RETAINED_SUPERSEDED',
      detail: expect.stringMatching(/^a live copy of a retained message just delivered/),
    });
    // A changed body under its signature is a replay, then as later.
    const tampered = m.payload.replace('"seq":0', '"seq":9');
    expect(tampered).not.toBe(m.payload);
    expect(dec.decode(m.topic, tampered)).toMatchObject({ code: 'LW_PROTO_REPLAY' });
    // Later, the same live copy is a replay.
    c.advance(6_000);
    expect(dec.decode(m.topic, m.payload)).toMatchObject({ code: 'LW_PROTO_REPLAY' });
    // Live first, then retained: the retained copy is the broker's, as before.
    const n = createEncoder({ backendId: 'b2', key, now: c.now }).status('online');
    expect(dec.decode(n.topic, n.payload).ok).toBe(true);
    expect(dec.decode(n.topic, n.payload, { retained: true })).toMatchObject({
      code: 'LW_PROTO_RETAINED_SUPERSEDED',
    });
  });

  it('drops a message overtaken in delivery by a newer one on another topic quietly, not as a replay', () => {
    // The agent's first status (QoS 1, retained) and the report it sends just after (QoS 0):
    // MQTT orders one topic's messages, not one client's, and aedes delivered the report first.
    // The quick start warned "LW_PROTO_REPLAY ... seq 1" once in about 31 starts.
    const c = clock();
    const enc = createEncoder({ backendId: 'b1', key, now: c.now });
    const dec = createDecoder({ keys: [key], now: c.now });
    enc.status('offline', { will: true }); // seq 0: the Last Will, built at connect
    const status = enc.status('online'); // seq 1
    c.advance(3);
    const report = enc.metrics(body); // seq 2
    c.advance(2);
    expect(dec.decode(report.topic, report.payload).ok).toBe(true);
    expect(dec.decode(status.topic, status.payload)).toMatchObject({
      code: 'LW_PROTO_OVERTAKEN',
      detail: expect.stringMatching(/ seq 1 /),
    });
    // A copy of it, live, is a replay; the broker's retained copy is what it always was.
    expect(dec.decode(status.topic, status.payload)).toMatchObject({ code: 'LW_PROTO_REPLAY' });
    expect(dec.decode(status.topic, status.payload, { retained: true })).toMatchObject({
      code: 'LW_PROTO_RETAINED_SUPERSEDED',
    });
    // The order stays strict: a newer status is taken, the same-kind older one is a replay.
    const next = enc.status('draining');
    expect(dec.decode(next.topic, next.payload).ok).toBe(true);

    // A copy of a taken message within the window, past the copy memory: a replay.
    const copies = createDecoder({ keys: [key], now: c.now });
    const e2 = createEncoder({ backendId: 'b2', key, now: c.now });
    const first = e2.metrics(body);
    expect(copies.decode(first.topic, first.payload).ok).toBe(true);
    for (let i = 0; i < 8; i++) {
      const m = e2.metrics(body);
      expect(copies.decode(m.topic, m.payload).ok).toBe(true);
    }
    expect(copies.decode(first.topic, first.payload)).toMatchObject({ code: 'LW_PROTO_REPLAY' });
    const st = e2.status('online');
    expect(copies.decode(st.topic, st.payload).ok).toBe(true);
    expect(copies.decode(first.topic, first.payload)).toMatchObject({ code: 'LW_PROTO_REPLAY' });

    // Sent more than 2 s before the newer one, or arriving more than 2 s after it: a replay
    // (a message captured and published again later).
    for (const [sentBeforeMs, arrivesAfterMs] of [
      [2_001, 0],
      [0, 2_001],
    ]) {
      const d = createDecoder({ keys: [key], now: c.now });
      const e = createEncoder({ backendId: 'b3', key, now: c.now });
      const old = e.status('online');
      c.advance(sentBeforeMs!);
      const newer = e.metrics(body);
      expect(d.decode(newer.topic, newer.payload).ok).toBe(true);
      c.advance(arrivesAfterMs!);
      expect(d.decode(old.topic, old.payload)).toMatchObject({ code: 'LW_PROTO_REPLAY' });
    }

    // Of an earlier agent run: a replay, as before.
    const d = createDecoder({ keys: [key], now: c.now });
    const earlier = createEncoder({ backendId: 'b4', key, now: c.now }).status('online');
    c.advance(1);
    const later = createEncoder({ backendId: 'b4', key, now: c.now }).metrics(body);
    expect(d.decode(later.topic, later.payload).ok).toBe(true);
    expect(d.decode(earlier.topic, earlier.payload)).toMatchObject({ code: 'LW_PROTO_REPLAY' });
  });

  it("forget() drops the backend's remembered copies; the order rules still judge its messages", () => {
    // Kept, a gateway's ordinary discovery churn filled the cache towards its bound.
    const c = clock();
    const dec = createDecoder({ keys: [key], now: c.now });
    const m = createEncoder({ backendId: 'b1', key, now: c.now }).metrics(body);
    expect(dec.decode(m.topic, m.payload).ok).toBe(true);
    expect(dec.decode(m.topic, m.payload)).toMatchObject({
      detail: 'a copy of a message already seen',
    });
    dec.forget('b1');
    const again = dec.decode(m.topic, m.payload);
    expect(again).toMatchObject({ code: 'LW_PROTO_REPLAY' });
    expect(again).not.toMatchObject({ detail: 'a copy of a message already seen' });
  });

  it('refuses a copy of a judged signed message before its HMAC and JSON; wills are judged each time', () => {
    const c = clock();
    const enc = createEncoder({ backendId: 'b1', key, now: c.now });
    const dec = createDecoder({ keys: [key], now: c.now });
    const m = enc.metrics(body);
    expect(dec.decode(m.topic, m.payload).ok).toBe(true);
    // A copy is a replay, retained or not; the same signature on a changed body too: it is
    // answered from the copy before the MAC is computed (else LW_PROTO_BAD_SIGNATURE).
    expect(dec.decode(m.topic, m.payload)).toMatchObject({ code: 'LW_PROTO_REPLAY' });
    expect(dec.decode(m.topic, m.payload, { retained: true })).toMatchObject({
      code: 'LW_PROTO_RETAINED_SUPERSEDED',
    });
    const tampered = m.payload.replace('"seq":0', '"seq":9');
    expect(tampered).not.toBe(m.payload);
    expect(dec.decode(m.topic, tampered)).toMatchObject({ code: 'LW_PROTO_REPLAY' });
    // Another topic with that signature is not a copy: the MAC decides.
    const other = m.topic.replace('/b1/', '/b2/');
    expect(dec.decode(other, m.payload)).toMatchObject({ code: 'LW_PROTO_BAD_SIGNATURE' });
    // Newer messages pass; the oldest copy leaves the per-topic memory after eight newer ones.
    const newer = Array.from({ length: 8 }, () => enc.metrics(body));
    for (const n of newer) expect(dec.decode(n.topic, n.payload).ok).toBe(true);
    expect(dec.decode(m.topic, m.payload)).toMatchObject({ code: 'LW_PROTO_REPLAY' }); // the guard
    // A live copy of a message refused as too old stays refused as a copy; a retained copy
    // goes through the retained bound, which admits it.
    const aging = enc.metrics(body);
    c.advance(45_000); // past the 30 s skew window, inside the 60 s retained bound
    expect(dec.decode(aging.topic, aging.payload)).toMatchObject({ code: 'LW_PROTO_CLOCK_SKEW' });
    expect(dec.decode(aging.topic, aging.payload.replace('"seq"', '"seq" '))).toMatchObject({
      code: 'LW_PROTO_REPLAY',
    });
    expect(dec.decode(aging.topic, aging.payload, { retained: true }).ok).toBe(true);
    // A Last Will delivered twice (retained, then again on a resubscribe) is judged twice.
    const will = enc.status('offline', { will: true });
    expect(dec.decode(will.topic, will.payload, { retained: true }).ok).toBe(true);
    expect(dec.decode(will.topic, will.payload, { retained: true }).ok).toBe(true);
  });

  it('tracks each backend separately', () => {
    const c = clock();
    const dec = createDecoder({ now: c.now });
    const a = createEncoder({ backendId: 'a', now: c.now }).metrics(body);
    const b = createEncoder({ backendId: 'b', now: c.now }).metrics(body);
    expect(dec.decode(a.topic, a.payload).ok).toBe(true);
    expect(dec.decode(b.topic, b.payload).ok).toBe(true);
  });

  it('rejects messages outside the skew window, signed or not; retained ones up to maxRetainedAgeMs; wills by epoch', () => {
    const c = clock();
    const enc = createEncoder({ backendId: 'b1', key, now: c.now });
    const online = enc.status('online');
    const will = enc.status('offline', { will: true });
    const metrics = enc.metrics(body);
    const unsigned = createEncoder({ backendId: 'b3', now: c.now }).metrics(body);
    c.advance(45_000);
    const dec = createDecoder({
      keys: [key],
      requireSignature: false,
      now: c.now,
      maxClockSkewMs: 30_000,
      maxRetainedAgeMs: 60_000,
    });
    expect(dec.decode(metrics.topic, metrics.payload)).toMatchObject({
      ok: false,
      code: 'LW_PROTO_CLOCK_SKEW',
    });
    expect(dec.decode(unsigned.topic, unsigned.payload)).toMatchObject({
      ok: false,
      code: 'LW_PROTO_CLOCK_SKEW',
    });
    // A retained status is old by design when a gateway subscribes [MQTT-3.3.1-8], up to a bound.
    expect(dec.decode(online.topic, online.payload, { retained: true }).ok).toBe(true);
    c.advance(20_000);
    // Past the bound. This decoder accepted these very bytes above, so it refuses the copy as
    // a replay before any clock rule; a decoder that never saw it finds it stale.
    expect(dec.decode(online.topic, online.payload, { retained: true })).toMatchObject({
      ok: false,
      code: 'LW_PROTO_RETAINED_SUPERSEDED',
    });
    const fresh = createDecoder({
      keys: [key],
      requireSignature: false,
      now: c.now,
      maxClockSkewMs: 30_000,
      maxRetainedAgeMs: 60_000,
    });
    expect(fresh.decode(online.topic, online.payload, { retained: true })).toMatchObject({
      ok: false,
      code: 'LW_PROTO_STALE',
    });
    // The will was built at connect time; it fires much later, live or retained.
    c.advance(3_600_000);
    expect(dec.decode(will.topic, will.payload).ok).toBe(true);
    expect(dec.decode(will.topic, will.payload, { retained: true }).ok).toBe(true);
    const future = createEncoder({ backendId: 'b2', key, now: () => c.now() + 120_000 });
    const fromFuture = [future.metrics(body), future.status('offline', { will: true })];
    for (const m of fromFuture) {
      expect(dec.decode(m.topic, m.payload, { retained: true })).toMatchObject({
        code: 'LW_PROTO_CLOCK_SKEW',
      });
    }
  });

  it('rejects an epoch beyond the skew window even with a current timestamp', () => {
    const c = clock();
    const dec = createDecoder({ keys: [key], now: c.now });
    const m = createEncoder({ backendId: 'b1', key, now: c.now }).metrics(body);
    const forged = { ...m.message, epochMs: c.now() + 3_600_000 };
    const signed = encodeMessage('loadwise', forged, key);
    expect(dec.decode(signed.topic, signed.payload)).toMatchObject({ code: 'LW_PROTO_CLOCK_SKEW' });
    // Nothing advanced: the genuine report is still accepted.
    expect(dec.decode(m.topic, m.payload).ok).toBe(true);
  });

  it('never lets an unsigned message touch replay state (a forged far-ahead sequence locks nobody out)', () => {
    const c = clock();
    const enc = createEncoder({ backendId: 'b1', key, now: c.now });
    const dec = createDecoder({ keys: [key], requireSignature: false, now: c.now });
    const genuine = enc.metrics(body);
    expect(dec.decode(genuine.topic, genuine.payload).ok).toBe(true);
    // Same epoch, a sequence far ahead, unsigned: accepted as unsigned, remembered nowhere.
    const forged = encodeMessage('loadwise', { ...genuine.message, seq: 2 ** 52 });
    expect(dec.decode(forged.topic, forged.payload)).toMatchObject({ ok: true, keyId: undefined });
    // An unsigned copy of a signed report is not a "replay" either: it is simply unsigned.
    const copy = encodeMessage('loadwise', genuine.message);
    expect(dec.decode(copy.topic, copy.payload)).toMatchObject({ ok: true, keyId: undefined });
    for (let i = 0; i < 3; i++) {
      c.advance(1000);
      const next = enc.metrics(body);
      expect(dec.decode(next.topic, next.payload)).toMatchObject({ ok: true, keyId: 'k1' });
    }
  });

  it('rejects a will from an older epoch (a replayed will of a previous agent run)', () => {
    const c = clock();
    const oldWill = createEncoder({ backendId: 'b1', key, now: c.now }).status('offline', {
      will: true,
    });
    c.advance(1000);
    const current = createEncoder({ backendId: 'b1', key, now: c.now }).metrics(body);
    const dec = createDecoder({ keys: [key], now: c.now });
    expect(dec.decode(current.topic, current.payload).ok).toBe(true);
    expect(dec.decode(oldWill.topic, oldWill.payload)).toMatchObject({
      ok: false,
      code: 'LW_PROTO_REPLAY',
    });
  });

  it('forgets a backend once none of its messages could be accepted again, so a clock stepped back heals', () => {
    const c = clock();
    // Retention: max(maxRetainedAgeMs, skew) + skew = 3 s.
    const dec = createDecoder({
      keys: [key],
      now: c.now,
      maxClockSkewMs: 1000,
      maxRetainedAgeMs: 2000,
    });
    const first = createEncoder({ backendId: 'b1', key, now: c.now }).metrics(body);
    expect(dec.decode(first.topic, first.payload).ok).toBe(true);
    // Agent restarts with a clock 500 ms behind: its epoch is older.
    const behind = createEncoder({ backendId: 'b1', key, now: () => c.now() - 500 });
    const m = behind.metrics(body);
    expect(dec.decode(m.topic, m.payload)).toMatchObject({ code: 'LW_PROTO_REPLAY' });
    c.advance(3000);
    const stillOld = behind.metrics(body);
    expect(dec.decode(stillOld.topic, stillOld.payload)).toMatchObject({ code: 'LW_PROTO_REPLAY' });
    c.advance(1);
    const later = behind.metrics(body);
    expect(dec.decode(later.topic, later.payload).ok).toBe(true);
  });

  describe('a retained replay after the agent fell silent (review finding 4)', () => {
    const B64URL = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_';
    /** The same message with its signature's last character spelled another way (same MAC bytes). */
    const respelled = (payload: string): string => {
      const last = B64URL.indexOf(payload.at(-1)!);
      return payload.slice(0, -1) + B64URL[last ^ 1];
    };

    it('refuses the captured draining status, re-spelled, 61.5 s after an agent 20 s ahead fell silent', () => {
      const c = clock();
      const agent = createEncoder({ backendId: 'b1', key, now: () => c.now() + 20_000 });
      const dec = createDecoder({ keys: [key], now: c.now });
      const draining = agent.status('draining');
      expect(dec.decode(draining.topic, draining.payload).ok).toBe(true);
      c.advance(1000);
      const online = agent.status('online');
      expect(dec.decode(online.topic, online.payload).ok).toBe(true);
      // The agent crashes or is cut off; its draining comes back retained (a gateway
      // restart, a broker reconnect) while its ts is still young enough for the retained bound.
      c.advance(61_500);
      expect(
        dec.decode(draining.topic, respelled(draining.payload), { retained: true }),
      ).toMatchObject({ ok: false, code: 'LW_PROTO_BAD_SIGNATURE' });
      expect(dec.decode(draining.topic, draining.payload, { retained: true })).toMatchObject({
        ok: false,
        code: 'LW_PROTO_RETAINED_SUPERSEDED',
      });
      const next = agent.status('online');
      expect(dec.decode(next.topic, next.payload).ok).toBe(true);
    });

    // A report says `state` too, and the copy cache turns over every 8 reports: a replay
    // of a captured report needs no re-spelling to reach the replay guard.
    it.each([
      // The agent's clock 20 s ahead (within the 30 s skew), default bounds.
      { leadMs: 20_000, silenceMs: 61_500, maxRetainedAgeMs: undefined },
      // No lead, a longer retained bound.
      { leadMs: 0, silenceMs: 120_000, maxRetainedAgeMs: 300_000 },
    ])(
      'refuses a captured draining report as a replay (lead $leadMs ms, silence $silenceMs ms, maxRetainedAgeMs $maxRetainedAgeMs)',
      ({ leadMs, silenceMs, maxRetainedAgeMs }) => {
        const c = clock();
        const agent = createEncoder({ backendId: 'b1', key, now: () => c.now() + leadMs });
        const dec = createDecoder({
          keys: [key],
          now: c.now,
          ...(maxRetainedAgeMs === undefined ? {} : { maxRetainedAgeMs }),
        });
        const draining = agent.metrics({ ...body, state: 'draining' });
        expect(dec.decode(draining.topic, draining.payload).ok).toBe(true);
        for (let i = 0; i < 8; i++) {
          c.advance(1000);
          const online = agent.metrics(body);
          expect(dec.decode(online.topic, online.payload).ok).toBe(true);
        }
        c.advance(silenceMs);
        expect(dec.decode(draining.topic, draining.payload, { retained: true })).toMatchObject({
          ok: false,
          code: 'LW_PROTO_RETAINED_SUPERSEDED',
        });
        const next = agent.metrics(body);
        expect(dec.decode(next.topic, next.payload).ok).toBe(true);
      },
    );

    it('keeps the state through forget() while a replay could still be accepted', () => {
      const c = clock();
      const agent = createEncoder({ backendId: 'b1', key, now: c.now });
      const dec = createDecoder({ keys: [key], now: c.now });
      const draining = agent.metrics({ ...body, state: 'draining' });
      expect(dec.decode(draining.topic, draining.payload).ok).toBe(true);
      for (let i = 0; i < 8; i++) {
        const online = agent.metrics(body);
        expect(dec.decode(online.topic, online.payload).ok).toBe(true);
      }
      // The gateway forgets the backend (discovery's lease: forgetAfterMs may be 1 s).
      c.advance(5_000);
      dec.forget('b1');
      expect(dec.decode(draining.topic, draining.payload, { retained: true })).toMatchObject({
        code: 'LW_PROTO_RETAINED_SUPERSEDED',
      });
      // Past the retention (max(60 s, 30 s) + 30 s), forget() drops it: an agent
      // restarted with an epoch older than the one remembered is heard again.
      c.advance(85_001);
      dec.forget('b1');
      let restarting = true;
      const restarted = createEncoder({
        backendId: 'b1',
        key,
        now: () => (restarting ? draining.message.epochMs - 1000 : c.now()),
      });
      restarting = false;
      const m = restarted.metrics(body);
      expect(dec.decode(m.topic, m.payload).ok).toBe(true);
    });
  });
});

describe('signatures', () => {
  it('binds the signature to the topic: a report for one backend cannot be moved to another', () => {
    const c = clock();
    const m = createEncoder({ backendId: 'b1', key, now: c.now }).metrics(body);
    const dec = createDecoder({ keys: [key], now: c.now });
    const moved = m.payload.replace('"backendId":"b1"', '"backendId":"b2"');
    expect(dec.decode('loadwise/v1/backends/b2/metrics', moved)).toMatchObject({
      code: 'LW_PROTO_BAD_SIGNATURE',
    });
  });

  it('accepts unsigned messages when signatures are optional, and ignores signatures without keys', () => {
    const c = clock();
    const signed = createEncoder({ backendId: 'b1', key, now: c.now }).metrics(body);
    const unsigned = createEncoder({ backendId: 'b2', now: c.now }).metrics(body);
    const optional = createDecoder({ keys: [key], requireSignature: false, now: c.now });
    expect(optional.decode(unsigned.topic, unsigned.payload)).toMatchObject({
      ok: true,
      keyId: undefined,
    });
    expect(optional.decode(signed.topic, signed.payload)).toMatchObject({ ok: true, keyId: 'k1' });
    const keyless = createDecoder({ now: c.now });
    expect(keyless.decode(signed.topic, signed.payload)).toMatchObject({
      ok: true,
      keyId: undefined,
    });
    // Required without keys: nothing can be verified, so nothing is accepted.
    const refuseAll = createDecoder({ requireSignature: true, now: c.now });
    expect(refuseAll.decode(unsigned.topic, unsigned.payload)).toMatchObject({
      code: 'LW_PROTO_UNSIGNED',
    });
    expect(refuseAll.decode(signed.topic, signed.payload)).toMatchObject({
      code: 'LW_PROTO_UNKNOWN_KEY',
    });
  });

  it('rejects a truncated or wrong-length signature as bad', () => {
    const c = clock();
    const m = createEncoder({ backendId: 'b1', key, now: c.now }).metrics(body);
    const dec = createDecoder({ keys: [key], now: c.now });
    expect(dec.decode(m.topic, m.payload.slice(0, -4))).toMatchObject({
      code: 'LW_PROTO_BAD_SIGNATURE',
    });
  });
});
