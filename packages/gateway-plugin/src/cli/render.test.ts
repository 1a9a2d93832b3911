import type { BackendSnapshot } from '../observability';
import { backendRow, renderStatus, table, terminalJson, text } from './render';

describe('loadwise status rendering', () => {
  const backend: Partial<BackendSnapshot> = {
    id: 'api-1',
    url: 'http://10.0.0.1:3000/',
    state: 'healthy',
    stateReason: null,
    inFlight: 3,
    latencyMs: 12.34,
    expectedWaitMs: 1500,
    serviceTimeSource: 'local',
    cpuThroughputRps: null,
    reportAgeMs: 250,
    reportFresh: true,
    signedBy: null,
    trafficShare: 0.456,
    lastReport: {
      cpuUtilization: 0.42,
      memoryUtilization: 0.7,
      inFlight: 5,
      queued: 2,
      concurrencyLimit: 8,
      verdict: 'up',
      agentState: 'online',
    },
  };

  it('formats one backend: share and utilizations in %, times in ms or s, busy over limit', () => {
    expect(backendRow(backend)).toEqual([
      'api-1',
      'healthy',
      '46%',
      '3',
      '12.3 ms',
      '1.5 s',
      '250 ms',
      '42%',
      '70%',
      '5/8',
      '2',
    ]);
  });

  it('says when a report is stale or missing, and why a backend is out', () => {
    const row = backendRow({
      ...backend,
      state: 'down',
      stateReason: 'active health check failed',
      reportAgeMs: 42_000,
      reportFresh: false,
      signedBy: null,
    });
    expect(row[1]).toBe('down: active health check failed');
    expect(row[6]).toBe('42 s stale');
    const none = backendRow({ id: 'x', state: 'healthy', reportAgeMs: null, lastReport: null });
    expect(none.slice(2)).toEqual(['-', '-', '-', '-', 'none', '-', '-', '-', '-']);
  });

  it('survives a document from another version: missing fields print as -', () => {
    const text = renderStatus({ backends: [{ id: 'only-id' }] as never }, 'http://gw/_lb/status');
    expect(text).toContain('strategy ?, - in flight, no broker, event loop -');
    expect(text).toMatch(/^only-id +\? +- +- +- +- +none +- +- +- +-$/m);
    expect(text).toContain('over the last window;');
  });

  it('survives a malformed document: rows that are not objects are skipped, objects print as -', () => {
    // Whatever `--url` names: String() of { toString: 1 } threw a TypeError, and a null row
    // threw reading its fields; either ended `loadwise status` with a stack.
    const doc: Record<string, unknown> = {
      strategy: { toString: 0 },
      takenAt: { toString: 1 },
      service: ['s'],
      backends: [
        null,
        1,
        'b0',
        [],
        { id: { toString: 1 }, state: 'healthy', stateReason: { toString: 1 }, lastReport: 5 },
        { id: 'b1', state: 'down', stateReason: { a: 1 }, inFlight: { valueOf: 1 } },
        { id: true, state: 'healthy' },
      ],
    };
    const out = renderStatus(doc as never, 'http://gw/_lb/status');
    expect(out).toContain('strategy -, - in flight, no broker');
    const rows = out.split('\n').filter((l) => /^(-|b1|true) {2}/.test(l));
    expect(rows).toEqual([
      expect.stringMatching(/^- +healthy: - +- +- +- +- +none +- +- +- +-$/),
      expect.stringMatching(/^b1 +down: - +- +- +- +- +none/),
      expect.stringMatching(/^true +healthy +-/),
    ]);
    expect(out).not.toContain('[object Object]');
    expect(out).not.toMatch(/^(b0|1|null) /m);
    // A page whose services are not objects shows none of them, and no crash.
    expect(() => renderStatus({ services: [null, 2] } as never, 'u')).not.toThrow();
    expect(text({ toString: 1 })).toBe('-');
    expect(text(null)).toBe('-');
    expect(text(['x'])).toBe('-');
    expect([text('a'), text(2), text(false)]).toEqual(['a', '2', 'false']);
  });

  it('names the open WebSockets in the summary line when there are any', () => {
    const doc = { strategy: 'p2c', inFlight: 2, brokerConnected: null, backends: [] };
    expect(renderStatus({ ...doc, openWebSockets: 3 }, 'u')).toContain(
      'strategy p2c, 2 in flight, 3 WebSockets open, no broker',
    );
    expect(renderStatus({ ...doc, openWebSockets: 0 }, 'u')).toContain(
      'strategy p2c, 2 in flight, no broker',
    );
  });

  it('names the streams in the stream lane when there are any', () => {
    const doc = { strategy: 'p2c', inFlight: 2, brokerConnected: null, backends: [] };
    expect(renderStatus({ ...doc, openWebSockets: 1, openStreams: 4 }, 'u')).toContain(
      'strategy p2c, 2 in flight, 1 WebSockets open, 4 streams open, no broker',
    );
    expect(renderStatus({ ...doc, openStreams: 0 }, 'u')).toContain(
      'strategy p2c, 2 in flight, no broker',
    );
  });

  it('prints no control character from the document: an escape sequence never reaches the terminal', () => {
    // `--url` may name any server: its strings are printed as one line of plain text each.
    const out = renderStatus(
      {
        strategy: 'p2c\u001b]0;owned\u0007',
        service: 'a\r\nFAKE LINE',
        takenAt: '\u009b2J',
        backends: [{ id: 'x\u001b[31m', state: 'down', stateReason: 'r\nFAKE' }] as never,
      },
      'http://gw/_lb/status',
    );
    // eslint-disable-next-line no-control-regex
    expect(out.replace(/\n/g, '')).not.toMatch(/[\u0000-\u001f\u007f-\u009f]/);
    expect(out).not.toMatch(/^FAKE/m);
    expect(out).toContain('x?[31m');
  });

  it('puts overload, panic and saturation above the table', () => {
    const text = renderStatus(
      { overloaded: true, panic: true, saturationQueueLength: 7, backends: [] },
      'src',
    );
    expect(text).toContain('OVERLOADED');
    expect(text).toContain('PANIC');
    expect(text).toContain('SATURATED: 7 requests wait');
  });

  it('prints one block per service when one page holds several balancers', () => {
    const text = renderStatus(
      {
        takenAt: 't0',
        services: [
          {
            service: 'users',
            strategy: 'load-aware',
            trafficWindowMs: 10_000,
            backends: [backend],
          },
          { service: 'orders', strategy: 'p2c', panic: true, backends: [{ id: 'orders-1' }] },
        ],
      } as never,
      'http://gw/_lb/status',
    );
    const lines = text.split('\n');
    expect(lines[0]).toBe('http://gw/_lb/status  t0');
    const users = lines.findIndex((l) => l.startsWith('service users: strategy load-aware,'));
    const orders = lines.findIndex((l) => l.startsWith('service orders: strategy p2c,'));
    expect(users).toBeGreaterThan(0);
    expect(orders).toBeGreaterThan(users);
    expect(lines.slice(users, orders).some((l) => l.startsWith('api-1  '))).toBe(true);
    expect(lines.slice(orders).some((l) => l.startsWith('orders-1  '))).toBe(true);
    expect(lines[orders + 1]).toMatch(/^PANIC/);
    expect(text.match(/^SHARE: /gm)).toHaveLength(1);
    expect(text).toContain('over the last 10 s;');
  });

  it('aligns columns two spaces apart and leaves no trailing spaces', () => {
    expect(
      table(
        ['A', 'BB'],
        [
          ['long-id', 'x'],
          ['y', ''],
        ],
      ),
    ).toEqual(['A        BB', 'long-id  x', 'y']);
  });

  it('--json escapes what a terminal would act on, and reads back the same', () => {
    const hostile = { id: 'a\u009b31m\u009d0;x\u0007\u007f\u202eb' };
    const out = terminalJson(hostile);
    expect(out).toMatch(/^[\x20-\x7e]+$/);
    expect(JSON.parse(out)).toEqual(hostile);
  });

  it('lays out a table of any length (no arguments spread per row)', () => {
    const rows = Array.from({ length: 200_000 }, (_, i) => [`b${i}`, 'x']);
    expect(table(['id', 'state'], rows)).toHaveLength(200_001);
  });
});
