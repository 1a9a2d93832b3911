/**
 * `p2c(metric, options)`: a whole strategy from a metric, "lower is better"
 * (tower's `p2c::Balance` over a `Load`). `p2c`, `peak-ewma` and the default
 * `load-aware` are each one call of it, and so can a user's own strategy:
 *
 *   registerStrategy('least-cpu', p2c((ep) => cpuOf(ep.id), { name: 'least-cpu' }));
 *
 * It samples `choices` endpoints (p2c-select.ts), keeps the lowest metric, and
 * breaks near-ties (`tieTolerance`, relative) with a fair draw among every
 * sampled candidate within it. With
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
   * (default 0), decided by a fair draw among all that tie.
   */
  tieTolerance?: number;
  /**
   * The metric is a latency-based time in ms: a difference beyond
   * `tieTolerance` but within the pick's `measurementNoiseMs` (the gateway's
   * own event-loop lateness) is a tie too, won by the fewest requests in flight
   * from this gateway (a fair draw among those with as few); so is one within
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
    let list = new EndpointList([]);
    const choice = new Choice();
    return {
      name,
      setEndpoints(endpoints) {
        list = new EndpointList(endpoints);
      },
      pick(ctx: PickContext): Pick | undefined {
        const c = selectP2C(list, choices, m, common.random, ctx, choice);
        if (c.best === undefined) return undefined;
        const relative = tieTolerance * c.bestMetric;
        const band =
          relative +
          (noiseTies && c.other !== undefined
            ? (ctx.measurementNoiseMs ?? 0) + samplingBand(c, ctx.nowMs)
            : 0);
        if (tieTolerance > 0 && c.other !== undefined && c.otherMetric - c.bestMetric <= band) {
          const i = breakTie(c, relative, band, common.random);
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

/** Indices into `c.sampled` of the candidates tied with the best (reused: picks are synchronous). */
const tied = new Int32Array(MAX_CHOICES);

/**
 * A tie among every sampled candidate within `band` of the best, not only the
 * runner-up: with `choices` of 3 or more, a coin between the best two would
 * never pick the third of three idle backends (the one whose noise happened to
 * be highest), whose figure only a pick refreshes. All within `relative`: a
 * fair draw. Wider (the event-loop noise band): the fewest in flight from this
 * gateway, then a fair draw among those. With two sampled this is P2C's coin
 * exactly (a draw under 0.5 takes the other one). Returns the index of the
 * winner in `c.sampled`, or -1 when the best stays.
 */
function breakTie(c: Choice, relative: number, band: number, random: () => number): number {
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
  if (widest > relative) {
    let fewest = best.load.inFlight;
    for (let j = 0; j < n; j++) {
      const f = c.sampled[tied[j]!]!.load.inFlight;
      if (f < fewest) fewest = f;
    }
    const keepBest = best.load.inFlight === fewest;
    let m = 0;
    for (let j = 0; j < n; j++) {
      if (c.sampled[tied[j]!]!.load.inFlight === fewest) tied[m++] = tied[j]!;
    }
    n = m;
    if (n === 0) return -1;
    if (!keepBest) return n === 1 ? tied[0]! : tied[randomIndex(random, n)]!;
  }
  // The best counts as the first of n + 1.
  const k = n - randomIndex(random, n + 1);
  return k === 0 ? -1 : tied[k - 1]!;
}
