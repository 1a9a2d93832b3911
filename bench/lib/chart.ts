/**
 * Charts with vega-lite 5 compiled to vega 5 and rendered to SVG headlessly
 * (no canvas, no native build; vega-lite 6 and vega 6 need Node 22 / ESM).
 */
import * as vega from 'vega';
import { compile, type TopLevelSpec } from 'vega-lite';
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
        color: { field: 'balancer', type: 'nominal' },
      },
    };
  }
  const values = ok.flatMap((r) => [
    { case: r.caseLabel, balancer: r.balancer, percentile: 'p50', ms: Math.max(r.p50Ms, 0.1) },
    { case: r.caseLabel, balancer: r.balancer, percentile: 'p99', ms: Math.max(r.p99Ms, 0.1) },
  ]);
  return {
    $schema: 'https://vega.github.io/schema/vega-lite/v5.json',
    title: `${title}: latency (median of runs)`,
    data: { values },
    facet: { row: { field: 'case', type: 'nominal', title: null } },
    spec: {
      width: 420,
      height: { step: 11 },
      mark: 'bar',
      encoding: {
        y: { field: 'balancer', type: 'nominal', title: null, sort: null },
        yOffset: { field: 'percentile' },
        x: {
          field: 'ms',
          type: 'quantitative',
          scale: { type: 'log' },
          title: 'latency (ms, log scale)',
        },
        color: { field: 'percentile', type: 'nominal' },
      },
    },
  } as TopLevelSpec;
}
