/**
 * `p2c(metric, options)`: a whole strategy from a metric, "lower is better"
 * (tower's `p2c::Balance` over a `Load`). `p2c`, `peak-ewma` and the default
 * `load-aware` are each one call of it, and so can a user's own strategy:
 *
 *   registerStrategy('least-cpu', p2c((ep) => cpuOf(ep.id), { name: 'least-cpu' }));
 *
 * It samples `choices` endpoints (p2c-select.ts), keeps the lowest metric, and
 * breaks near-ties (`tieTolerance`, relative) among every sampled candidate
 * within it in turn: the least recently picked wins (breakTie). With
 * `slowStart` on, a backend ramping up after a restart or an ejection takes
 * its share of the traffic (slow-start.ts). `choices` and `tieTolerance` may
 * also come from `strategyOptions`.
 */
import { integerOption, numberOption } from '../load/option-check';
import { EndpointList } from './endpoint-list';
import { Choice, MAX_CHOICES, selectP2C, type Metric } from './p2c-select';
import type { StrategyFactory } from './registry';
import { withSlowStartShare } from './slow-start';
import { fmt, randomIndex, readCommon } from './strategy-options';
import type { Endpoint, Pick, PickContext, Strategy } from './types';

export interface P2COptions {
  /** The strategy's name, in explain reasons and errors. */
  name: string;
  /** Endpoints sampled per pick (default 2: power of two choices). */
  choices?: number;
  /**
   * Relative difference from the best metric below which a sampled candidate ties with it
   * (default 0), won by the one of all that tie this strategy picked least recently.
   */
  tieTolerance?: number;
  /**
   * The metric is a latency-based time in ms: a difference beyond
   * `tieTolerance` but within the pick's `measurementNoiseMs` (the gateway's
   * own event-loop lateness) is a tie too, won by the fewest requests in flight
   * from this gateway (the least recently picked of those with as few); so is one within
   * the sampling error of a figure nobody has refreshed lately
   * (`EndpointLoad.expectedWaitError`, samplingBand below). Default false.
   */
  noiseTies?: boolean;
  /** A backend in slow start gets a share of the traffic, not a handicap (default true). */
  slowStart?: boolean;
  /** An endpoint's figure in explain reasons (default: the metric, `≈1.5`). */
  describe?: (ep: Endpoint, metric: number) => string;
  /** The head of explain reasons (default `<name> p2c`, or `<name> best of <choices>`). */
  label?: string;
}

const P2C_KEYS = ['choices', 'tieTolerance'] as const;

export function p2c(metric: Metric, options: P2COptions): StrategyFactory {
  const { name } = options;
  const describe = options.describe ?? ((_ep: Endpoint, m: number) => `≈${fmt(m)}`);
  return (opts?: unknown): Strategy => {
    const { bag, prefix, common } = readCommon(name, opts, P2C_KEYS);
    const choices = integerOption(bag, prefix, 'choices', options.choices ?? 2, 1, MAX_CHOICES);
    const tieTolerance = numberOption(bag, prefix, 'tieTolerance', options.tieTolerance ?? 0, 0, 1);
    const noiseTies = options.noiseTies === true;
    const label = options.label ?? `${name} ${choices === 2 ? 'p2c' : `best of ${choices}`}`;
    const m = options.slowStart === false ? metric : withSlowStartShare(metric, common.random);
    const choice = new Choice();
    // The endpoints and when each was last picked (ties go round robin: breakTie).
    const order: TieOrder = { list: new EndpointList([]), last: new Float64Array(0), counter: 1 };
    return {
      name,
      setEndpoints(endpoints) {
        const before = order.list;
        const list = new EndpointList(endpoints);
        const last = new Float64Array(list.length);
        for (let i = 0; i < last.length; i++) {
          // A backend kept across the change keeps its place; a new one joins in random order
          // below every pick so far (counts start from 1).
          const was = before.indexOf(list.items[i]!);
          last[i] = was >= 0 ? order.last[was]! : common.random();
        }
        order.last = last;
        order.list = list;
      },
      pick(ctx: PickContext): Pick | undefined {
        const c = selectP2C(order.list, choices, m, common.random, ctx, choice);
        if (c.best === undefined) return undefined;
        const relative = tieTolerance * c.bestMetric;
        const band =
          relative +
          (noiseTies && c.other !== undefined
            ? (ctx.measurementNoiseMs ?? 0) + samplingBand(c, ctx.nowMs)
            : 0);
        if (tieTolerance > 0 && c.other !== undefined && c.otherMetric - c.bestMetric <= band) {
          const i = breakTie(c, relative, band, order, common.random);
          if (i >= 0) {
            const best = c.best;
            const bestMetric = c.bestMetric;
            c.best = c.sampled[i]!;
            c.bestMetric = c.metrics[i]!;
            c.other = best;
            c.otherMetric = bestMetric;
          }
        }
        const ep = c.best;
        const at = order.list.indexOf(ep);
        if (at >= 0) order.last[at] = order.counter++;
        if (!ctx.explain) return { endpoint: ep };
        const vs =
          c.other === undefined
            ? ' (only candidate)'
            : ` ${c.otherMetric - c.bestMetric > band ? '<' : '='} ${c.other.id} ${describe(c.other, c.otherMetric)}`;
        return { endpoint: ep, reason: `${label}: ${ep.id} ${describe(ep, c.bestMetric)}${vs}` };
      },
    };
  };
}

/** Standard errors apart within which two estimates count as equal (about 95% two-sided). */
export const SAMPLING_TIE_Z = 2;
/** The sampling band never spans more than this share of the best metric. */
export const MAX_SAMPLING_TIE = 0.25;

/**
 * How far apart the best and another sampled candidate can be by sampling
 * alone: SAMPLING_TIE_Z standard errors of their difference, from each
 * estimate's relative error (EndpointLoad.expectedWaitError), the widest pair,
 * at most MAX_SAMPLING_TIE of the best. A latency EWMA over a second of
 * samples with a coefficient of variation of 1 is off by ~5% at 170 samples a
 * second; a strict comparison then sent one of three identical 64-slot
 * backends every request for seconds at a time (the rate sweep, and
 * queueing-sim.test.ts), since the others got no samples to correct theirs.
 * A real difference of 2x stays a difference whatever the noise.
 */
function samplingBand(c: Choice, nowMs: number): number {
  const best = c.best!;
  const eb = (best.load.expectedWaitError?.(nowMs) ?? 0) * c.bestMetric;
  let widest = 0;
  for (let i = 0; i < c.count; i++) {
    const ep = c.sampled[i]!;
    if (ep === best) continue;
    const e = (ep.load.expectedWaitError?.(nowMs) ?? 0) * c.metrics[i]!;
    if (e > widest) widest = e;
  }
  if (eb === 0 && widest === 0) return 0;
  const band = SAMPLING_TIE_Z * Math.sqrt(eb * eb + widest * widest);
  const cap = MAX_SAMPLING_TIE * c.bestMetric;
  return band < cap ? band : cap;
}

/**
 * Which of the endpoints a strategy holds it picked least recently: `last[i]`
 * is the pick counter when `list.items[i]` was last picked (a random fraction
 * below 1 before its first pick), so ties go round robin.
 */
interface TieOrder {
  list: EndpointList;
  last: Float64Array;
  counter: number;
}

/** Indices into `c.sampled` of the candidates tied with the best (reused: picks are synchronous). */
const tied = new Int32Array(MAX_CHOICES);

/**
 * A tie among every sampled candidate within `band` of the best, not only the
 * runner-up: with `choices` of 3 or more, a tie between the best two only would
 * never pick the third of three idle backends (the one whose noise happened to
 * be highest), whose figure only a pick refreshes. All within `relative`: the
 * one this strategy picked least recently. Wider (the event-loop noise band):
 * the fewest in flight from this gateway, then the least recently picked of
 * those. Round robin among equals, as nginx and least-in-flight.ts break
 * theirs: splitting arrivals in turn rather than by a coin makes each
 * backend's arrivals more regular, and its queue shorter (the queueing
 * simulation: a coin among equals cost 2-4% of least-in-flight's p99 on
 * identical backends; docs/strategies.md, "Ties go round robin"). Returns the
 * index of the winner in `c.sampled`, or -1 when the best stays.
 */
function breakTie(
  c: Choice,
  relative: number,
  band: number,
  order: TieOrder,
  random: () => number,
): number {
  const best = c.best!;
  let n = 0;
  let widest = 0;
  for (let i = 0; i < c.count; i++) {
    if (c.sampled[i] === best) continue;
    const gap = c.metrics[i]! - c.bestMetric;
    if (gap <= band) {
      tied[n++] = i;
      if (gap > widest) widest = gap;
    }
  }
  if (n === 0) return -1;
  let keepBest = true;
  if (widest > relative) {
    let fewest = best.load.inFlight;
    for (let j = 0; j < n; j++) {
      const f = c.sampled[tied[j]!]!.load.inFlight;
      if (f < fewest) fewest = f;
    }
    keepBest = best.load.inFlight === fewest;
    let m = 0;
    for (let j = 0; j < n; j++) {
      if (c.sampled[tied[j]!]!.load.inFlight === fewest) tied[m++] = tied[j]!;
    }
    n = m;
    if (n === 0) return -1;
  }
  // The least recently picked among the tied (the best only while it is one of them).
  let winner = -1;
  let oldest = keepBest ? lastPicked(order, best) : Infinity;
  for (let j = 0; j < n; j++) {
    const t = lastPicked(order, c.sampled[tied[j]!]!);
    if (t < oldest) {
      oldest = t;
      winner = tied[j]!;
    }
  }
  // A candidate not picked within the last two rounds is one the metric keeps avoiding (a
  // slower backend whose idle figure drifts into the band): round robin would hand it every
  // tie it reaches, a fair draw only its share of them.
  if (oldest >= order.counter - 2 * order.last.length) return winner;
  if (!keepBest) return n === 1 ? tied[0]! : tied[randomIndex(random, n)]!;
  const k = n - randomIndex(random, n + 1);
  return k === 0 ? -1 : tied[k - 1]!;
}

function lastPicked(order: TieOrder, ep: Endpoint): number {
  const i = order.list.indexOf(ep);
  return i >= 0 ? order.last[i]! : 0;
}
