/**
 * Discovery's rules for ids that move, leave and come back, message by message through
 * Balancer.receive (what the MQTT source calls) with an injected clock: which agent run
 * may move an id, what a refused run's messages do, what a signed offline frees, and what
 * a full maxBackends gives up.
 */
import { createEncoder, type Encoder, type SigningKey } from '@loadwise/protocol';
import type { Balancer } from './balancer';
import type { LoadBalanceOptions } from './options';
import { calmReport, testBalancer } from './test-balancer';

const T0 = 1_800_000_000_000;
const PREFIX = 'disc';
const key: SigningKey = { keyId: 'k1', secret: Buffer.alloc(32, 3) };

interface SweepInternals {
  sweep(): void;
  advanceLease(nowMs: number, up: boolean): void;
  source: { isConnected: boolean; close(): Promise<void> } | undefined;
}

function rig(discovery: Partial<NonNullable<LoadBalanceOptions['discovery']>> = {}) {
  const clock = { t: T0 };
  const lb: Balancer = testBalancer([], () => clock.t, {
    topicPrefix: PREFIX,
    keys: [key],
    discovery: { allowedRanges: ['10.0.0.0/8'], forgetAfterMs: 60_000, ...discovery },
  });
  const inner = lb as unknown as SweepInternals;
  // As if subscribed to a broker since T0.
  inner.source = { isConnected: true, close: () => Promise.resolve() };
  inner.advanceLease(clock.t, true);
  const drops: Array<[string, string | undefined]> = [];
  lb.on('invalid-message', (e) => drops.push([e.code, e.backendId]));
  const removed: Array<[string, string]> = [];
  lb.on('backend-removed', (e) => removed.push([e.id, e.reason]));
  /** A new agent run of `id`, started now. */
  const run = (id: string): Encoder =>
    createEncoder({ backendId: id, prefix: PREFIX, key, now: () => clock.t });
  const send = (m: { topic: string; payload: string }): void =>
    lb.receive(m.topic, Buffer.from(m.payload), false);
  const at = (ms: number): void => {
    clock.t += ms;
    inner.sweep();
  };
  const url = (id: string): string | undefined => lb.registry.get(id)?.target.href;
  return { lb, drops, removed, run, send, at, url, now: () => clock.t };
}

describe('an id registered again at another address', () => {
  it('moves with a newer agent run; the same run, or an older one while the newer is remembered, never moves it', async () => {
    const r = rig();
    try {
      const run1 = r.run('web-0');
      r.send(run1.registration('http://10.0.0.1:8080'));
      // The same run at another address: refused (a second agent, or a confused one).
      r.send(run1.registration('http://10.0.0.2:8080'));
      expect(r.url('web-0')).toBe('http://10.0.0.1:8080/');
      expect(r.drops).toEqual([['LW_GW_REGISTRATION_REJECTED', 'web-0']]);

      r.at(1_000);
      const run2 = r.run('web-0');
      r.send(run2.registration('http://10.0.0.2:8080'));
      expect(r.url('web-0')).toBe('http://10.0.0.2:8080/');
      expect(r.removed).toEqual([['web-0', 'moved']]);
      expect(r.lb.registry.eligible.map((b) => b.target.href)).toEqual(['http://10.0.0.2:8080/']);

      // The old run, live again (a second agent, a replay): never moves it back.
      r.send(run1.registration('http://10.0.0.1:8080'));
      expect(r.url('web-0')).toBe('http://10.0.0.2:8080/');
      expect(r.drops.slice(1)).toEqual([['LW_PROTO_REPLAY', 'web-0']]);
    } finally {
      await r.lb.close();
    }
  });

  it('never ejects the old copy of a moved id for the failures of the requests left on it', async () => {
    const r = rig();
    const ejected: string[] = [];
    r.lb.on('backend-ejected', (e) => ejected.push(e.id));
    try {
      r.send(r.run('web-0').registration('http://10.0.0.1:8080'));
      const old = r.lb.registry.get('web-0')!;
      old.load.onRequestStart(T0);
      r.at(1_000);
      r.send(r.run('web-0').registration('http://10.0.0.2:8080'));
      expect(r.url('web-0')).toBe('http://10.0.0.2:8080/');
      // The old address dies under the requests still on it: the event named the id's live
      // entry, ejected for 30 s with no backend-restored to follow.
      const outlier = (r.lb as unknown as { outlier: { onFailure(b: unknown): boolean } }).outlier;
      for (let i = 0; i < 10; i++) outlier.onFailure(old);
      expect(ejected).toEqual([]);
      expect(old.ejectionTimer).toBeUndefined();
    } finally {
      await r.lb.close();
    }
  });

  it('moves with a run whose clock is behind, once the run before is no longer remembered', async () => {
    // A pod rescheduled onto a node whose clock is 4 s behind: a smaller epochMs. Only a
    // newer epoch could move the id, so its registration was refused, and its reports,
    // applied to the dead entry, renewed its lease for good (100 % 503).
    const r = rig({ forgetAfterMs: 600_000 });
    try {
      r.send(r.run('web-0').registration('http://10.0.0.1:8080'));
      r.at(1_000);
      const behind = createEncoder({
        backendId: 'web-0',
        prefix: PREFIX,
        key,
        now: () => r.now() - 4_000,
      });
      for (let s = 0; s < 100 && r.url('web-0') !== 'http://10.0.0.2:8080/'; s++) {
        r.send(behind.registration('http://10.0.0.2:8080'));
        r.send(behind.metrics(calmReport));
        r.at(1_000);
      }
      expect(r.url('web-0')).toBe('http://10.0.0.2:8080/');
      expect(r.removed).toEqual([['web-0', 'moved']]);
    } finally {
      await r.lb.close();
    }
  });

  it("moves with a run whose clock is behind at an agent's own cadence: metrics each second, a registration every 20 s", async () => {
    // After the guard forgot the run before (90 s), the new run's next message is mostly a
    // report, held: the admitting run was made the order again each time, the new run's
    // registration stayed "an earlier run", and the entry was forgotten at the lease's end.
    const r = rig({ forgetAfterMs: 600_000 });
    try {
      const a = r.run('web-0');
      r.send(a.registration('http://10.0.0.1:8080'));
      r.send(a.metrics(calmReport));
      r.at(1_000);
      r.send(a.status('offline', { will: true, reason: 'agent connection lost' }));
      r.at(1_000);
      const behind = createEncoder({
        backendId: 'web-0',
        prefix: PREFIX,
        key,
        now: () => r.now() - 4_000,
      });
      r.send(behind.status('online'));
      r.send(behind.registration('http://10.0.0.1:8080'));
      let admittedAtS: number | undefined;
      for (let s = 1; s <= 200 && admittedAtS === undefined; s++) {
        r.send(behind.metrics(calmReport));
        if (s % 20 === 0) r.send(behind.registration('http://10.0.0.1:8080'));
        r.at(1_000);
        if (r.lb.registry.get('web-0')?.runEpochMs === behind.epochMs) admittedAtS = s;
      }
      expect(admittedAtS).toBeDefined();
      expect(admittedAtS!).toBeLessThanOrEqual(120);
      expect(r.removed).toEqual([]);
    } finally {
      await r.lb.close();
    }
  });

  it('keeps hearing the admitted run while second agents whose registrations were refused report, and never applies their captured messages', async () => {
    // A second agent for the id (a stale pod, a misconfigured one) whose newer run's
    // registration is refused: that run moved the replay order, every later message of the
    // admitted agent was a "replay", and the healthy backend was forgotten at the end of
    // its lease. Putting the order back (3babdce, reverted) forgot the refused run's place:
    // its captured messages, and an earlier refused run's, were applied.
    const r = rig();
    const draining = { ...calmReport, state: 'draining' as const };
    try {
      const a = r.run('web');
      r.send(a.registration('http://10.0.0.1:8080'));
      // Captured on the way (this gateway never got it): a drain of the admitted run, which
      // it overtook.
      const drainOfA = a.metrics(draining);
      r.send(a.metrics(calmReport));
      r.at(1_000);
      // The first refused run, as an agent starts: its status, then its registration
      // (outside the allowed ranges); a drain of its own instance, captured, and what it
      // said after.
      const dup1 = r.run('web');
      r.send(dup1.status('online'));
      r.send(dup1.registration('http://192.168.0.1:8080'));
      const drainOfDup1 = dup1.status('draining');
      r.send(dup1.metrics(calmReport));
      r.at(1_000);
      // The same misconfigured agent restarted: a second refused run.
      const dup2 = r.run('web');
      r.send(dup2.status('online'));
      r.send(dup2.registration('http://192.168.0.1:8080'));
      const drainOfDup2 = dup2.metrics(draining);
      const before = r.drops.length;
      for (let s = 0; s < 100; s++) {
        r.send(dup2.metrics(calmReport));
        r.send(a.metrics(calmReport));
        if (s % 20 === 0) r.send(a.registration('http://10.0.0.1:8080'));
        // The captured messages, within the time rules: never applied.
        if (s === 5) {
          r.send(drainOfA);
          r.send(drainOfDup1);
          r.send(drainOfDup2);
        }
        expect(r.lb.registry.eligible.map((b) => b.id)).toEqual(['web']);
        r.at(1_000);
      }
      // Kept past its lease (60 s) and the replay guard's retention (90 s).
      expect(r.removed).toEqual([]);
      expect(r.url('web')).toBe('http://10.0.0.1:8080/');
      const later = r.drops.slice(before);
      // Every message of the admitted run was heard: the only replays are the captured ones,
      // and the refused run's own messages are refused as such.
      expect(later.filter(([code]) => code === 'LW_PROTO_REPLAY')).toHaveLength(3);
      expect(later.filter(([code]) => code === 'LW_GW_REGISTRATION_REJECTED')).toHaveLength(100);
      expect(later).toHaveLength(103);
      // What the admitted agent says still counts: it drains.
      r.send(a.status('draining'));
      expect(r.lb.registry.eligible).toEqual([]);
    } finally {
      await r.lb.close();
    }
  });

  it('charges no replay of a refused run to the backend, and admits the run once its registration passes', async () => {
    const r = rig();
    try {
      const a = r.run('web');
      r.send(a.registration('http://10.0.0.1:8080'));
      r.at(1_000);
      const dup = r.run('web');
      r.send(dup.registration('http://192.168.0.2:8080'));
      // Captured reports of the refused run, none of them delivered here before.
      const captured = Array.from({ length: 60 }, () => dup.metrics(calmReport));
      r.send(dup.metrics(calmReport));
      // Sent again, oldest first, 60 in one second (the bucket holds 40): replays, all of
      // them, and the admitted agent's next messages are not rate-limited.
      for (const m of captured) r.send(m);
      expect(r.drops.slice(-60).every(([code]) => code === 'LW_PROTO_REPLAY')).toBe(true);
      const n = r.drops.length;
      for (let i = 0; i < 5; i++) r.send(a.metrics(calmReport));
      expect(r.drops.slice(n)).toEqual([]);
      // A run held apart may still take the id: a registration at an allowed address moves it.
      r.send(dup.registration('http://10.0.0.2:8080'));
      expect(r.url('web')).toBe('http://10.0.0.2:8080/');
      expect(r.removed).toEqual([['web', 'moved']]);
      // And the run before is over: its messages are replays now.
      r.send(a.metrics(calmReport));
      expect(r.drops.at(-1)).toEqual(['LW_PROTO_REPLAY', 'web']);
      r.send(dup.metrics(calmReport));
      expect(r.drops.at(-1)).toEqual(['LW_PROTO_REPLAY', 'web']);
    } finally {
      await r.lb.close();
    }
  });

  it("neither applies a refused run's messages nor lets them renew the lease", async () => {
    const r = rig();
    try {
      r.send(r.run('web-0').registration('http://10.0.0.1:8080'));
      r.at(1_000);
      // A newer run registers outside the allowed ranges: refused, and it reports.
      const bad = r.run('web-0');
      r.send(bad.registration('http://192.168.0.1:8080'));
      expect(r.url('web-0')).toBe('http://10.0.0.1:8080/');
      // It reports every second, "down": never applied to the entry (which stays
      // eligible), and no renewal of its lease (60 s since the last message of its run).
      let seconds = 0;
      while (r.removed.length === 0 && seconds < 120) {
        r.send(bad.metrics({ ...calmReport, health: { verdict: 'down' } }));
        expect(r.lb.registry.eligible.map((b) => b.id)).toEqual(['web-0']);
        r.at(1_000);
        seconds++;
      }
      expect(r.removed).toEqual([['web-0', 'silent']]);
      // Forgotten 60 s after the old run's registration (1 s before the refused run came).
      expect(seconds).toBe(59);
      expect(new Set(r.drops.map(([code]) => code))).toEqual(
        new Set(['LW_GW_REGISTRATION_REJECTED']),
      );
    } finally {
      await r.lb.close();
    }
  });
});

describe('an agent that stops (signed offline), and a full maxBackends', () => {
  it('takes its backend out of rotation; a new registration gets its slot, not its address', async () => {
    const r = rig({ maxBackends: 2, forgetAfterMs: 600_000 });
    try {
      const a = r.run('a');
      r.send(a.registration('http://10.0.0.1:8080'));
      const b = r.run('b');
      r.send(b.registration('http://10.0.0.2:8080'));
      // a's agent stops: out of rotation, its entry and address kept (forgotten at once, its
      // address was free for any id's key while its agent only restarted).
      r.send(a.status('offline', { reason: 'agent stopped' }));
      expect(r.lb.registry.eligible.map((x) => x.id)).toEqual(['b']);
      expect(r.url('a')).toBe('http://10.0.0.1:8080/');
      // Another id at a's address: refused, the server is a's.
      r.at(1_000);
      r.send(r.run('evil').registration('http://10.0.0.1:8080'));
      expect(r.url('evil')).toBeUndefined();
      // The next generation: full, so the departed a gives up its slot (a rolling deploy
      // with new ids used to be refused until the leases ended, 10 minutes).
      const c = r.run('c');
      r.send(c.registration('http://10.0.0.3:8080'));
      expect(r.url('c')).toBe('http://10.0.0.3:8080/');
      expect(r.removed).toEqual([['a', 'evicted']]);
      // a's address stays a's while its lease would have run: not another id's (b's new run
      // cannot move there), a's own new run may come back to it.
      r.at(1_000);
      r.send(r.run('b').registration('http://10.0.0.1:8080'));
      expect(r.url('b')).toBe('http://10.0.0.2:8080/');
      r.send(c.status('offline', { reason: 'agent stopped' }));
      r.send(r.run('a').registration('http://10.0.0.1:8080'));
      expect(r.url('a')).toBe('http://10.0.0.1:8080/');
      expect(r.drops.map(([code]) => code)).toEqual([
        'LW_GW_REGISTRATION_REJECTED',
        'LW_GW_REGISTRATION_REJECTED',
      ]);
    } finally {
      await r.lb.close();
    }
  });

  it('holds a departed address for a minute only, and not once its id is back elsewhere', async () => {
    // A rolling deploy that reuses addresses: held for the whole 10-minute lease, a new id
    // at a stopped one's address was refused, every request 503.
    const r = rig({ maxBackends: 2, forgetAfterMs: 600_000 });
    try {
      const a = r.run('a');
      r.send(a.registration('http://10.0.0.1:8080'));
      r.send(a.status('offline', { reason: 'agent stopped' }));
      r.at(59_000);
      r.send(r.run('d').registration('http://10.0.0.1:8080'));
      expect(r.url('d')).toBeUndefined();
      r.at(1_000);
      const d = r.run('d');
      r.send(d.registration('http://10.0.0.1:8080'));
      expect(r.url('d')).toBe('http://10.0.0.1:8080/');
      expect(r.removed).toEqual([['a', 'evicted']]);
      // Evicted for its slot, b's address is held for b; b back at another address
      // releases it at once (it was held for the reservation's whole life).
      const b = r.run('b');
      r.send(b.registration('http://10.0.0.2:8080'));
      r.send(b.status('offline', { reason: 'agent stopped' }));
      const e = r.run('e');
      r.send(e.registration('http://10.0.0.5:8080'));
      expect(r.removed).toEqual([
        ['a', 'evicted'],
        ['b', 'evicted'],
      ]);
      r.send(e.status('offline', { reason: 'agent stopped' }));
      r.at(1_000);
      r.send(r.run('b').registration('http://10.0.0.4:8080'));
      expect(r.url('b')).toBe('http://10.0.0.4:8080/');
      r.send(d.status('offline', { reason: 'agent stopped' }));
      r.send(r.run('f').registration('http://10.0.0.2:8080'));
      expect(r.url('f')).toBe('http://10.0.0.2:8080/');
    } finally {
      await r.lb.close();
    }
  });

  it('never evicts a backend whose agent died while it still serves, only one presumed gone', async () => {
    const r = rig({ maxBackends: 2 });
    try {
      const runs = ['d0', 'd1'].map((id) => r.run(id));
      runs.forEach((e, i) => r.send(e.registration(`http://10.0.0.${i + 1}:8080`)));
      // Both agents die (Last Will); their services may well be serving.
      r.at(1_000);
      for (const e of runs) r.send(e.status('offline', { will: true }));
      r.send(r.run('n0').registration('http://10.0.1.1:8080'));
      expect(r.url('n0')).toBeUndefined();
      // d1 also fails its active checks: presumed gone, its slot given.
      r.lb.registry.get('d1')!.checkDown = true;
      r.send(r.run('n1').registration('http://10.0.1.2:8080'));
      expect(r.url('n1')).toBe('http://10.0.1.2:8080/');
      expect(r.removed).toEqual([['d1', 'evicted']]);
    } finally {
      await r.lb.close();
    }
  });
});

describe('registrations at http: URLs beside backend TLS', () => {
  // A private CA (or a client certificate) says the backends speak TLS: an http:
  // registration was admitted beside it, and its requests went out in clear, without the
  // client certificate (a review of TLS backends with discovery).
  function tlsRig(extra: Partial<LoadBalanceOptions>, discovery: { requireTls?: boolean } = {}) {
    const clock = { t: T0 };
    const lb = testBalancer([], () => clock.t, {
      topicPrefix: PREFIX,
      keys: [key],
      discovery: { allowedRanges: ['10.0.0.0/8'], ...discovery },
      ...extra,
    });
    const drops: string[] = [];
    lb.on('invalid-message', (e) => drops.push(`${e.code} ${e.backendId}`));
    const register = (id: string, url: string): void => {
      const m = createEncoder({
        backendId: id,
        prefix: PREFIX,
        key,
        now: () => clock.t,
      }).registration(url);
      lb.receive(m.topic, Buffer.from(m.payload), false);
    };
    return { lb, drops, register };
  }
  const ca = '-----BEGIN CERTIFICATE-----\n(a private CA)\n-----END CERTIFICATE-----\n';

  it('refuses them when backendTls has a ca, and admits https', async () => {
    const r = tlsRig({ backendTls: { ca } });
    try {
      r.register('plain', 'http://10.0.0.1:8080');
      r.register('tls', 'https://10.0.0.2:8443');
      expect([...r.lb.registry.backends.keys()]).toEqual(['tls']);
      expect(r.drops).toEqual(['LW_GW_REGISTRATION_REJECTED plain']);
    } finally {
      await r.lb.close();
    }
  });

  it('admits them without backend TLS, or with requireTls: false', async () => {
    for (const [extra, discovery] of [
      [{}, {}],
      [{ backendTls: { ca } }, { requireTls: false }],
    ] as const) {
      const r = tlsRig(extra, discovery);
      try {
        r.register('plain', 'http://10.0.0.1:8080');
        expect([...r.lb.registry.backends.keys()]).toEqual(['plain']);
      } finally {
        await r.lb.close();
      }
    }
  });

  it('refuses them with requireTls: true and no backend TLS option', async () => {
    const r = tlsRig({}, { requireTls: true });
    try {
      r.register('plain', 'http://10.0.0.1:8080');
      expect([...r.lb.registry.backends.keys()]).toEqual([]);
    } finally {
      await r.lb.close();
    }
  });
});

describe('a discovered backend whose agent went silent without a Last Will', () => {
  const interval = 1_000;
  /** Four backends reporting every second; b1-b3 die with no will (a broker that crashed). */
  function fleet(r: ReturnType<typeof rig>): Encoder[] {
    const runs = ['b0', 'b1', 'b2', 'b3'].map((id) => r.run(id));
    runs.forEach((e, i) => {
      r.send(e.registration(`http://10.0.0.${i + 1}:8080`));
      r.send(e.metrics({ ...calmReport, intervalMs: interval }));
    });
    return runs;
  }
  const eligible = (r: ReturnType<typeof rig>): string[] => r.lb.registry.eligible.map((b) => b.id);

  it('is presumed gone once silent 15 s on the lease clock and failing checks: no panic over it', async () => {
    const r = rig();
    const panics: boolean[] = [];
    r.lb.on('panic', (e) => panics.push(e.panic));
    try {
      const [b0] = fleet(r);
      for (const id of ['b1', 'b2', 'b3']) r.lb.registry.get(id)!.checkDown = true;
      r.lb.registry.recompute();
      // 1 of 4 healthy: panic routes to all four, the dead ones too.
      expect(eligible(r)).toEqual(['b0', 'b1', 'b2', 'b3']);
      expect(panics).toEqual([true]);
      for (let s = 1; s <= 15; s++) {
        r.at(1_000);
        r.send(b0!.metrics({ ...calmReport, intervalMs: interval }));
      }
      // 15 s of silence is not yet more than the least silence that counts.
      expect(eligible(r)).toEqual(['b0', 'b1', 'b2', 'b3']);
      r.at(1_000);
      r.send(b0!.metrics({ ...calmReport, intervalMs: interval }));
      expect(eligible(r)).toEqual(['b0']);
      expect(panics).toEqual([true, false]);
      expect(r.lb.registry.get('b1')!.presumedGone).toBe(true);
      // The status says why it is out of panic's set too.
      expect(r.lb.registry.get('b1')!.downReason()).toBe(
        'presumed gone: its agent is silent and its checks get no answer',
      );
    } finally {
      await r.lb.close();
    }
  });

  it('is not made silent by a broker outage; its agent heard again, it is no longer gone', async () => {
    const r = rig();
    const inner = r.lb as unknown as SweepInternals;
    try {
      const runs = fleet(r);
      for (const id of ['b1', 'b2', 'b3']) r.lb.registry.get(id)!.checkDown = true;
      r.lb.registry.recompute();
      // The broker goes away for a minute: the lease clock stands still.
      inner.source!.isConnected = false;
      inner.advanceLease(r.now(), false);
      for (let s = 0; s < 60; s++) r.at(1_000);
      expect(eligible(r)).toEqual(['b0', 'b1', 'b2', 'b3']);
      // Back: 10 s connected, still not silent (b0 reporting again).
      inner.source!.isConnected = true;
      inner.advanceLease(r.now(), true);
      for (let s = 0; s < 10; s++) {
        r.at(1_000);
        r.send(runs[0]!.metrics({ ...calmReport, intervalMs: interval }));
      }
      expect(eligible(r)).toEqual(['b0', 'b1', 'b2', 'b3']);
      for (let s = 0; s < 10; s++) {
        r.at(1_000);
        r.send(runs[0]!.metrics({ ...calmReport, intervalMs: interval }));
      }
      expect(eligible(r)).toEqual(['b0']);
      // b2's agent speaks again (it was only cut off): b2 counts for panic again (b0 of
      // b0 and b2 healthy is not below the 50% threshold, so the set stays).
      expect(r.lb.registry.get('b2')!.presumedGone).toBe(true);
      r.send(runs[2]!.metrics({ ...calmReport, intervalMs: interval }));
      expect(r.lb.registry.get('b2')!.presumedGone).toBe(false);
      expect(r.lb.registry.get('b1')!.presumedGone).toBe(true);
    } finally {
      await r.lb.close();
    }
  });

  it('is not presumed gone while its checks are answered (a 5xx): panic still serves it', async () => {
    // Every health endpoint answers 503 (a shared dependency down) and the agents are cut
    // off from a restarted broker (silent, no Last Will): the servers are there, and panic
    // is what serves them. Presumed gone, every request was 503 LW_GW_NO_BACKEND.
    const r = rig();
    try {
      fleet(r);
      const ids = ['b0', 'b1', 'b2', 'b3'];
      for (const id of ids) {
        const b = r.lb.registry.get(id)!;
        b.checkDown = true;
        b.checkAnswered = true;
      }
      r.lb.registry.recompute();
      expect(eligible(r)).toEqual(ids);
      for (let s = 0; s < 30; s++) r.at(1_000);
      expect(ids.map((id) => r.lb.registry.get(id)!.agentSilent)).toEqual([true, true, true, true]);
      expect(eligible(r)).toEqual(ids);
      expect(r.lb.registry.get('b1')!.presumedGone).toBe(false);
      // b1's server dies: its checks now get no answer, and it is gone.
      const b1 = r.lb.registry.get('b1')!;
      b1.checkAnswered = false;
      r.lb.registry.recompute();
      expect(eligible(r)).toEqual(['b0', 'b2', 'b3']);
    } finally {
      await r.lb.close();
    }
  });

  it('says when no routable backend is left, though panic never came on', async () => {
    const r = rig();
    const said: Array<[boolean, number]> = [];
    r.lb.on('panic', (e) => said.push([e.panic, e.routable]));
    try {
      const runs = ['p0', 'p1'].map((id) => r.run(id));
      runs.forEach((e, i) => r.send(e.registration(`http://10.0.0.${i + 1}:8080`)));
      r.at(1_000);
      // Both pods crash at once: wills, and checks that get no answer.
      for (const e of runs) r.send(e.status('offline', { will: true }));
      for (const id of ['p0', 'p1']) r.lb.registry.get(id)!.checkDown = true;
      r.lb.registry.recompute();
      expect(eligible(r)).toEqual([]);
      expect(said).toEqual([[false, 0]]);
    } finally {
      await r.lb.close();
    }
  });

  it('an agent reporting once a minute is silent only after three of its intervals', async () => {
    const r = rig({ forgetAfterMs: 600_000 });
    try {
      const e = r.run('slow');
      r.send(e.registration('http://10.0.0.9:8080'));
      r.send(e.metrics({ ...calmReport, intervalMs: 60_000 }));
      r.lb.registry.get('slow')!.checkDown = true;
      r.at(170_000);
      expect(r.lb.registry.get('slow')!.presumedGone).toBe(false);
      r.at(11_000);
      expect(r.lb.registry.get('slow')!.presumedGone).toBe(true);
    } finally {
      await r.lb.close();
    }
  });
});

describe('messages of another agent run than the one that admitted a discovered backend', () => {
  const ids = (r: ReturnType<typeof rig>): string[] => r.lb.registry.eligible.map((b) => b.id);

  it('never apply, before its registration is refused or after: a stop or a drain stays', async () => {
    for (const how of ['offline', 'draining'] as const) {
      const r = rig();
      try {
        const a = r.run('web');
        r.send(a.registration('http://10.0.0.1:8080'));
        r.send(a.metrics(calmReport));
        r.at(1_000);
        r.send(a.status(how));
        expect(ids(r)).toEqual([]);
        // A second agent for the id starts as every agent does: `online`, then its
        // registration (refused: not an allowed address). Its `online` put the stopped or
        // drained backend back in rotation, before the refusal and for good after.
        r.at(1_000);
        const second = r.run('web');
        r.send(second.status('online'));
        r.send(second.registration('http://192.168.0.1:8080'));
        r.send(second.metrics(calmReport));
        expect(ids(r)).toEqual([]);
        r.at(30_000);
        expect(ids(r)).toEqual([]);
        expect(r.drops.map(([code]) => code)).toEqual([
          'LW_GW_UNKNOWN_BACKEND',
          'LW_GW_REGISTRATION_REJECTED',
          'LW_GW_REGISTRATION_REJECTED',
        ]);
      } finally {
        await r.lb.close();
      }
    }
  });

  it('take the entry out of rotation while its admitting run is silent, until the new run registers', async () => {
    const r = rig();
    try {
      // A dead run's registration, copied and published again as retained: a gateway that
      // has just started admits it (it has heard no later run).
      const dead = r.run('web');
      r.at(1_000);
      const live = r.run('web');
      r.send(dead.registration('http://10.0.0.1:8080'));
      r.send(r.run('api').registration('http://10.0.0.2:8080'));
      expect(ids(r).sort()).toEqual(['api', 'web']);
      // The live run reports every second, its registration due in up to 20 s. Before, every
      // request for web went to the dead run's address (a reused IP: another server) all
      // that time, the live run's reports dropped as unregistered.
      for (let i = 0; i < 4; i++) {
        r.send(live.metrics(calmReport));
        expect([i, ids(r).sort()]).toEqual([i, ['api', 'web']]);
        r.at(1_000);
      }
      // Past three of its report intervals with nothing from the run that registered it.
      r.send(live.metrics(calmReport));
      expect(ids(r)).toEqual(['api']);
      expect(r.lb.registry.get('web')!.conditionNow()).toBe('down');
      // Its registration takes the id (at its own address): back in rotation.
      r.send(live.registration('http://10.0.0.3:8080'));
      r.at(0);
      expect(ids(r).sort()).toEqual(['api', 'web']);
      expect(r.url('web')).toBe('http://10.0.0.3:8080/');
      // At the same address, a takeover clears it too.
      const next = r.run('web');
      for (let i = 0; i < 5; i++) {
        r.send(next.metrics(calmReport));
        r.at(1_000);
      }
      expect(ids(r)).toEqual(['api']);
      r.send(next.registration('http://10.0.0.3:8080'));
      expect(ids(r).sort()).toEqual(['api', 'web']);
    } finally {
      await r.lb.close();
    }
  });

  it('leave the entry in rotation while its admitting run is heard, or back once it is heard again', async () => {
    const r = rig();
    try {
      const a = r.run('web');
      r.send(a.registration('http://10.0.0.1:8080'));
      r.at(1_000);
      // A second live agent sharing the id (an overlap in a deploy): both report.
      const b = r.run('web');
      for (let i = 0; i < 10; i++) {
        r.send(a.metrics(calmReport));
        r.send(b.metrics(calmReport));
        r.at(1_000);
        expect([i, ids(r)]).toEqual([i, ['web']]);
      }
      // The admitting run goes quiet: out; it reports again: back.
      for (let i = 0; i < 5; i++) {
        r.send(b.metrics(calmReport));
        r.at(1_000);
      }
      expect(ids(r)).toEqual([]);
      r.send(a.metrics(calmReport));
      expect(ids(r)).toEqual(['web']);
    } finally {
      await r.lb.close();
    }
  });

  it('leave it in rotation when the agent restarts in place: its status comes just before its registration', async () => {
    const r = rig();
    const events: string[] = [];
    r.lb.on('backend-down', (e) => events.push(`down ${e.id}`));
    try {
      const a = r.run('web');
      r.send(a.registration('http://10.0.0.1:8080'));
      r.send(a.metrics(calmReport));
      r.at(8_000); // the agent restarting, slowly
      const b = r.run('web');
      r.send(b.status('online'));
      r.send(b.registration('http://10.0.0.1:8080'));
      r.send(b.metrics(calmReport));
      expect(ids(r)).toEqual(['web']);
      expect(events).toEqual([]);
    } finally {
      await r.lb.close();
    }
  });

  it("wait for the longer of the two runs' report intervals, and stand again when the new run is refused", async () => {
    const r = rig();
    try {
      const a = r.run('web');
      r.send(a.registration('http://10.0.0.1:8080'));
      r.send(a.metrics({ ...calmReport, intervalMs: 10_000 }));
      // A run reporting every second beside one reporting every 10 s: 30 s, not 3.
      r.at(1_000);
      const b = r.run('web');
      for (let i = 0; i < 24; i++) {
        r.at(1_000);
        r.send(b.metrics(calmReport));
      }
      expect(ids(r)).toEqual(['web']);
      for (let i = 0; i < 6; i++) {
        r.at(1_000);
        r.send(b.metrics(calmReport));
      }
      expect(ids(r)).toEqual([]);
      // Its registration is refused (an address outside the rules): another instance, not
      // this backend's agent moving on. The entry stands again, on local signals.
      r.send(b.registration('http://192.168.0.1:8080'));
      expect(ids(r)).toEqual(['web']);
    } finally {
      await r.lb.close();
    }
  });

  it("never apply an earlier refused run's Last Will, however often it is sent again", async () => {
    const r = rig();
    try {
      const a = r.run('web');
      r.send(a.registration('http://10.0.0.1:8080'));
      r.send(a.metrics(calmReport));
      r.at(1_000);
      const first = r.run('web');
      r.send(first.registration('http://192.168.0.1:8080'));
      const willOfFirst = first.status('offline', { will: true });
      r.at(1_000);
      // The same misconfigured agent restarted: the refused run is another one now, and
      // only the last refused run's messages were refused: the first one's will (captured,
      // or its connection breaking late) took the admitted backend out after each report.
      r.send(r.run('web').registration('http://192.168.0.1:8080'));
      for (let i = 0; i < 5; i++) {
        r.send(a.metrics(calmReport));
        r.at(1_000);
        r.send(willOfFirst);
        expect([i, ids(r), r.lb.registry.get('web')!.agentLost]).toEqual([i, ['web'], false]);
      }
    } finally {
      await r.lb.close();
    }
  });

  it("keep the admitted run the order when the guard's state was swept (a broker outage longer than its retention)", async () => {
    const r = rig({ forgetAfterMs: 60_000 });
    const inner = r.lb as unknown as SweepInternals;
    try {
      const a = r.run('web');
      r.send(a.registration('http://10.0.0.1:8080'));
      r.at(1_000);
      const second = r.run('web');
      r.send(second.registration('http://192.168.0.1:8080'));
      r.send(a.metrics(calmReport));
      // 100 s without the broker: the lease waits, the replay state is swept.
      inner.source = { isConnected: false, close: () => Promise.resolve() };
      for (let i = 0; i < 100; i++) {
        r.at(1_000);
        inner.advanceLease(r.now(), false);
      }
      inner.source = { isConnected: true, close: () => Promise.resolve() };
      inner.advanceLease(r.now(), true);
      // Back: the second agent's retained registration comes first. Held with no order, it
      // made every message of the admitted run (an earlier epoch) a replay, and the backend
      // was forgotten when its lease ended.
      r.drops.length = 0;
      r.send(second.registration('http://192.168.0.1:8080'));
      for (let i = 0; i < 90; i++) {
        r.send(a.metrics(calmReport));
        r.send(second.metrics(calmReport));
        r.at(1_000);
      }
      expect(r.url('web')).toBe('http://10.0.0.1:8080/');
      expect(r.removed).toEqual([]);
      expect(r.drops.filter(([code]) => code === 'LW_PROTO_REPLAY')).toEqual([]);
    } finally {
      await r.lb.close();
    }
  });
});

describe('a backend forgotten with a request still on it', () => {
  it('leaves no metric series once that request has answered', async () => {
    const r = rig({ forgetAfterMs: 5_000 });
    const series = async (): Promise<string[]> =>
      (await r.lb.metrics.registry.metrics())
        .split('\n')
        .filter((line) => line.includes('backend="web-0"'));
    try {
      r.send(r.run('web-0').registration('http://10.0.0.1:8080'));
      const old = r.lb.registry.get('web-0')!;
      r.lb.attemptStarted(old, r.now());
      // Its agent restarts at another address (the old entry retired with the request on
      // it), then goes silent: forgotten, its series with it.
      r.at(1_000);
      r.send(r.run('web-0').registration('http://10.0.0.2:8080'));
      for (let i = 0; i < 7; i++) r.at(1_000);
      expect(r.url('web-0')).toBeUndefined();
      expect(await series()).toEqual([]);
      // The request on the old address answers (request-flow.ts counts it by id).
      r.lb.metrics.onResponse(old.id, 200, 6_000);
      r.lb.attemptEnded(old, r.now(), 6_000, true, false, false);
      r.at(1_000);
      expect(await series()).toEqual([]);
    } finally {
      await r.lb.close();
    }
  });
});

describe('a backend moved with requests still on it', () => {
  it("keeps them in the gateway's in-flight total until they end", async () => {
    const r = rig();
    try {
      r.send(r.run('web-0').registration('http://10.0.0.1:8080'));
      const old = r.lb.registry.get('web-0')!;
      for (let i = 0; i < 4; i++) r.lb.attemptStarted(old, r.now());
      expect(r.lb.snapshot().inFlight).toBe(4);
      r.at(1_000);
      r.send(r.run('web-0').registration('http://10.0.0.2:8080'));
      expect(r.url('web-0')).toBe('http://10.0.0.2:8080/');
      const moved = r.lb.registry.get('web-0')!;
      r.lb.attemptStarted(moved, r.now());
      // The status endpoint and loadwise_in_flight read this total: 1 of 5 before.
      expect(r.lb.snapshot().inFlight).toBe(5);
      expect(r.lb.snapshot().backends.map((b) => b.inFlight)).toEqual([1]);
      for (let i = 0; i < 4; i++) r.lb.attemptEnded(old, r.now(), 100, true, false, false);
      expect(r.lb.snapshot().inFlight).toBe(1);
    } finally {
      await r.lb.close();
    }
  });
});

describe('a backend that left', () => {
  it("leaves its parsed URL in no proxy cache (a churning fleet's cache held only the departed)", async () => {
    const r = rig({ forgetAfterMs: 5_000 });
    // What a request to a backend does: the engine parses its URL once and keeps it.
    const engine = r.lb.engine as unknown as {
      parsed(href: string): unknown;
      parsedTargets: Map<string, unknown>;
    };
    try {
      const runs = [1, 2, 3].map((i) => r.run(`web-${i}`));
      runs.forEach((run, i) => {
        r.send(run.registration(`http://10.0.0.${i + 1}:8080`));
        engine.parsed(r.url(`web-${i + 1}`)!);
      });
      expect(engine.parsedTargets.size).toBe(3);
      // web-1 moves (its old copy retired), web-2 goes silent and is forgotten.
      r.at(1_000);
      r.send(r.run('web-1').registration('http://10.0.0.9:8080'));
      for (let i = 0; i < 7; i++) {
        r.send(runs[2]!.metrics(calmReport));
        r.at(1_000);
      }
      expect(r.url('web-2')).toBeUndefined();
      expect([...engine.parsedTargets.keys()]).toEqual(['http://10.0.0.3:8080/']);
    } finally {
      await r.lb.close();
    }
  });
});

describe("a registration's weight", () => {
  it('is taken at most at discovery.maxWeight (default 1): one key holder cannot claim the fleet', () => {
    // A review of discovery: the weight divides the backend's score, and a registration
    // signed with one backend's own key claiming 1e6 took every request of three backends.
    const r = rig();
    r.send(r.run('web-0').registration('http://10.0.0.1:8080'));
    r.send(r.run('evil').registration('http://10.0.0.2:8080', 1e6));
    r.send(r.run('light').registration('http://10.0.0.3:8080', 0.5));
    expect(r.lb.registry.get('evil')?.weight).toBe(1);
    expect(r.lb.registry.get('light')?.weight).toBe(0.5);
    const raised = rig({ maxWeight: 4 });
    raised.send(raised.run('big').registration('http://10.0.0.4:8080', 3));
    raised.send(raised.run('evil').registration('http://10.0.0.5:8080', 1e6));
    expect(raised.lb.registry.get('big')?.weight).toBe(3);
    expect(raised.lb.registry.get('evil')?.weight).toBe(4);
  });
});
