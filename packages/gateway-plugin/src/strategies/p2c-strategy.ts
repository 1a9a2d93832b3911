/**
 * `p2c(metric, options)`: a whole strategy from a metric, "lower is better"
 * (tower's `p2c::Balance` over a `Load`). `p2c`, `peak-ewma` and the default
 * `load-aware` are each one call of it, and so can a user's own strategy:
 *
 *   registerStrategy('least-cpu', p2c((ep) => cpuOf(ep.id), { name: 'least-cpu' }));
 *
 * It samples `choices` endpoints (p2c-select.ts), keeps the lowest metric, and
 * breaks near-ties (`tieTolerance`, relative) with a fair coin. With
 * `slowStart` on, a backend ramping up after a restart or an ejection takes
 * its share of the traffic (slow-start.ts). `choices` and `tieTolerance` may
 * also come from `strategyOptions`.
 */
import { integerOption, numberOption } from '../load/option-check';
import { EndpointList } from './endpoint-list';
import { Choice, MAX_CHOICES, selectP2C, type Metric } from './p2c-select';
import type { StrategyFactory } from './registry';
import { withSlowStartShare } from './slow-start';
import { fmt, readCommon } from './strategy-options';
import type { Endpoint, Pick, PickContext, Strategy } from './types';

export interface P2COptions {
  /** The strategy's name, in explain reasons and errors. */
  name: string;
  /** Endpoints sampled per pick (default 2: power of two choices). */
  choices?: number;
  /** Relative difference of two metrics below which they tie, decided by a coin (default 0). */
  tieTolerance?: number;
  /**
   * The metric is a latency-based time in ms: a difference beyond
   * `tieTolerance` but within the pick's `measurementNoiseMs` (the gateway's
   * own event-loop lateness) is a tie too, which goes to the candidate with
   * fewer requests in flight from this gateway (a coin when equal). Default false.
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
        const band = relative + (noiseTies ? (ctx.measurementNoiseMs ?? 0) : 0);
        const other = c.other;
        const gap = c.otherMetric - c.bestMetric;
        if (
          tieTolerance > 0 &&
          other !== undefined &&
          gap <= band &&
          (gap <= relative ? common.random() < 0.5 : fewerInFlight(other, c.best, common.random))
        ) {
          const best = c.best;
          const bestMetric = c.bestMetric;
          c.best = other;
          c.bestMetric = c.otherMetric;
          c.other = best;
          c.otherMetric = bestMetric;
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

/** A tie between `a` and `b`: true when `a` has fewer requests in flight, a coin when equal. */
function fewerInFlight(a: Endpoint, b: Endpoint, random: () => number): boolean {
  const x = a.load.inFlight;
  const y = b.load.inFlight;
  return x === y ? random() < 0.5 : x < y;
}
