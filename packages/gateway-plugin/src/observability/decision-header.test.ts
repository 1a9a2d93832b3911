import { formatDecisionHeader, MAX_DECISION_REASON_LENGTH } from './decision-header';

describe('formatDecisionHeader', () => {
  it.each([
    ['b1', undefined, 'b1'],
    ['b1', '', 'b1'],
    ['b1', 'least expected wait 3.2ms', 'b1; reason="least expected wait 3.2ms"'],
    ['b1', 'said "hi" \\ bye', 'b1; reason="said \\"hi\\" \\\\ bye"'],
    ['web 1', 'x', '"web 1"; reason="x"'],
    ['a;b', undefined, '"a;b"'],
  ])('%j with reason %j -> %s', (id, reason, expected) => {
    expect(formatDecisionHeader(id, reason)).toBe(expected);
  });

  it('never lets CR/LF or control characters through (no header splitting)', () => {
    const value = formatDecisionHeader('evil\r\nSet-Cookie: x=1', 'r\r\nX-Injected: 1\u0000');
    expect(value).not.toMatch(/[\r\n]/);
    expect(value.includes('\u0000')).toBe(false);
    expect(value).toMatch(/^[\x20-\x7e]+$/);
  });

  it('bounds the reason length', () => {
    const value = formatDecisionHeader('b', 'x'.repeat(10_000));
    expect(value.length).toBe('b; reason=""'.length + MAX_DECISION_REASON_LENGTH);
  });
});
