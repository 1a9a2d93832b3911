import { parsePrometheusGauge } from './prometheus-source';

const TEXT = `# HELP app_queue_depth Requests waiting
# TYPE app_queue_depth gauge
app_queue_depth{worker="0"} 3
app_queue_depth{worker="1",path="/a b}"} 4 1700000000000
app_queue_depth_max 100
other 7
`;

describe('parsePrometheusGauge', () => {
  it('sums a gauge across label sets and ignores longer names sharing the prefix', () => {
    expect(parsePrometheusGauge(TEXT, 'app_queue_depth')).toBe(7);
    expect(parsePrometheusGauge(TEXT, 'app_queue_depth_max')).toBe(100);
    expect(parsePrometheusGauge('busy_workers 2.5\n', 'busy_workers')).toBe(2.5);
  });
  it('returns undefined when the gauge is absent or not a number', () => {
    expect(parsePrometheusGauge(TEXT, 'missing')).toBeUndefined();
    expect(parsePrometheusGauge('x NaNx\n', 'x')).toBeUndefined();
  });
  it('reads only values as the text format writes them, and each series once', () => {
    // Number() took an empty value for 0 and hex for a number.
    expect(parsePrometheusGauge('x \n', 'x')).toBeUndefined();
    expect(parsePrometheusGauge('x 0x10\n', 'x')).toBeUndefined();
    expect(parsePrometheusGauge('x{a="1"} 0x10\nx{a="2"} 2\n', 'x')).toBe(2);
    expect(parsePrometheusGauge('x 1e3\nx{a="1"} -.5\n', 'x')).toBe(999.5);
    expect(parsePrometheusGauge('x +Inf\nx{a="1"} NaN\n', 'x')).toBeUndefined();
    // A broken exporter repeating a series: counted once.
    expect(parsePrometheusGauge('x{a="1"} 3\nx{a="1"} 3\nx{a="2"} 1\n', 'x')).toBe(4);
  });
});
