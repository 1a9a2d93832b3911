/**
 * The path check, end to end: backend b's agent keeps reporting `up` (fresh,
 * signed reports through a real broker), while the network between the
 * gateway and b breaks (test/kit/fault-proxy.ts on b's path only). No request
 * is sent, so passive detection has nothing to go on: the gateway's path
 * check (health/active-checker.ts) must take b out of rotation, and bring it
 * back once the path heals, without a client's request ever going into it.
 */
import { startFaultProxy, type FaultProxy } from '../kit/fault-proxy';
import { useSignedFleet } from '../kit/chaos';
import { eventually } from '../kit/fleet';

let proxy: FaultProxy | undefined;

const fleetOf = useSignedFleet({
  label: 'pathcheck',
  backends: ['a', 'b'].map((id) => ({ id, slots: 4, serviceMs: 5 })),
  urls: async (fleet) => {
    proxy = await startFaultProxy(fleet.get('b').port);
    return { b: proxy.url };
  },
  gateway: {
    healthCheck: {
      path: '/',
      intervalMs: 200,
      timeoutMs: 150,
      unhealthyThreshold: 2,
      healthyThreshold: 1,
    },
  },
});

afterAll(() => proxy?.close(), 30_000);

it.each([
  ['reset', { kind: 'reset' as const }],
  ['black hole', { kind: 'blackhole' as const }],
])(
  '%s on the idle path to b: down while its agent says up, back once the path heals',
  async (_name, fault) => {
    const { gw } = fleetOf();
    await eventually(
      () => gw.backend('b').state === 'healthy' && gw.backend('b').reportFresh,
      10_000,
      'b healthy and reported at first',
    );
    const sentBefore = gw.backend('b').requestsTotal;
    proxy!.setFault(fault);
    await eventually(
      () => gw.backend('b').state === 'down',
      10_000,
      () => `b down (b is ${gw.backend('b').state})`,
    );
    // The agent still reports b up: only this gateway's path is broken. (Fresh for 1 s: a
    // stall of this process could miss one instant, so waited for.)
    await eventually(() => gw.backend('b').reportFresh, 5_000, "b's agent still reporting");
    expect(gw.backend('b').stateReason).toMatch(
      /^no answer to the path check from this gateway \(.+\)$/,
    );
    proxy!.setFault({ kind: 'none' });
    await eventually(() => gw.backend('b').state === 'healthy', 10_000, 'b healthy again');
    // No client request was sent into the broken path: the checks did the work.
    expect(gw.backend('b').requestsTotal).toBe(sentBefore);
  },
  40_000,
);
