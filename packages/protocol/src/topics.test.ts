import { isValidBackendId, parseTopic, subscriptionFilter, topicFor } from './topics';

describe('topics', () => {
  it('builds and parses one topic per backend and kind', () => {
    const t = topicFor('acme/prod', 'api-1', 'status');
    expect(t).toBe('acme/prod/v1/backends/api-1/status');
    expect(parseTopic('acme/prod', t)).toEqual({
      ok: true,
      value: { backendId: 'api-1', kind: 'status' },
    });
    expect(subscriptionFilter('acme/prod')).toBe('acme/prod/v1/backends/+/+');
  });

  it.each([
    ['api-1', true],
    ['10.0.0.7:8080', true],
    ['svc@host.example', true],
    ['', false],
    ['a/b', false],
    ['a+b', false],
    ['a#', false],
    ['$SYS', false],
    ['-leading', false],
    ['with space', false],
    ['x'.repeat(64), true],
    ['x'.repeat(65), false],
  ])('backend id %j valid: %s', (id, valid) => {
    expect(isValidBackendId(id)).toBe(valid);
  });

  it.each([
    'other/v1/backends/a/metrics',
    'acme/v2/backends/a/metrics',
    'acme/v1/backends/a',
    'acme/v1/backends/a/metrics/extra',
    'acme/v1/backends//metrics',
  ])('rejects %s', (topic) => {
    expect(parseTopic('acme', topic).ok).toBe(false);
  });
});
