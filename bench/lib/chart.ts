/**
 * Charts with vega-lite 5 compiled to vega 5 and rendered to SVG headlessly
 * (no canvas, no native build; vega-lite 6 and vega 6 need Node 22 / ESM).
 */
import * as vega from 'vega';
import { compile, type TopLevelSpec } from 'vega-lite';
import type { RunRecord } from './engine';
import type { Row } from './report';

export async function renderSvg(spec: TopLevelSpec): Promise<string> {
  const view = new vega.View(vega.parse(compile(spec).spec), { renderer: 'none' });
  try {
    return await view.toSVG();
  } finally {
    view.finalize();
  }
}

/** p50 and p99 per balancer (log scale), one panel per case; or p99 against rate for a sweep. */
export function chartSpec(title: string, rows: Row[], sweep: boolean): TopLevelSpec {
  const ok = rows.filter((r) => r.runs > 0);
  if (sweep) {
    return {
      $schema: 'https://vega.github.io/schema/vega-lite/v5.json',
      title: `${title}: p99 latency against offered rate`,
      width: 520,
      height: 300,
      data: {
        values: ok.map((r) => ({
          rate: parseFloat(r.caseLabel),
          balancer: r.balancer,
          p99: Math.max(r.p99Ms, 0.1),
        })),
      },
      mark: { type: 'line', point: true },
      encoding: {
        x: { field: 'rate', type: 'quantitative', title: 'offered rate (req/s)' },
        y: {
          field: 'p99',
          type: 'quantitative',
          scale: { type: 'log' },
          title: 'p99 latency (ms, log)',
        },
        color: { field: 'balancer', type: 'nominal', legend: { labelLimit: 300 } },
      },
    };
  }
  const values = ok.flatMap((r) => [
    { case: r.caseLabel, balancer: r.balancer, percentile: 'p50', ms: Math.max(r.p50Ms, 0.1) },
    { case: r.caseLabel, balancer: r.balancer, percentile: 'p99', ms: Math.max(r.p99Ms, 0.1) },
    { case: r.caseLabel, balancer: r.balancer, percentile: 'p99.9', ms: Math.max(r.p999Ms, 0.1) },
  ]);
  // A dot plot, not bars: latencies span 1 ms to seconds, so the axis is
  // logarithmic, and bars have no meaningful base on a log scale.
  return {
    $schema: 'https://vega.github.io/schema/vega-lite/v5.json',
    title: `${title}: latency (median of runs)`,
    data: { values },
    facet: { row: { field: 'case', type: 'nominal', title: null } },
    spec: {
      width: 460,
      height: { step: 22 },
      mark: { type: 'point', filled: true, size: 70, opacity: 0.9 },
      encoding: {
        y: {
          field: 'balancer',
          type: 'nominal',
          title: null,
          sort: null,
          axis: { labelLimit: 260 },
        },
        x: {
          field: 'ms',
          type: 'quantitative',
          scale: { type: 'log' },
          title: 'latency from scheduled send (ms, log scale)',
        },
        color: { field: 'percentile', type: 'nominal', sort: ['p50', 'p99', 'p99.9'] },
        shape: { field: 'percentile', type: 'nominal', sort: ['p50', 'p99', 'p99.9'] },
      },
    },
  } as TopLevelSpec;
}

/** Scenario 3: the degraded backend's share of traffic over time, one line per balancer (first run). */
export function shareSeriesSpec(
  title: string,
  records: RunRecord[],
  backendId: string,
  marks: Array<{ tMs: number; label: string }>,
): TopLevelSpec {
  const values = records
    .filter((r) => r.run === 1 && r.result)
    .flatMap((r) =>
      r.result!.series.map((w) => {
        const total = Object.values(w.counts).reduce((a, b) => a + b, 0);
        return {
          balancer: r.balancer,
          t: w.tMs / 1000,
          share: total ? (w.counts[backendId] ?? 0) / total : 0,
        };
      }),
    );
  return {
    $schema: 'https://vega.github.io/schema/vega-lite/v5.json',
    title: `${title}: ${backendId}'s share of requests over time (run 1)`,
    width: 520,
    height: 260,
    layer: [
      {
        data: { values },
        mark: { type: 'line', interpolate: 'step-after' },
        encoding: {
          x: { field: 't', type: 'quantitative', title: 'seconds after warm-up' },
          y: { field: 'share', type: 'quantitative', title: `share sent to ${backendId}` },
          color: { field: 'balancer', type: 'nominal', legend: { labelLimit: 300 } },
        },
      },
      {
        data: { values: marks.map((m) => ({ t: m.tMs / 1000, label: m.label })) },
        mark: { type: 'rule', strokeDash: [4, 4], color: 'gray' },
        encoding: { x: { field: 't', type: 'quantitative' } },
      },
    ],
  } as TopLevelSpec;
}
