import { summarize } from './v8-trace';

describe('v8-trace summarize', () => {
  it('counts what V8 did in each phase around the ready marker and the load', () => {
    const load = 100_000;
    const text = [
      `@${load - 7_000} loadwise-0`,
      '[marking 0x1 <JSFunction handle (sfi = 0x2)> for optimization to TURBOFAN, ConcurrencyMode::kConcurrent, reason: hot and stable]',
      '[completed optimizing 0x1 <JSFunction handle (sfi = 0x2)> (target TURBOFAN) - took 0.1, 2.0, 0.1 ms]',
      '[loadwise ready]',
      `@${load - 4_000} loadwise-0`,
      '[bailout (kind: deopt-eager, reason: wrong map): begin. deoptimizing 0x1 <JSFunction handle (sfi = 0x2)>, 0x3 <Code TURBOFAN>',
      '[bailout (kind: deopt-eager, reason: wrong map): begin. deoptimizing 0x4 <JSFunction (sfi = 0x5)>, 0x6 <Code TURBOFAN>',
      '[marking dependent code 0x7 <Code TURBOFAN> (0x8 <SharedFunctionInfo choose>) (opt id 9) for deoptimization, reason: code dependencies]',
      `@load ${load} loadwise load-aware run 1`,
      `@${load + 300} loadwise-0`,
      '[completed optimizing 0x1 <JSFunction handle (sfi = 0x2)> (target TURBOFAN) - took 0.1, 2.0, 0.1 ms]',
      '[completed compiling 0x1 <JSFunction next (sfi = 0x2)> (target TURBOFAN) - took 0.1, 2.0, 0.1 ms]',
      `@${load + 5_000} loadwise-0`,
      '[bailout (kind: deopt-soft, reason: Insufficient type feedback): begin. deoptimizing 0x1 <JSFunction handle (sfi = 0x2)>',
    ].join('\n');
    const phases = summarize(text);
    expect(phases.map((p) => [p.name, p.optimized, p.deoptimized, p.invalidated])).toEqual([
      ['start and warm-up', 1, 0, 0],
      ['idle', 0, 2, 1],
      ['load, second 0', 2, 0, 0],
      ['load, second 1', 0, 0, 0],
      ['load, later', 0, 1, 0],
    ]);
    expect(phases[1]!.deoptFunctions).toEqual([
      ['handle', 1],
      ['(anonymous)', 1],
    ]);
  });

  it('says what is missing without a load marker', () => {
    expect(() => summarize('@1 loadwise-0\n[completed optimizing x]\n')).toThrow(/@load/);
  });
});
