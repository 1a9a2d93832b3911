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
  return { lb, drops, removed, run, send, at, url };
}

describe('an id registered again at another address', () => {
  it('moves with a newer agent run; the same or an older run never moves it', async () => {
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

describe('an agent that stops (signed offline)', () => {
  it('deregisters its backend at once when nothing runs on it, and a replay cannot bring it back', async () => {
    const r = rig();
    try {
      const run1 = r.run('old');
      const captured = run1.registration('http://10.0.0.1:8080');
      r.send(captured);
      r.send(run1.status('offline', { reason: 'agent stopped' }));
      expect(r.removed).toEqual([['old', 'offline']]);
      expect(r.url('old')).toBeUndefined();
      // A capture of its registration, replayed: the replay rules still know the run.
      r.send(captured);
      expect(r.url('old')).toBeUndefined();
      expect(r.drops).toEqual([['LW_PROTO_REPLAY', 'old']]);
    } finally {
      await r.lb.close();
    }
  });

  it('keeps a backend with requests in flight until they end, unless its agent is back by then', async () => {
    const r = rig();
    try {
      const run1 = r.run('a');
      r.send(run1.registration('http://10.0.0.1:8080'));
      const b = r.lb.registry.get('a')!;
      b.load.onRequestStart(T0);
      r.send(run1.status('offline', { reason: 'agent stopped' }));
      r.at(1_000);
      // Out of rotation (offline), not forgotten: a request is still on it.
      expect(r.url('a')).toBe('http://10.0.0.1:8080/');
      expect(r.lb.registry.eligible).toEqual([]);
      // A new run in place (same address) says online before the request ends: it stays.
      r.at(1_000);
      const run2 = r.run('a');
      r.send(run2.status('online'));
      r.send(run2.registration('http://10.0.0.1:8080'));
      b.load.onRequestEnd(T0 + 2_000, 10, true, false);
      r.at(1_000);
      expect(r.removed).toEqual([]);
      expect(r.lb.registry.eligible.map((x) => x.id)).toEqual(['a']);
      // Offline again: idle now, so forgotten at once.
      r.send(run2.status('offline', { reason: 'agent stopped' }));
      expect(r.removed).toEqual([['a', 'offline']]);
    } finally {
      await r.lb.close();
    }
  });
});

describe('maxBackends reached', () => {
  it('gives the slot of the backend whose agent left longest ago to a new one', async () => {
    const r = rig({ maxBackends: 3 });
    try {
      const runs = ['d0', 'd1', 'd2'].map((id) => r.run(id));
      runs.forEach((e, i) => r.send(e.registration(`http://10.0.0.${i + 1}:8080`)));
      // Full of live backends: refused.
      r.send(r.run('n0').registration('http://10.0.1.1:8080'));
      expect(r.url('n0')).toBeUndefined();
      // d1, then d0 crash (Last Will); d2 lives on.
      r.at(1_000);
      r.send(runs[1]!.status('offline', { will: true }));
      r.at(1_000);
      r.send(runs[0]!.status('offline', { will: true }));
      r.send(r.run('n1').registration('http://10.0.1.2:8080'));
      expect(r.url('n1')).toBe('http://10.0.1.2:8080/');
      expect(r.removed).toEqual([['d1', 'evicted']]);
      expect([...r.lb.registry.backends.keys()].sort()).toEqual(['d0', 'd2', 'n1']);
    } finally {
      await r.lb.close();
    }
  });
});
