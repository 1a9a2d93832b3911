/**
 * What the balancer's freshness sweep says, with an injected clock: reports
 * of many backends going stale at once (a broker outage) are one line, not
 * one per backend; a backend no report of which ever came while the broker
 * was connected is said once, where nothing was said at all.
 */
import { createEncoder, type SigningKey } from '@loadwise/protocol';
import type { Balancer } from './balancer';
import type { Logger } from './options';
import { calmReport, testBalancer } from './test-balancer';

const T0 = 1_800_000_000_000;
const PREFIX = 'sweep';
const key: SigningKey = { keyId: 'k1', secret: Buffer.alloc(32, 7) };
const calm = calmReport;

/** The sweep, the lease clock and the broker source, which a balancer without a broker lacks. */
interface SweepInternals {
  sweep(): void;
  advanceLease(nowMs: number, up: boolean): void;
  source: { isConnected: boolean; close(): Promise<void> } | undefined;
}

const broker = (isConnected: boolean) => ({ isConnected, close: () => Promise.resolve() });

function rig(ids: string[], extra: { allowUnsigned?: boolean } = {}) {
  const clock = { t: T0 };
  const lines: Array<{ event: unknown; msg: string }> = [];
  const logger: Logger = {
    info: () => {},
    warn: (fields: object | string, msg?: string) =>
      void lines.push({ event: (fields as { event?: unknown }).event, msg: msg ?? '' }),
    error: () => {},
  };
  const lb: Balancer = testBalancer(
    ids.map((id, i) => ({ id, url: `http://127.0.0.1:${9200 + i}` })),
    () => clock.t,
    { topicPrefix: PREFIX, logger, keys: [key], ...extra },
  );
  const inner = lb as unknown as SweepInternals;
  // As if subscribed to a broker since T0.
  inner.source = broker(true);
  inner.advanceLease(clock.t, true);
  const report = (id: string): void => {
    const m = createEncoder({ backendId: id, prefix: PREFIX, key, now: () => clock.t }).metrics(
      calm,
    );
    lb.receive(m.topic, Buffer.from(m.payload), false);
  };
  const sweepAt = (ms: number): void => {
    clock.t = T0 + ms;
    inner.sweep();
  };
  return { lb, inner, lines, report, sweepAt, clock };
}

describe('the freshness sweep', () => {
  it('says reports of many backends going stale at once in one line; the events stay one each', async () => {
    const ids = Array.from({ length: 8 }, (_, i) => `b${i}`);
    const r = rig(ids);
    const events: Array<{ id: string; quiet?: boolean }> = [];
    r.lb.on('metrics-stale', (e) => events.push(e));
    try {
      for (const id of ids) r.report(id);
      r.sweepAt(500);
      // The broker goes away: no report of any backend comes any more.
      r.inner.source = broker(false);
      r.sweepAt(60_000);
      expect(events.map((e) => [e.id, e.quiet])).toEqual(ids.map((id) => [id, true]));
      const stale = r.lines.filter((l) => String(l.event).startsWith('metrics-stale'));
      expect(stale).toEqual([
        {
          event: 'metrics-stale-many',
          msg: 'reports of 8 backends went stale at once (b0, b1, b2, b3, b4 and 3 more); routing on local signals while the broker is away',
        },
      ]);
    } finally {
      await r.lb.close();
    }
  });

  it('still says a few backends going stale one line each', async () => {
    const r = rig(['a', 'b']);
    try {
      r.report('a');
      r.report('b');
      r.sweepAt(500);
      r.sweepAt(60_000);
      expect(r.lines.filter((l) => l.event === 'metrics-stale').map((l) => l.msg)).toEqual([
        expect.stringMatching(/^backend a reports are stale/),
        expect.stringMatching(/^backend b reports are stale/),
      ]);
    } finally {
      await r.lb.close();
    }
  });

  it('says once, after 30 s connected, which backends were never heard from', async () => {
    const r = rig(['heard', 'quiet1', 'quiet2']);
    try {
      r.report('heard');
      r.sweepAt(500);
      r.sweepAt(29_000);
      expect(r.lines.filter((l) => l.event === 'never-heard')).toEqual([]);
      r.sweepAt(31_000);
      r.sweepAt(90_000);
      const said = r.lines.filter((l) => l.event === 'never-heard').map((l) => l.msg);
      expect(said).toEqual([
        expect.stringMatching(
          /^no report from 2 backends quiet1, quiet2 in 30 s connected to the broker: routing them on local signals\. Check that their agents run with this gateway's topic prefix \("sweep"\)/,
        ),
      ]);
    } finally {
      await r.lb.close();
    }
  });

  it('says backends heard only unsigned apart: their prefix and broker are fine', async () => {
    const r = rig(['heard', 'unsigned', 'quiet'], { allowUnsigned: true });
    try {
      r.report('heard');
      const m = createEncoder({ backendId: 'unsigned', prefix: PREFIX, now: () => r.clock.t });
      const u = m.metrics(calm);
      r.lb.receive(u.topic, Buffer.from(u.payload), false);
      r.sweepAt(500);
      r.sweepAt(31_000);
      expect(r.lines.filter((l) => l.event === 'never-heard').map((l) => l.msg)).toEqual([
        expect.stringMatching(/^no report from backend quiet in 30 s connected to the broker/),
      ]);
      expect(r.lines.filter((l) => l.event === 'unsigned-only').map((l) => l.msg)).toEqual([
        expect.stringMatching(
          /^only unsigned reports from backend unsigned in 30 s: allowUnsigned lets them only raise a backend's expected wait \(at most ×2\)/,
        ),
      ]);
    } finally {
      await r.lb.close();
    }
  });

  it('says nothing of never-heard backends while the broker is not connected', async () => {
    const r = rig(['quiet']);
    try {
      r.inner.source = broker(false);
      r.sweepAt(120_000);
      expect(r.lines.filter((l) => l.event === 'never-heard')).toEqual([]);
    } finally {
      await r.lb.close();
    }
  });
});

describe("a stale report's verdict", () => {
  it('no longer keeps its backend out: without active checks, local signals decide once stale', async () => {
    const r = rig(['a', 'b']);
    const reasons: string[] = [];
    r.lb.on('backend-down', (e) => reasons.push(e.reason));
    try {
      const agent = createEncoder({ backendId: 'a', prefix: PREFIX, key, now: () => r.clock.t });
      const send = (m: { topic: string; payload: string | Buffer }): void =>
        r.lb.receive(m.topic, Buffer.from(m.payload), false);
      send(agent.metrics({ ...calm, health: { verdict: 'down' } }));
      r.sweepAt(500);
      expect(r.lb.registry.eligible.map((b) => b.id)).toEqual(['b']);
      expect(reasons).toEqual(['agent health verdict down']);
      // Its agent dies (its Last Will) or the broker goes: no report comes any more. Before,
      // the backend stayed out for as long as none came (for good after a Last Will).
      send(agent.status('offline', { will: true }));
      expect(r.lb.registry.get('a')!.downReason()).toBe(
        'agent lost; its last health verdict was down',
      );
      r.sweepAt(60_000);
      expect(r.lb.registry.eligible.map((b) => b.id)).toEqual(['a', 'b']);
    } finally {
      await r.lb.close();
    }
  });

  it('holds while its agent is expected to speak again: a report a minute keeps a down backend out', async () => {
    const r = rig(['a', 'b']);
    try {
      const agent = createEncoder({ backendId: 'a', prefix: PREFIX, key, now: () => r.clock.t });
      const down = { ...calm, intervalMs: 60_000, health: { verdict: 'down' as const } };
      // Stale after 30 s (maxStaleAfterMs), but the next report is due only at 60 s: the
      // verdict lapsed between every two reports, and the backend flapped in and out.
      for (let minute = 0; minute < 3; minute++) {
        r.clock.t = T0 + minute * 60_000;
        const m = agent.metrics(down);
        r.lb.receive(m.topic, Buffer.from(m.payload), false);
        for (const s of [10_000, 31_000, 59_000]) {
          r.sweepAt(minute * 60_000 + s);
          expect(r.lb.registry.eligible.map((b) => b.id)).toEqual(['b']);
        }
      }
      // Three of its intervals without a report: the verdict lapses.
      r.sweepAt(2 * 60_000 + 181_000);
      expect(r.lb.registry.eligible.map((b) => b.id)).toEqual(['a', 'b']);
    } finally {
      await r.lb.close();
    }
  });
});

describe('forgetting discovered backends', () => {
  it('recomputes the eligible set once for a sweep that forgets many', async () => {
    const clock = { t: T0 };
    const lb: Balancer = testBalancer([], () => clock.t, {
      topicPrefix: PREFIX,
      keys: [key],
      logger: { info: () => {}, warn: () => {}, error: () => {} },
      discovery: { allowedRanges: ['10.0.0.0/8'], forgetAfterMs: 1_000, maxBackends: 500 },
    });
    const inner = lb as unknown as SweepInternals;
    inner.source = broker(true);
    inner.advanceLease(clock.t, true);
    try {
      for (let i = 0; i < 200; i++) {
        const enc = createEncoder({ backendId: `d${i}`, prefix: PREFIX, key, now: () => clock.t });
        const m = enc.registration(`http://10.0.${i >> 8}.${i & 255}:9000/`);
        lb.receive(m.topic, Buffer.from(m.payload), false);
      }
      expect(lb.registry.eligible).toHaveLength(200);
      const removed: string[] = [];
      lb.on('backend-removed', ({ id }) => removed.push(id));
      const recompute = jest.spyOn(lb.registry, 'recompute');
      // Every lease ends in one sweep: one recompute per backend cost 0.9 s for 3,000.
      clock.t = T0 + 2_000;
      inner.sweep();
      expect(removed).toHaveLength(200);
      expect(recompute).toHaveBeenCalledTimes(1);
      expect(lb.registry.eligible).toHaveLength(0);
    } finally {
      await lb.close();
    }
  });
});

/** Signed reports of backend `id` with concurrency limit `limit` and the queue figures given. */
function limitReports(
  r: ReturnType<typeof rig>,
  id: string,
  limit: number,
  source: 'tracker' | 'gauge' = 'tracker',
): (queue: { inFlight?: number; queued?: number }) => void {
  const agent = createEncoder({ backendId: id, prefix: PREFIX, key, now: () => r.clock.t });
  return (queue) => {
    const m = agent.metrics({
      ...calm,
      concurrencyLimit: limit,
      queue: { ...queue, source: { inFlight: source, queued: source } },
    });
    r.lb.receive(m.topic, Buffer.from(m.payload), false);
  };
}

describe('saturation at the reported concurrency limit', () => {
  it('holds first attempts at max(2c, c + 4) while the fresh report finds every slot busy; never retries', async () => {
    const r = rig(['a', 'b']);
    try {
      const send = limitReports(r, 'a', 2);
      const report = (queued: number, inFlight = 2): void => send({ inFlight, queued });
      const a = r.lb.registry.get('a')!;
      for (let i = 0; i < 6; i++) r.lb.attemptStarted(a, r.clock.t);
      // Full by its own account, its 2 slots and 4 waiting: this gateway's 6.
      report(4);
      expect(r.lb.isSaturated(a, r.clock.t)).toBe(true);
      // A retry (one backend crashed under load) does not queue: it still goes.
      expect(r.lb.isSaturated(a, r.clock.t, true)).toBe(false);
      // Its report finds a free slot: the 6 are requests its agent does not count (long
      // polls left out of its tracker), and the backend takes more.
      r.clock.t += 1000;
      report(0, 1);
      expect(r.lb.isSaturated(a, r.clock.t)).toBe(false);
      // A retry through choose(): b tried already, a full at its bound, and still chosen.
      r.clock.t += 1000;
      report(4);
      expect(r.lb.isSaturated(a, r.clock.t)).toBe(true);
      const b = r.lb.registry.get('b')!;
      expect(r.lb.choose(r.clock.t, new Set([b.endpoint]), undefined)).toBe(a);
      // One fewer than the bound: not saturated, full or not.
      r.lb.attemptEnded(a, r.clock.t, 10, true, false, false);
      expect(r.lb.isSaturated(a, r.clock.t)).toBe(false);
    } finally {
      await r.lb.close();
    }
  });

  it('keeps the bound when a report finds every slot busy and none waiting', async () => {
    // A batch of answers has just emptied the backend's queue: 4 busy, 0 waiting, while
    // this gateway holds its 8 (4 answers on their way back). The bound lifted to the
    // pool's 256 there, and the gateway's whole queue went into the backends.
    const r = rig(['a']);
    try {
      const send = limitReports(r, 'a', 4);
      const report = (inFlight: number, queued: number): void => send({ inFlight, queued });
      const a = r.lb.registry.get('a')!;
      for (let i = 0; i < 8; i++) r.lb.attemptStarted(a, r.clock.t);
      report(4, 0);
      expect(r.lb.isSaturated(a, r.clock.t)).toBe(true);
      r.lb.attemptEnded(a, r.clock.t, 100, true, false, false);
      expect(r.lb.isSaturated(a, r.clock.t)).toBe(false);
      // Without a fresh report, the pool alone, as before.
      r.clock.t += 60_000;
      for (let i = 0; i < 20; i++) r.lb.attemptStarted(a, r.clock.t);
      expect(r.lb.isSaturated(a, r.clock.t)).toBe(false);
    } finally {
      await r.lb.close();
    }
  });

  it('bounds no backend with free slots or counted above its limit; a gauge at its limit at 2c', async () => {
    const r = rig(['a']);
    try {
      const send = limitReports(r, 'a', 4, 'gauge');
      const report = (queue: { inFlight?: number; queued?: number }): void => {
        send(queue);
        r.clock.t += 1000;
      };
      const a = r.lb.registry.get('a')!;
      const start = (n: number): void => {
        for (let i = 0; i < n; i++) r.lb.attemptStarted(a, r.clock.t);
      };
      // A burst of long polls its tracker leaves out, after a report found it idle: held
      // at the bound, requests waited for reports to raise it and got 503 after 5 s.
      report({ inFlight: 0, queued: 0 });
      start(60);
      expect(r.lb.isSaturated(a, r.clock.t)).toBe(false);
      report({ inFlight: 1, queued: 0 });
      expect(r.lb.isSaturated(a, r.clock.t)).toBe(false);
      for (let i = 0; i < 60; i++) r.lb.attemptEnded(a, r.clock.t, 10, true, false, false);
      // A gauge that counts its long polls too: 10 in flight under a limit of 4, none of
      // them in a slot. Bounded at 2c, the idle backend was saturated by them.
      start(10);
      report({ inFlight: 10 });
      expect(r.lb.isSaturated(a, r.clock.t)).toBe(false);
      for (let i = 0; i < 10; i++) r.lb.attemptEnded(a, r.clock.t, 10, true, false, false);
      // A gauge of in-flight requests capped at its 4 workers, no queue figure: full at 4,
      // and 2c it stays however many of this gateway's wait in its unseen queue.
      for (let i = 0; i < 5; i++) {
        start(4);
        report({ inFlight: 4 });
      }
      expect(r.lb.isSaturated(a, r.clock.t)).toBe(true);
    } finally {
      await r.lb.close();
    }
  });
});
