/**
 * The whole dispatch of a request before the proxy, on a real Balancer (the one
 * `loadBalance(opts)` builds, no broker, an injected clock): eligibility,
 * saturation and the pick (`Balancer.choose`), the start bookkeeping
 * (`attemptStarted`: in-flight, metrics, traffic window) and the end of an
 * earlier request (`attemptEnded`). That is what request-flow.ts runs per
 * request around `engine.web`.
 *
 * Rows: default options, and `saturation.maxExpectedWaitMs` set (each
 * saturation test then computes an expected wait); each also as `scan`, the
 * dispatch before `choose` (every eligible backend tested for saturation,
 * then the pick), kept here so the ratio comes from the same run.
 */
import {
  createSeededRandom,
  loadBalance,
  type Endpoint,
  type Logger,
} from '@loadwise/gateway-plugin';
import { internals, type Balancer } from '@loadwise/gateway-plugin/internals';

const quiet: Logger = { info: () => {}, warn: () => {}, error: () => {} };
const STEP_MS = 0.0005;

export type DispatchVariant =
  'choose' | 'choose+maxExpectedWaitMs' | 'scan' | 'scan+maxExpectedWaitMs';
export const DISPATCH_VARIANTS: DispatchVariant[] = [
  'choose',
  'choose+maxExpectedWaitMs',
  'scan',
  'scan+maxExpectedWaitMs',
];

interface Rig {
  lb: Balancer;
  clock: { t: number };
  close(): Promise<void>;
}

function rig(n: number, variant: DispatchVariant, seed: number): Rig {
  const clock = { t: 1_000 };
  const backends = Array.from({ length: n }, (_, i) => ({
    id: `b${i}`,
    url: `http://127.0.0.1:${20000 + i}`,
  }));
  const mw = loadBalance({
    backends,
    healthCheck: false,
    overload: false,
    logger: quiet,
    now: () => clock.t,
    random: createSeededRandom(seed),
    // Above every wait this state produces (5-50 ms service, a few in flight): the test runs,
    // and excludes nothing, as on a gateway that is not overloaded.
    ...(variant.endsWith('maxExpectedWaitMs') ? { saturation: { maxExpectedWaitMs: 5_000 } } : {}),
  });
  const lb = internals(mw);
  const random = createSeededRandom(seed + 99);
  // History: every backend has served requests (5-50 ms), as in run.ts's cluster().
  for (const b of lb.registry.eligible) {
    const latency = 5 + random() * 45;
    for (let r = 0; r < 20; r++) {
      lb.attemptStarted(b, clock.t);
      clock.t += 1;
      lb.attemptEnded(b, clock.t, latency * (0.8 + random() * 0.4), true, false, false);
    }
  }
  return { lb, clock, close: () => mw.close({ graceMs: 0 }) };
}

/** The dispatch before Balancer.choose: O(eligible) saturation scan, then the pick. */
function scanChoose(lb: Balancer, nowMs: number): ReturnType<Balancer['choose']> {
  let exclude: Set<Endpoint> | undefined;
  for (const b of lb.registry.eligible) {
    if (lb.isSaturated(b, nowMs)) (exclude ??= new Set()).add(b.endpoint);
  }
  const pick = lb.strategy.pick({ nowMs, exclude, explain: false });
  return (pick && lb.registry.get(pick.endpoint.id)) ?? 'saturated';
}

let sink = 0;

/** ns per request: choose + start, and the end of the request started `window` earlier. */
function timeDispatch(r: Rig, variant: DispatchVariant, requests: number): number {
  const { lb, clock } = r;
  const window = Math.min(lb.registry.eligible.length, 64);
  const ring: Array<ReturnType<Balancer['registry']['get']>> = new Array(window).fill(undefined);
  const startT = clock.t;
  const scan = variant.startsWith('scan');
  const start = process.hrtime.bigint();
  for (let i = 0; i < requests; i++) {
    const t = (clock.t += STEP_MS);
    const b = scan ? scanChoose(lb, t) : lb.choose(t, undefined, undefined);
    if (typeof b === 'string') continue;
    lb.attemptStarted(b, t);
    const slot = i % window;
    const old = ring[slot];
    if (old !== undefined) lb.attemptEnded(old, t, 10, true, false, false);
    ring[slot] = b;
    sink += b.requests;
  }
  const ns = Number(process.hrtime.bigint() - start) / requests;
  for (const b of ring) if (b !== undefined) lb.attemptEnded(b, clock.t, 10, true, false, false);
  if (clock.t - startT < 0) sink++;
  return ns;
}

export interface DispatchCell {
  variant: DispatchVariant;
  endpoints: number;
  ns: number;
  repsNs: number[];
}

export async function measureDispatch(
  variant: DispatchVariant,
  n: number,
  reps: number,
): Promise<DispatchCell> {
  const repsNs: number[] = [];
  for (let rep = 0; rep < reps; rep++) {
    const r = rig(n, variant, 1000 + rep);
    // The previous repetition's balancer (1,000 backends, their pools and metrics) is garbage
    // now: collect it here, not inside the timed loop (`node --expose-gc`, as bench:pick runs).
    (globalThis as { gc?: () => void }).gc?.();
    const probe = timeDispatch(r, variant, 2000);
    const requests = Math.max(2000, Math.min(2_000_000, Math.round(50e6 / Math.max(probe, 1))));
    timeDispatch(r, variant, requests >> 1); // warm-up (JIT)
    repsNs.push(timeDispatch(r, variant, requests));
    await r.close();
    // Back to the event loop: closing queues the warm-up servers' 'close' on process.nextTick,
    // and a loop of promises alone never runs those ticks, so every closed rig (1,000 backends)
    // stayed reachable and the heap grew by ~4.6 MB a repetition, timed GC included.
    await new Promise<void>((resolve) => setImmediate(resolve));
  }
  const s = [...repsNs].sort((a, b) => a - b);
  const m = s.length >> 1;
  const ns = s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
  return { variant, endpoints: n, ns, repsNs };
}

export function dispatchSink(): number {
  return sink;
}
