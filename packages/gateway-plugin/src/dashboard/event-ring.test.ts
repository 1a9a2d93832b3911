import { BalancerEmitter } from '../events';
import { EventRing } from './event-ring';

function setup(capacity = 5, coalesceMs = 10_000) {
  let nowMs = 1_000_000;
  const events = new BalancerEmitter(() => {});
  const ring = new EventRing(events, () => nowMs, capacity, coalesceMs);
  return {
    events,
    ring,
    advance(ms: number) {
      nowMs += ms;
    },
  };
}

describe('EventRing', () => {
  it('keeps balancer events with the log sentence, level and backend', () => {
    const { events, ring } = setup();
    events.emit('backend-ejected', { id: 'b1', durationMs: 30_000, consecutiveFailures: 5 });
    events.emit('panic', { panic: true, healthy: 1, routable: 3 });
    expect(ring.all()).toEqual([
      expect.objectContaining({
        event: 'backend-ejected',
        level: 'warn',
        backend: 'b1',
        count: 1,
        msg: 'backend b1 ejected for 30 s after 5 consecutive failures',
      }),
      expect.objectContaining({ event: 'panic', level: 'error', backend: null }),
    ]);
  });

  it('names the backends of recent balancer events, not those of dropped messages', () => {
    const { events, ring, advance } = setup();
    events.emit('backend-down', { id: 'b1', reason: 'active health check failed' });
    advance(30_000);
    events.emit('backend-up', { id: 'b2' });
    // A forger can name any backend: a dropped message does not make it "recently changed".
    events.emit('invalid-message', { code: 'LW_PROTO_BAD_SIGNATURE', backendId: 'b3' });
    expect([...ring.backendsNamedSince(1_000_000)].sort()).toEqual(['b1', 'b2']);
    expect([...ring.backendsNamedSince(1_000_001)]).toEqual(['b2']);
  });

  it('keeps the newest `capacity` entries, oldest first', () => {
    const { events, ring } = setup(3);
    for (let i = 1; i <= 5; i++) events.emit('backend-up', { id: `b${i}` });
    expect(ring.all().map((e) => e.backend)).toEqual(['b3', 'b4', 'b5']);
  });

  it('folds a flood of dropped messages into one entry per code per window', () => {
    const { events, ring, advance } = setup(5, 10_000);
    for (let i = 0; i < 1000; i++) {
      events.emit('invalid-message', { code: 'LW_PROTO_BAD_SIGNATURE', backendId: 'b1' });
    }
    events.emit('backend-down', { id: 'b2', reason: 'active health check failed' });
    events.emit('invalid-message', { code: 'LW_PROTO_REPLAY', backendId: 'b3' });
    const all = ring.all();
    expect(all).toHaveLength(3);
    expect(all[0]).toMatchObject({
      event: 'invalid-message',
      code: 'LW_PROTO_BAD_SIGNATURE',
      count: 1000,
      msg: 'dropped 1000 messages (LW_PROTO_BAD_SIGNATURE), last from b1',
    });
    // The real event was not pushed out by the flood.
    expect(all[1]).toMatchObject({ event: 'backend-down', backend: 'b2' });
    advance(10_000);
    events.emit('invalid-message', { code: 'LW_PROTO_BAD_SIGNATURE', backendId: 'b1' });
    expect(ring.all()).toHaveLength(4);
    expect(ring.all()[3]).toMatchObject({
      count: 1,
      msg: expect.stringMatching(/^dropped 1 message /),
    });
  });

  it('since(seq) returns what was added or updated after it', () => {
    const { events, ring } = setup();
    events.emit('backend-up', { id: 'b1' });
    events.emit('invalid-message', { code: 'X', backendId: undefined });
    const seen = ring.seq;
    expect(ring.since(seen)).toEqual([]);
    events.emit('invalid-message', { code: 'X', backendId: undefined });
    events.emit('backend-up', { id: 'b2' });
    const changed = ring.since(seen);
    expect(changed.map((e) => [e.event, e.count])).toEqual([
      ['invalid-message', 2],
      ['backend-up', 1],
    ]);
    // The coalesced entry kept its identity: a viewer replaces it in place.
    expect(changed[0]!.id).toBe(ring.all()[1]!.id);
  });

  it('coalesce() of an evicted key starts a new entry', () => {
    const { ring } = setup(2);
    const fold = (key: string, count: number): void =>
      ring.coalesce(key, count, (n) => ({
        level: 'warn',
        event: 'shed',
        backend: null,
        code: key,
        msg: `${key} ${n}`,
      }));
    fold('shed:saturated', 3);
    fold('shed:overloaded', 1);
    fold('shed:no-backend', 1); // evicts shed:saturated
    fold('shed:saturated', 2);
    expect(ring.all().map((e) => e.msg)).toEqual(['shed:no-backend 1', 'shed:saturated 2']);
  });

  it('a flood lasting many windows never pushes the real events out', () => {
    const { events, ring, advance } = setup(5, 10_000);
    events.emit('backend-ejected', { id: 'b1', durationMs: 30_000, consecutiveFailures: 5 });
    events.emit('panic', { panic: true, healthy: 1, routable: 3 });
    // 5 codes, every second, for 7 minutes: a new entry per code every 10 s window.
    for (let s = 0; s < 420; s++) {
      for (const code of ['A', 'B', 'C', 'D', 'E'])
        events.emit('invalid-message', { code, backendId: 'forged' });
      advance(1_000);
    }
    const all = ring.all();
    expect(all.filter((e) => e.event !== 'invalid-message').map((e) => e.event)).toEqual([
      'backend-ejected',
      'panic',
    ]);
    // The folded ones are the newest, bounded by the capacity.
    expect(all.filter((e) => e.event === 'invalid-message')).toHaveLength(5);
  });

  it('close() unsubscribes', () => {
    const { events, ring } = setup();
    ring.close();
    events.emit('backend-up', { id: 'b1' });
    expect(ring.all()).toEqual([]);
    expect(events.listenerCount('backend-up')).toBe(0);
  });
});
