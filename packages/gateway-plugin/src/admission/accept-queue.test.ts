import { mkdtempSync, mkdirSync, rmSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import {
  AcceptQueueMonitor,
  procDepthReader,
  readListenDepth,
  readSomaxconn,
  RECHECK_MS,
  scanListeners,
  type AcceptQueueConfig,
  type DepthReader,
  type ListenScan,
} from './accept-queue';

// Lines in the format of net/ipv4/tcp_ipv4.c get_tcp4_sock (trailing fields cut):
// listeners first, then the other sockets. Port 0x1F90 = 8080, 0x0BB8 = 3000.
const HEADER =
  '  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n';
const TCP =
  HEADER +
  '   0: 0100007F:0BB8 00000000:0000 0A 00000000:00000003 00:00000000 00000000     0        0 1 1 0\n' +
  '   1: 00000000:1F90 00000000:0000 0A 00000000:0000007B 00:00000000 00000000     0        0 2 1 0\n' +
  '   2: 0100007F:1F90 0100007F:D431 01 00000000:00000000 00:00000000 00000000     0        0 3 1 0\n' +
  '   3: 0100007F:1F90 00000000:0000 0A 00000000:000001FF 00:00000000 00000000     0        0 4 1 0\n';
const TCP6 =
  '  sl  local_address                         remote_address                        st tx_queue rx_queue\n' +
  '   0: 00000000000000000000000000000000:1F90 00000000000000000000000000000000:0000 0A 00000000:00000200 00:00000000\n';

const fresh = (): ListenScan => ({ depth: undefined, done: false });

describe('scanListeners: /proc/net/tcp lines', () => {
  it('reads rx_queue of the LISTEN lines on the port, and stops at the first other state', () => {
    // The listener listed after an ESTABLISHED line is not read: the kernel lists
    // listeners first, so it would be another table's.
    const one = { listeners: 1 };
    expect(scanListeners(TCP, '1F90', fresh())).toEqual({ depth: 0x7b, done: true, ...one });
    expect(scanListeners(TCP, '0BB8', fresh())).toEqual({ depth: 3, done: true, ...one });
    expect(scanListeners(TCP6, '1F90', fresh())).toEqual({ depth: 512, done: false, ...one });
  });

  it('is undefined for a port nothing listens on', () => {
    expect(scanListeners(TCP, '0050', fresh())).toEqual({ depth: undefined, done: true });
    expect(scanListeners(HEADER, '1F90', fresh())).toEqual({ depth: undefined, done: false });
    expect(scanListeners('', '1F90', fresh())).toEqual({ depth: undefined, done: false });
  });

  it('takes the deepest of several listeners on the port (SO_REUSEPORT, two addresses)', () => {
    const two =
      HEADER +
      '   0: 0100007F:1F90 00000000:0000 0A 00000000:00000004 00:00000000 00000000 0 0 1 1 0\n' +
      '   1: 0200007F:1F90 00000000:0000 0A 00000000:00000009 00:00000000 00000000 0 0 2 1 0\n';
    expect(scanListeners(two, '1F90', fresh())).toMatchObject({ depth: 9, listeners: 2 });
  });

  it("with `first`, stops at the port's first LISTEN line", () => {
    const scan = scanListeners(TCP, '1F90', { ...fresh(), first: true });
    expect(scan).toEqual({ depth: 0x7b, done: true, listeners: 1, first: true });
    expect(scanListeners(TCP, '0050', { ...fresh(), first: true }).done).toBe(true);
  });

  it('reads past pending handshakes (SYN_RECV, listed beside their listener before Linux 4.4)', () => {
    const old =
      HEADER +
      '   0: 0100007F:0BB8 00000000:0000 0A 00000000:00000001 00:00000000 00000000 0 0 1 1 0\n' +
      '   1: 0100007F:0BB8 0100007F:D431 03 00000000:00000000 00:00000000 00000000 0 0 0 1 0\n' +
      '   2: 0100007F:1F90 00000000:0000 0A 00000000:00000006 00:00000000 00000000 0 0 2 1 0\n';
    expect(scanListeners(old, '1F90', fresh())).toEqual({ depth: 6, done: false, listeners: 1 });
  });

  it.each([
    ['no queues field', '   0: 0100007F:1F90 00000000:0000 0A\n'],
    ['queues not hex', '   0: 0100007F:1F90 00000000:0000 0A 00000000:zzzzzzzz 00:0 0 0 0\n'],
    ['queues too long', '   0: 0100007F:1F90 00000000:0000 0A 00000000:1000000000 00:0 0 0 0\n'],
    ['negative depth', '   0: 0100007F:1F90 00000000:0000 0A 00000000:-0000001 00:0 0 0 0\n'],
    ['no colon in the address', '   0: 0100007F1F90 00000000:0000 0A 00000000:00000009 0 0 0\n'],
    ['a lower-case state', '   0: 0100007F:1F90 00000000:0000 0a 00000000:00000009 0 0 0\n'],
    ['no slot number', 'x: 0100007F:1F90 00000000:0000 0A 00000000:00000009 00:0 0 0 0\n'],
    ['binary noise', '\u0000\u00ff\u0001 ::: 0A :\n'],
    ['a port with five digits', '   0: 0100007F:01F90 00000000:0000 0A 00000000:00000009 0 0 0\n'],
  ])('skips a hostile line (%s) without throwing', (_name, line) => {
    expect(scanListeners(HEADER + line, '1F90', fresh())).toEqual({
      depth: undefined,
      done: false,
    });
  });
});

describe('readListenDepth: reading a table', () => {
  let dir: string;
  beforeAll(() => {
    dir = mkdtempSync(path.join(os.tmpdir(), 'lw-acceptq-'));
    mkdirSync(path.join(dir, 'net'));
    mkdirSync(path.join(dir, 'sys/net/core'), { recursive: true });
  });
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it('reads a table whose lines straddle its read chunks', () => {
    // 400 listeners of other ports (~100 bytes each, past one 16 KiB chunk), then ours.
    let text = HEADER;
    for (let i = 0; i < 400; i++) {
      const port = (1000 + i).toString(16).toUpperCase().padStart(4, '0');
      text += `${String(i).padStart(4)}: 0100007F:${port} 00000000:0000 0A 00000000:00000001 00:00000000 00000000     0        0 ${i} 1 0\n`;
    }
    text += ' 400: 0100007F:1F90 00000000:0000 0A 00000000:0000002A 00:00000000 00000000 0 0 9 1 0';
    writeFileSync(path.join(dir, 'net/tcp'), text);
    expect(readListenDepth(path.join(dir, 'net/tcp'), 8080)).toBe(42);
    expect(procDepthReader(dir)({ port: 8080, ipv6: false })).toBe(42);
    expect(procDepthReader(dir)({ port: 9999, ipv6: false })).toBeUndefined();
  });

  it('stops at a single listener, and finds a second one within RECHECK_MS', () => {
    // Ours (8080, 5 waiting) second of three listeners; the third is another port.
    const line = (sl: number, port: string, depth: number, st = '0A'): string =>
      `${String(sl).padStart(4)}: 0100007F:${port} 00000000:0000 ${st} 00000000:${depth.toString(16).toUpperCase().padStart(8, '0')} 00:00000000 00000000     0        0 ${sl} 1 0\n`;
    const file = path.join(dir, 'net/tcp');
    writeFileSync(file, HEADER + line(0, '0BB8', 1) + line(1, '1F90', 5) + line(2, '0050', 0));
    let t = 1_000;
    const read = procDepthReader(dir, () => t);
    expect(read({ port: 8080, ipv6: false })).toBe(5); // full: one listener on the port
    // A second listener on 8080 appears after ours, deeper: the reads that stop at the
    // first one do not see it (which is what makes them cheap) ...
    writeFileSync(
      file,
      HEADER + line(0, '0BB8', 1) + line(1, '1F90', 5) + line(2, '1F90', 40) + line(3, '0050', 0),
    );
    t += RECHECK_MS - 1;
    expect(read({ port: 8080, ipv6: false })).toBe(5);
    // ... until the next full read, after which every read is full, for the deepest.
    t += 1;
    expect(read({ port: 8080, ipv6: false })).toBe(40);
    t += 1;
    expect(read({ port: 8080, ipv6: false })).toBe(40);
    // Back to one: stopping at it again after the next full read.
    writeFileSync(file, HEADER + line(0, '1F90', 7) + line(1, '0050', 0));
    expect(read({ port: 8080, ipv6: false })).toBe(7);
    // Our listener gone: the stopping read finds nothing and a full read answers.
    writeFileSync(file, HEADER + line(0, '0050', 0) + line(1, '1F90', 0, '01'));
    expect(read({ port: 8080, ipv6: false })).toBeUndefined();
  });

  it('is null without a table (not Linux, no /proc), and somaxconn undefined', () => {
    expect(procDepthReader(dir)({ port: 8080, ipv6: true })).toBeNull();
    expect(readListenDepth(path.join(dir, 'nothing'), 8080)).toBeNull();
    expect(readSomaxconn(dir)).toBeUndefined();
    writeFileSync(path.join(dir, 'sys/net/core/somaxconn'), '4096\n');
    expect(readSomaxconn(dir)).toBe(4096);
    writeFileSync(path.join(dir, 'sys/net/core/somaxconn'), 'many\n');
    expect(readSomaxconn(dir)).toBeUndefined();
  });

  const linux = process.platform === 'linux' ? it : it.skip;
  linux('finds a real listener in /proc/net/tcp, with 0 waiting', async () => {
    const server = net.createServer((s) => s.destroy());
    await new Promise<void>((r) => server.listen({ port: 0, host: '127.0.0.1', backlog: 7 }, r));
    try {
      const { port } = server.address() as net.AddressInfo;
      expect(procDepthReader()({ port, ipv6: false })).toBe(0);
    } finally {
      await new Promise((r) => server.close(r));
    }
  });
});

describe('AcceptQueueMonitor: the shed share and its hysteresis', () => {
  const CONFIG: AcceptQueueConfig = {
    backlog: 100,
    shedAt: 0.25,
    resumeAt: 0.05,
    holdMs: 1000,
    // Uncapped here; the cap has its own test.
    maxShare: 1,
    sampleIntervalMs: 50,
  };
  let changes: [boolean, number, number][];
  const monitor = (
    config: Partial<AcceptQueueConfig> = {},
    somaxconn?: number,
    random: () => number = () => 0.5,
  ) => {
    changes = [];
    return new AcceptQueueMonitor(
      { ...CONFIG, ...config },
      (shedding, depth, limit) => changes.push([shedding, depth, limit]),
      { read: () => 0, somaxconn, now: Date.now, random },
    );
  };
  beforeEach(() => jest.useFakeTimers({ now: 0 }));
  afterEach(() => jest.useRealTimers());

  it('starts shedding at shedAt, grows while the queue stays deep, sheds all at a full queue', () => {
    const m = monitor();
    m.sample(24);
    expect(m.shedShare).toBe(0);
    m.sample(25);
    expect(m.shedShare).toBeCloseTo(0.05, 9);
    m.sample(25);
    expect(m.shedShare).toBeCloseTo(0.1, 9);
    // At least the depth's place between shedAt (25) and the backlog (100).
    m.sample(70);
    expect(m.shedShare).toBeCloseTo(45 / 75, 9);
    m.sample(100);
    expect(m.shedShare).toBe(1);
    m.sample(101);
    expect(m.shedShare).toBe(1);
    expect(changes).toEqual([[true, 25, 100]]);
  });

  it('never sheds more than maxShare, however deep and however long the queue stays', () => {
    const m = monitor({ maxShare: 0.5 }, undefined, () => 0.6);
    for (let i = 0; i < 100; i++) {
      m.sample(100);
      jest.advanceTimersByTime(50);
    }
    expect(m.shedShare).toBe(0.5);
    // A draw above the share is served.
    expect(m.shed()).toBe(false);
    expect(changes).toEqual([[true, 100, 100]]);
  });

  it('holds between the levels, and falls over holdMs only at or below resumeAt', () => {
    const m = monitor();
    m.sample(100);
    jest.advanceTimersByTime(5000);
    m.sample(10);
    expect(m.shedShare).toBe(1);
    jest.advanceTimersByTime(500);
    m.sample(5);
    expect(m.shedShare).toBeCloseTo(0.5, 9);
    jest.advanceTimersByTime(250);
    m.sample(6);
    expect(m.shedShare).toBeCloseTo(0.5, 9);
    jest.advanceTimersByTime(250);
    m.sample(0);
    expect(m.shedShare).toBeCloseTo(0.25, 9);
    expect(m.shedding).toBe(true);
    jest.advanceTimersByTime(250);
    m.sample(0);
    expect(m.shedding).toBe(false);
    expect(changes).toEqual([
      [true, 100, 100],
      [false, 0, 100],
    ]);
  });

  it('does not flap on a depth that crosses shedAt sample by sample', () => {
    const m = monitor();
    for (let i = 0; i < 40; i++) {
      m.sample(i % 2 === 0 ? 30 : 0);
      jest.advanceTimersByTime(50);
    }
    expect(changes).toEqual([[true, 30, 100]]);
  });

  it('sheds a request on a draw below the share; none drawn at 0, all at 1', () => {
    const draws = [0.4, 0.6];
    const random = jest.fn(() => draws.shift()!);
    const m = monitor({}, undefined, random);
    expect(m.shed()).toBe(false);
    expect(random).not.toHaveBeenCalled();
    m.sample(63); // (63 - 25) / 75 ≈ 0.507
    expect(m.shed()).toBe(true);
    expect(m.shed()).toBe(false);
    m.sample(100);
    expect(m.shed()).toBe(true);
    expect(random).toHaveBeenCalledTimes(2);
  });

  it('caps the backlog at net.core.somaxconn, as listen(2) does', () => {
    const m = monitor({ backlog: 4096 }, 128);
    expect(m.limit).toBe(128);
    m.sample(31);
    expect(m.shedding).toBe(false);
    m.sample(32);
    expect(m.shedding).toBe(true);
  });

  it('says once when the queue is deeper than the backlog allows (listening with a larger one)', () => {
    const said: Array<[number, number]> = [];
    const m = new AcceptQueueMonitor(CONFIG, () => {}, {
      read: () => 0,
      somaxconn: 4096,
      now: Date.now,
      onBacklogExceeded: (depth, limit) => said.push([depth, limit]),
    });
    // Linux queues up to backlog + 1 (sk_acceptq_is_full): 101 fits a backlog of 100.
    m.sample(100);
    m.sample(101);
    expect(said).toEqual([]);
    m.sample(102);
    m.sample(900);
    expect(said).toEqual([[102, 100]]);
    // It still sheds by the backlog it was told: the operator decides, nothing is guessed.
    expect(m.shedding).toBe(true);
    expect(m.limit).toBe(100);
  });

  it('answers Retry-After: 1 (the queue drains within a loop turn or two)', () => {
    expect(monitor().retryAfterSec()).toBe(1);
  });

  function polled(depths: (number | null | undefined)[], inFlight = () => 0) {
    const reads: { port: number; ipv6: boolean }[] = [];
    const read: DepthReader = (key) => {
      reads.push(key);
      return depths.length > 1 ? depths.shift() : depths[0];
    };
    changes = [];
    const m = new AcceptQueueMonitor(CONFIG, (...c) => changes.push(c), {
      read,
      somaxconn: undefined,
      now: Date.now,
      inFlight,
    });
    return { m, reads };
  }

  it('polls only while requests arrive, and reads the table of the request port', () => {
    const { m, reads } = polled([0]);
    jest.advanceTimersByTime(1000);
    expect(reads).toHaveLength(0);
    m.noteRequest({ port: 8080, family: 'IPv6' });
    jest.advanceTimersByTime(50);
    expect(reads).toEqual([{ port: 8080, ipv6: true }]);
    // No request since that tick: one more sample, then the timer stops.
    jest.advanceTimersByTime(1000);
    expect(reads).toHaveLength(2);
    m.noteRequest({ port: 8081, family: 'IPv4' });
    jest.advanceTimersByTime(50);
    expect(reads.slice(2)).toEqual([
      { port: 8080, ipv6: true },
      { port: 8081, ipv6: false },
    ]);
    m.close();
  });

  it('keeps polling while requests are in flight: the tick after a stall must see its queue', () => {
    let inFlight = 1;
    const { m, reads } = polled([0], () => inFlight);
    m.noteRequest({ port: 8080, family: 'IPv4' });
    jest.advanceTimersByTime(500);
    expect(reads).toHaveLength(10);
    inFlight = 0;
    jest.advanceTimersByTime(500);
    expect(reads).toHaveLength(11);
    m.close();
  });

  it('spaces reads that cost: at most 1% of the time goes to reading the table', () => {
    const reads: number[] = [];
    changes = [];
    const m = new AcceptQueueMonitor(CONFIG, (...c) => changes.push(c), {
      // Each read takes 5 ms of the (fake) clock: the next may come 500 ms later.
      read: () => {
        reads.push(Date.now());
        jest.setSystemTime(Date.now() + 5);
        return 0;
      },
      somaxconn: undefined,
      now: Date.now,
      clock: Date.now,
      inFlight: () => 1,
    });
    m.noteRequest({ port: 8080, family: 'IPv4' });
    jest.advanceTimersByTime(2000);
    const gaps = reads.slice(1).map((t, i) => t - reads[i]!);
    expect(gaps.length).toBeGreaterThan(2);
    // The first read alone is no measure (next test): its successor comes at the interval.
    expect(gaps[0]).toBeLessThan(500);
    for (const gap of gaps.slice(1)) expect(gap).toBeGreaterThanOrEqual(500);
    m.close();
  });

  it('is not spaced by one slow read: a cold first read or a preempted one', () => {
    // 5 ms for the first read (cold code) and the fourth (preempted), 0.1 ms otherwise.
    const costs = [5, 0.1, 0.1, 5, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1];
    const reads: number[] = [];
    let clockMs = 0;
    changes = [];
    const m = new AcceptQueueMonitor(CONFIG, (...c) => changes.push(c), {
      read: () => {
        clockMs += costs[reads.length] ?? 0.1;
        reads.push(Date.now());
        return 0;
      },
      somaxconn: undefined,
      now: Date.now,
      clock: () => clockMs,
      inFlight: () => 1,
    });
    m.noteRequest({ port: 8080, family: 'IPv4' });
    jest.advanceTimersByTime(500);
    // Every interval's tick read the table: none was deferred by 500 ms.
    expect(reads).toHaveLength(500 / CONFIG.sampleIntervalMs);
    m.close();
  });

  it('keeps polling while it sheds, until the shed share has fallen to none', () => {
    const { m, reads } = polled([40, 0]);
    m.noteRequest({ port: 8080, family: 'IPv4' });
    jest.advanceTimersByTime(50);
    expect(m.shedding).toBe(true);
    expect(m.depth).toBe(40);
    jest.advanceTimersByTime(1050);
    expect(m.shedding).toBe(false);
    // No request came meanwhile: the tick that stopped shedding was the last.
    const n = reads.length;
    jest.advanceTimersByTime(1000);
    expect(reads).toHaveLength(n);
    m.close();
  });

  it('goes quiet for good when there is no table: the signal is absent, not an error', () => {
    const { m, reads } = polled([null]);
    m.noteRequest({ port: 8080, family: 'IPv4' });
    jest.advanceTimersByTime(50);
    expect(m.available).toBe(false);
    m.noteRequest({ port: 8080, family: 'IPv4' });
    jest.advanceTimersByTime(1000);
    expect(reads).toHaveLength(1);
    expect(m.shedding).toBe(false);
    expect(changes).toEqual([]);
  });

  it('ignores a socket without a port (a UNIX socket)', () => {
    const { m, reads } = polled([0]);
    m.noteRequest({});
    jest.advanceTimersByTime(500);
    expect(reads).toHaveLength(0);
    m.close();
  });
});
