import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import pino from 'pino';
import { BalancerEmitter, type BalancerEvents } from '../events';
import { loadBalance } from '../load-balance';
import type { Logger } from '../options';
import { RateLimitedLog } from '../rate-limited-log';
import {
  attachEventLog,
  BALANCER_EVENT_NAMES,
  defaultLogger,
  describeEvent,
  type LogLevel,
} from './event-log';
import { internals } from '../internals';

interface Line {
  level: LogLevel;
  fields: Record<string, unknown>;
  msg: string | undefined;
}

/** Records what it is given, pino-style: (obj, msg) or (msg). */
function recordingLogger(): Logger & { lines: Line[] } {
  const lines: Line[] = [];
  const at =
    (level: LogLevel) =>
    (objOrMsg: object | string, msg?: string): void => {
      if (typeof objOrMsg === 'string') lines.push({ level, fields: {}, msg: objOrMsg });
      else lines.push({ level, fields: { ...objOrMsg }, msg });
    };
  return { lines, info: at('info'), warn: at('warn'), error: at('error') };
}

function setup(intervalMs = 10_000) {
  let nowMs = 1_000_000;
  const logger = recordingLogger();
  const events = new BalancerEmitter(() => {});
  const detach = attachEventLog(
    events,
    logger,
    new RateLimitedLog(logger, () => nowMs, intervalMs),
  );
  return {
    logger,
    events,
    detach,
    advance(ms: number) {
      nowMs += ms;
    },
  };
}

/** One example payload per event, and the level and fields its line must carry. */
const CASES: {
  [K in keyof BalancerEvents]: [BalancerEvents[K][0], LogLevel, Record<string, unknown>, RegExp][];
} = {
  'backend-ejected': [
    [
      { id: 'b1', durationMs: 30_000, consecutiveFailures: 5 },
      'warn',
      { backend: 'b1', durationMs: 30_000, consecutiveFailures: 5 },
      /b1 ejected for 30 s after 5 consecutive failures/,
    ],
  ],
  'backend-restored': [[{ id: 'b1' }, 'info', { backend: 'b1' }, /b1 restored/]],
  'backend-down': [
    [
      { id: 'b2', reason: 'active health check failed' },
      'warn',
      { backend: 'b2', reason: 'active health check failed' },
      /b2 down: active health check failed/,
    ],
  ],
  'backend-up': [[{ id: 'b2' }, 'info', { backend: 'b2' }, /b2 up again/]],
  'backend-draining': [
    [{ id: 'b3' }, 'info', { backend: 'b3', reason: 'agent reported draining' }, /b3 draining/],
  ],
  'backend-added': [
    [
      { id: 'b9', url: 'http://10.0.0.9:3000/' },
      'info',
      { backend: 'b9', url: 'http://10.0.0.9:3000/' },
      /b9 added by discovery/,
    ],
  ],
  'backend-removed': [
    [
      { id: 'b9', url: 'http://10.0.0.9:3000/', silentMs: 600_500, reason: 'silent' },
      'info',
      { backend: 'b9', url: 'http://10.0.0.9:3000/', silentMs: 600_500, reason: 'silent' },
      /b9 at http:\/\/10.0.0.9:3000\/ forgotten by discovery: nothing signed from its agent for 601 s/,
    ],
    [
      { id: 'b9', url: 'http://10.0.0.9:3000/', silentMs: 500, reason: 'evicted' },
      'info',
      { backend: 'b9', reason: 'evicted' },
      /b9 at http:\/\/10.0.0.9:3000\/ forgotten by discovery: it had left, and discovery.maxBackends needed its slot/,
    ],
    [
      { id: 'b9', url: 'http://10.0.0.9:3000/', silentMs: 0, reason: 'moved' },
      'info',
      { backend: 'b9', reason: 'moved' },
      /b9 at http:\/\/10.0.0.9:3000\/ replaced by discovery: another run of its agent registered it at another address/,
    ],
  ],
  'metrics-stale': [
    [{ id: 'b1', ageMs: 3500 }, 'warn', { backend: 'b1', ageMs: 3500 }, /stale \(last one 3.5 s/],
    [{ id: 'b1', ageMs: undefined }, 'warn', { backend: 'b1', ageMs: null }, /unknown ago/],
  ],
  saturation: [
    [{ saturated: true, queued: 3 }, 'warn', { saturated: true, queued: 3 }, /saturated/],
    [{ saturated: false, queued: 0 }, 'info', { saturated: false }, /saturation over/],
  ],
  overload: [
    [
      { overloaded: true, eventLoopDelayMs: 1234.5 },
      'error',
      { overloaded: true, eventLoopDelayMs: 1234.5 },
      /overloaded \(event-loop delay 1235 ms\)/,
    ],
    [{ overloaded: false, eventLoopDelayMs: 12 }, 'info', { overloaded: false }, /no longer/],
  ],
  'accept-queue': [
    [
      { shedding: true, depth: 200, limit: 511 },
      'error',
      { shedding: true, depth: 200, limit: 511 },
      /200 of 511 connections wait to be accepted\): shedding/,
    ],
    [{ shedding: false, depth: 3, limit: 511 }, 'info', { shedding: false }, /accepts again/],
  ],
  panic: [
    [
      { panic: true, healthy: 1, routable: 3 },
      'error',
      { panic: true, healthy: 1, routable: 3 },
      /only 1 of 3/,
    ],
    [{ panic: false, healthy: 3, routable: 3 }, 'info', { panic: false }, /panic mode over/],
    // Not a recovery: nothing routable is left.
    [
      { panic: false, healthy: 0, routable: 0 },
      'error',
      { panic: false, routable: 0 },
      /no routable backend is left .* 503 LW_GW_NO_BACKEND/,
    ],
  ],
  'broker-connected': [
    [{ url: 'mqtt://127.0.0.1:1883' }, 'info', { url: 'mqtt://127.0.0.1:1883' }, /connected/],
    // Credentials in a broker URL never reach the log.
    [
      { url: 'mqtts://gw:s3cret@broker.internal:8883' },
      'info',
      { url: 'mqtts://***@broker.internal:8883' },
      /^broker connected \(mqtts:\/\/\*\*\*@broker.internal:8883\)$/,
    ],
  ],
  'broker-lost': [
    [{ error: 'ECONNREFUSED' }, 'warn', { error: 'ECONNREFUSED' }, /lost: ECONNREFUSED/],
  ],
  'broker-unreachable': [
    [
      { url: 'mqtt://u:pw@10.0.0.9:1883', error: 'connect ECONNREFUSED' },
      'warn',
      { url: 'mqtt://***@10.0.0.9:1883', error: 'connect ECONNREFUSED' },
      /^broker mqtt:\/\/\*\*\*@10.0.0.9:1883 unreachable: connect ECONNREFUSED; routing on local signals/,
    ],
  ],
  'invalid-message': [
    [
      { code: 'LW_PROTO_BAD_SIGNATURE', backendId: 'b1', detail: 'mac mismatch' },
      'warn',
      { code: 'LW_PROTO_BAD_SIGNATURE', backend: 'b1' },
      /dropped message \(LW_PROTO_BAD_SIGNATURE\) from b1: mac mismatch/,
    ],
  ],
};

describe('event log', () => {
  it('has a case above for every balancer event', () => {
    expect(Object.keys(CASES).sort()).toEqual([...BALANCER_EVENT_NAMES].sort());
  });

  it("docs/observability.md's log table has a row per event, with the levels it is written at", () => {
    const text = readFileSync(join(__dirname, '../../../../docs/observability.md'), 'utf8');
    const start = text.indexOf('\n## Logs');
    const end = text.indexOf('\n## ', start + 1);
    const doc = text.slice(start, end < 0 ? undefined : end);
    const levelColumn = new Map<string, string>();
    for (const m of doc.matchAll(/^\| `([a-z-]+)` +\| ([^|]+)\|/gm)) levelColumn.set(m[1]!, m[2]!);
    for (const name of BALANCER_EVENT_NAMES) {
      const levels = [...new Set(CASES[name].map(([, level]) => level))];
      const column = levelColumn.get(name) ?? '(no row)';
      expect({ name, levels: levels.filter((l) => !column.includes(l)) }).toEqual({
        name,
        levels: [],
      });
    }
  });

  for (const name of Object.keys(CASES) as (keyof BalancerEvents)[]) {
    it(`writes ${name} with its level, fields and reason`, () => {
      for (const [data, level, fields, msg] of CASES[name]) {
        const { logger, events, detach } = setup();
        events.emit(name, data as never);
        expect(logger.lines).toHaveLength(1);
        const line = logger.lines[0]!;
        expect(line.level).toBe(level);
        expect(line.fields).toMatchObject({ event: name, ...fields });
        expect(line.msg).toMatch(msg);
        detach();
        events.emit(name, data as never);
        expect(logger.lines).toHaveLength(1);
      }
    });
  }

  it('rate-limits dropped messages per code and says how many it held back', () => {
    const { logger, events, advance } = setup(10_000);
    const drop = (code: string): void => {
      events.emit('invalid-message', { code, backendId: 'b1', detail: 'x' });
    };
    drop('LW_PROTO_BAD_SIGNATURE');
    drop('LW_PROTO_BAD_SIGNATURE');
    drop('LW_PROTO_BAD_SIGNATURE');
    drop('LW_PROTO_REPLAYED');
    expect(logger.lines.map((l) => l.fields.code)).toEqual([
      'LW_PROTO_BAD_SIGNATURE',
      'LW_PROTO_REPLAYED',
    ]);
    advance(10_000);
    drop('LW_PROTO_BAD_SIGNATURE');
    expect(logger.lines).toHaveLength(3);
    expect(logger.lines[2]!.fields).toMatchObject({
      code: 'LW_PROTO_BAD_SIGNATURE',
      suppressed: 2,
    });
    expect(logger.lines[2]!.msg).toMatch(/\(2 more suppressed\)$/);
  });

  it('rate-limits a flapping broker but not backend transitions', () => {
    const { logger, events } = setup();
    for (let i = 0; i < 5; i++) {
      events.emit('broker-lost', { error: 'ECONNRESET' });
      events.emit('backend-down', { id: 'b1', reason: 'active health check failed' });
    }
    const names = logger.lines.map((l) => l.fields.event);
    expect(names.filter((n) => n === 'broker-lost')).toHaveLength(1);
    expect(names.filter((n) => n === 'backend-down')).toHaveLength(5);
  });

  it('survives a logger that throws', () => {
    const throwing: Logger = {
      info: () => {
        throw new Error('disk full');
      },
      warn: () => {
        throw new Error('disk full');
      },
      error: () => {
        throw new Error('disk full');
      },
    };
    const events = new BalancerEmitter(() => {});
    attachEventLog(events, throwing, new RateLimitedLog(throwing, () => 0));
    expect(() =>
      events.emit('backend-ejected', { id: 'b1', durationMs: 1, consecutiveFailures: 5 }),
    ).not.toThrow();
    expect(() => events.emit('invalid-message', { code: 'X', backendId: undefined })).not.toThrow();
  });

  it('gives a logger written for (msg: string) the sentence when it formats its argument', () => {
    const lines: string[] = [];
    const legacy = {
      info: (m: string) => lines.push(`info ${m}`),
      warn: (m: string) => lines.push(`warn ${m}`),
      error: (m: string) => lines.push(`error ${m}`),
    };
    const events = new BalancerEmitter(() => {});
    attachEventLog(events, legacy, new RateLimitedLog(legacy, () => 0));
    events.emit('backend-down', { id: 'b1', reason: 'agent health verdict down' });
    expect(lines).toEqual(['warn backend b1 down: agent health verdict down']);
  });

  it('describeEvent keeps the sentence out of the fields', () => {
    const r = describeEvent('backend-up', { id: 'b1' });
    expect(r.fields).toEqual({ event: 'backend-up', backend: 'b1' });
  });
});

describe('default logger', () => {
  it('prints warn and error on one line with the fields, and drops info', () => {
    const warn = jest.spyOn(console, 'warn').mockImplementation(() => {});
    const error = jest.spyOn(console, 'error').mockImplementation(() => {});
    try {
      const l = defaultLogger();
      l.info({ event: 'backend-up' }, 'backend b1 up again');
      l.warn({ event: 'backend-down', backend: 'b1' }, 'backend b1 down: x');
      l.error('plain message');
      l.warn({}, 'a line without fields');
      expect(warn.mock.calls).toEqual([
        ['[loadwise] warn: backend b1 down: x {"event":"backend-down","backend":"b1"}'],
        ['[loadwise] warn: a line without fields'],
      ]);
      expect(error.mock.calls).toEqual([['[loadwise] error: plain message']]);
    } finally {
      warn.mockRestore();
      error.mockRestore();
    }
  });
});

describe('default logger in a runWorkers worker', () => {
  it('says which worker', () => {
    const warn = jest.spyOn(console, 'warn').mockImplementation(() => {});
    process.env.LOADWISE_WORKER_INDEX = '1';
    try {
      defaultLogger().warn('broker lost');
      expect(warn.mock.calls).toEqual([['[loadwise w2] warn: broker lost']]);
    } finally {
      delete process.env.LOADWISE_WORKER_INDEX;
      warn.mockRestore();
    }
  });
});

describe('loadBalance({ logger: pino() })', () => {
  it("writes the balancer's state changes as pino JSON lines", async () => {
    const out: string[] = [];
    const sink = new Writable({
      write(chunk: Buffer, _enc, cb) {
        out.push(chunk.toString());
        cb();
      },
    });
    const lb = loadBalance({
      backends: [{ id: 'b1', url: 'http://127.0.0.1:9' }],
      healthCheck: false,
      overload: false,
      logger: pino({ level: 'info' }, sink),
    });
    try {
      internals(lb).events.emit('backend-ejected', {
        id: 'b1',
        durationMs: 30_000,
        consecutiveFailures: 5,
      });
    } finally {
      await lb.close();
    }
    const lines = out.map((l) => JSON.parse(l) as Record<string, unknown>);
    expect(lines).toContainEqual(
      expect.objectContaining({
        level: 40,
        event: 'backend-ejected',
        backend: 'b1',
        consecutiveFailures: 5,
        msg: 'backend b1 ejected for 30 s after 5 consecutive failures',
      }),
    );
  });
});
