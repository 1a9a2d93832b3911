import http from 'node:http';
import type { AddressInfo } from 'node:net';
import {
  GaugeReader,
  MAX_EXPOSITION_BYTES,
  MAX_GAUGE_LINES,
  parsePrometheusGauge,
  prometheusSource,
} from './prometheus-source';
import { createAgent } from '../agent';

/** A server whose every answer is `status` and a page of `line` over and over that never ends. */
async function endlessServer(
  status: number,
  line: string,
): Promise<{
  url: URL;
  bytesWritten: () => number;
  closed: Promise<void>;
  close: () => Promise<void>;
}> {
  let written = 0;
  let onClosed!: () => void;
  const closed = new Promise<void>((resolve) => (onClosed = resolve));
  const chunk = Buffer.from(line.repeat(Math.ceil(65536 / line.length)));
  const server = http.createServer((_req, res) => {
    res.writeHead(status, { 'content-type': 'text/plain; version=0.0.4' });
    let open = true;
    res.on('close', () => {
      open = false;
      onClosed();
    });
    const pump = (): void => {
      while (open) {
        written += chunk.length;
        if (!res.write(chunk)) return void res.once('drain', pump);
      }
    };
    pump();
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    url: new URL(`http://127.0.0.1:${(server.address() as AddressInfo).port}/metrics`),
    bytesWritten: () => written,
    closed,
    close: () => {
      server.closeAllConnections();
      return new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}

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
    expect(parsePrometheusGauge('x{a="1"} 0x10\nx{a="2"} 2\n', 'x')).toBeUndefined();
    expect(parsePrometheusGauge('x 1e3\nx{a="1"} -.5\n', 'x')).toBe(999.5);
    expect(parsePrometheusGauge('x +Inf\nx{a="1"} NaN\n', 'x')).toBeUndefined();
    // A broken exporter repeating a series: counted once.
    expect(parsePrometheusGauge('x{a="1"} 3\nx{a="1"} 3\nx{a="2"} 1\n', 'x')).toBe(4);
  });
  it.each([
    ['undefined', '"undefined"'],
    ['1,5e1', '"1,5e1"'],
    ['NaN', '"NaN"'],
    ['-Inf', '"-Inf"'],
    ['1e999', '"1e999"'],
    ['0x10', '"0x10"'],
    ['', 'no value'],
    ['z'.repeat(40), `"${'z'.repeat(32)}..."`],
  ])('counts a line of the gauge valued %j as unreadable, beside a good one', (value, why) => {
    // Skipped before, and the other series summed: `queued: 0`, an idle backend.
    const r = new GaugeReader('q').feed(`q{worker="1"} ${value}\nq{worker="2"} 0\n`);
    expect([r.result(), r.unreadable, r.lines, r.firstUnreadable]).toEqual([0, 1, 2, why]);
    expect(parsePrometheusGauge(`q{worker="1"} ${value}\nq{worker="2"} 0\n`, 'q')).toBeUndefined();
  });
  it("counts a name without a value and a label set never closed; other metrics' lines are free", () => {
    const r = new GaugeReader('q').feed('q\nq{a="x} 5\nq{a="y"}\nq 1\n');
    expect([r.result(), r.unreadable, r.lines, r.firstUnreadable]).toEqual([1, 3, 4, 'no value']);
    expect(new GaugeReader('q').feed('q{a="x} 5\n').firstUnreadable).toBe('a label set not closed');
    const page = '# TYPE q gauge\nq_total undefined\nother NaN\nqq{a="} 1\n# q NaN\nq 3\n';
    const other = new GaugeReader('q').feed(page);
    expect([other.result(), other.unreadable, other.lines]).toEqual([3, 0, 1]);
  });
  it('reads blanks between the name and its label set, as Prometheus does', () => {
    expect(parsePrometheusGauge('q {w="1"} 5\nq\t{w="2"} 7\nq 1\n', 'q')).toBe(13);
    expect(parsePrometheusGauge('q {w="1" 5\n', 'q')).toBeUndefined(); // never closed
  });
  it('counts a line whose name 64 Ki blanks put out of reach, not skip it', () => {
    // The others were summed and nothing said: 0 for a page whose one worker held 7.
    for (const blanks of [65_537, 65_532, 70_000]) {
      const r = new GaugeReader('queue_depth').feed(
        ' '.repeat(blanks) + 'queue_depth{w="1"} 7\nqueue_depth{w="2"} 0\n',
      );
      expect([blanks, r.unreadable]).toEqual([blanks, 1]);
    }
  });
  it('counts a line below 0 once rounded, and reads -0.5 to -0 as 0', () => {
    const r = new GaugeReader('q').feed('q{w="1"} -7\nq{w="2"} 10\nq{w="3"} -0.5\n');
    expect([r.result(), r.belowZero, r.firstBelowZero, r.lines, r.unreadable]).toEqual([
      9.5, 1, -7, 3, 0,
    ]);
    expect(parsePrometheusGauge('q{w="1"} -7\nq{w="2"} 10\n', 'q')).toBeUndefined();
  });
});

describe('parsePrometheusGauge: label sets and exemplars', () => {
  it("reads a labelled sample's value, not its OpenMetrics exemplar's", () => {
    // The line's last `}` was taken as the label set's end: the exemplar's value (1) was
    // summed for each worker, 2 instead of 12.
    const page =
      '# TYPE q gauge\nq{worker="1"} 5 # {trace_id="abc"} 1\nq{worker="2"} 7 # {trace_id="def"} 1\n# EOF\n';
    expect(parsePrometheusGauge(page, 'q')).toBe(12);
    expect(parsePrometheusGauge('q{w="1"} 5 # {t="a"} 1.0 1700000000\n', 'q')).toBe(5);
    expect(parsePrometheusGauge('q{w="1"} 5 1700000000000 # {t="a"} 9\n', 'q')).toBe(5);
    expect(parsePrometheusGauge('q 5 # {trace_id="abc"} 1.0\n', 'q')).toBe(5);
  });
  it('ends the label set at its own brace, quoted values and their escapes aside', () => {
    expect(parsePrometheusGauge('q{path="/a}b"} 5\n', 'q')).toBe(5);
    expect(parsePrometheusGauge('q{path="x # {y=\\"z\\"} 1"} 5\n', 'q')).toBe(5);
    expect(parsePrometheusGauge('q{a="\\\\"} 4 # {t="}"} 1\n', 'q')).toBe(4); // a value of one backslash
    expect(parsePrometheusGauge('q{a="\\"} 3"} 6\n', 'q')).toBe(6); // an escaped quote
    expect(parsePrometheusGauge('q{a="unterminated} 5\n', 'q')).toBeUndefined();
    // Two series differing only inside a quoted brace are two series.
    expect(parsePrometheusGauge('q{a="}"} 1 # {t="x"} 9\nq{a="}x"} 2 # {t="x"} 9\n', 'q')).toBe(3);
  });
});

describe('GaugeReader', () => {
  it('reads the same fed in pieces of any size as whole, a line split across pieces too', () => {
    const text = TEXT + 'app_queue_depth{worker="2"} 5'; // the last line has no newline
    for (let size = 1; size <= text.length; size++) {
      const r = new GaugeReader('app_queue_depth');
      for (let i = 0; i < text.length; i += size) r.feed(text.slice(i, i + size));
      expect(r.result()).toBe(12);
    }
  });
  it('does not keep a line longer than 64 Ki characters, reads the next, and counts it', () => {
    const r = new GaugeReader('x');
    r.feed('x{a="');
    for (let i = 0; i < 100; i++) r.feed('y'.repeat(1024)); // 100 KiB, no end of line yet
    r.feed('"} 50\nx{a="2"} 3\n');
    expect([r.result(), r.unreadable, r.lines]).toEqual([3, 1, 2]);
    expect(r.firstUnreadable).toBe('a line over 65536 characters');
  });
  it('takes a long line the same whatever the pieces it came in', () => {
    // A 70 KB line of the gauge was summed (40) when it came in one piece and skipped
    // (without a word) when split: the page read 40 or 0 by the chunking.
    const label = (chars: number, line: (l: string) => string): string => {
      const fixed = line('').length;
      return line('y'.repeat(chars - fixed));
    };
    const longest = 64 * 1024;
    const cases: [string, { sum: number | undefined; unreadable: number; lines: number }][] = [
      [
        `q{worker="2"} 0\n${label(70_000, (l) => `q{worker="1",big="${l}"} 40`)}\n`,
        { sum: 0, unreadable: 1, lines: 2 },
      ],
      // At the bound, read; one character over, not.
      [`${label(longest, (l) => `q{big="${l}"} 40`)}\nq 2\n`, { sum: 42, unreadable: 0, lines: 2 }],
      [
        `${label(longest + 1, (l) => `q{big="${l}"} 40`)}\nq 2\n`,
        { sum: 2, unreadable: 1, lines: 2 },
      ],
      // The last line, without its newline.
      [
        `q 2\n${label(longest + 1, (l) => `  q{big="${l}"} 40`)}`,
        { sum: 2, unreadable: 1, lines: 2 },
      ],
      [`q 2\n${label(longest, (l) => `q{big="${l}"} 40`)}`, { sum: 42, unreadable: 0, lines: 2 }],
      // Another metric's long line is skipped freely, as is a longer name's.
      [
        `${label(70_000, (l) => `other{big="${l}"} 40`)}\nq 2\n`,
        { sum: 2, unreadable: 0, lines: 1 },
      ],
      [
        `${label(70_000, (l) => `q_max{big="${l}"} 40`)}\nq 2\n`,
        { sum: 2, unreadable: 0, lines: 1 },
      ],
      [`# ${label(70_000, (l) => `q{big="${l}"} 40`)}\nq 2\n`, { sum: 2, unreadable: 0, lines: 1 }],
    ];
    for (const [page, want] of cases) {
      const cuts = [page.length, 65536, 65535, 40_000, 1000, 4096, 17, 1];
      for (const size of cuts) {
        const r = new GaugeReader('q');
        for (let i = 0; i < page.length; i += size) r.feed(page.slice(i, i + size));
        const got = { sum: r.result(), unreadable: r.unreadable, lines: r.lines };
        expect([page.length, size, got]).toEqual([page.length, size, want]);
      }
      // Cut once, anywhere around the bound.
      for (let cut = longest - 50; cut < longest + 60; cut += 7) {
        const r = new GaugeReader('q').feed(page.slice(0, cut)).feed(page.slice(cut));
        const got = { sum: r.result(), unreadable: r.unreadable, lines: r.lines };
        expect([page.length, cut, got]).toEqual([page.length, cut, want]);
      }
    }
  });
  it('counts a repeated series toward the bound each time, and a NaN line too', () => {
    // Counted once, an endless page of one line was read to the timeout: 64 MiB of
    // `q{a="b"} 1` cost 3.0 s of CPU, 54% of a core at one read a second.
    for (const line of ['q{a="b"} 1\n', 'q 1\n', 'q NaN\n', 'q -3\n', 'q{a="\n']) {
      const r = new GaugeReader('q');
      r.feed(line.repeat(MAX_GAUGE_LINES));
      expect([line, r.done]).toEqual([line, false]);
      r.feed(line);
      expect([line, r.done]).toEqual([line, true]);
    }
    // Under the bound, a repeated series is still summed once.
    expect(new GaugeReader('q').feed('q{a="b"} 2\n'.repeat(MAX_GAUGE_LINES)).result()).toBe(2);
  });
});

describe('prometheusSource', () => {
  let server: http.Server;
  let page = '';
  let pieceSize = 1000;
  beforeAll(async () => {
    server = http.createServer((_req, res) => {
      res.writeHead(200, { 'content-type': 'text/plain; version=0.0.4' });
      // Written in 1000-byte pieces (pieceSize): lines (and a UTF-8 character) split across
      // chunks.
      let i = 0;
      const size = pieceSize;
      const next = (): void => {
        while (i < page.length) {
          const piece = page.slice(i, i + size);
          i += size;
          if (!res.write(piece)) return void res.once('drain', next);
        }
        res.end();
      };
      next();
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  });
  afterAll(() => new Promise<void>((resolve) => server.close(() => resolve())));
  const url = (): URL =>
    new URL(`http://127.0.0.1:${(server.address() as AddressInfo).port}/metrics`);

  it('reads a gauge at the end of a page of several MiB (refused whole at 1 MiB before)', async () => {
    const filler: string[] = [];
    for (let i = 0; i < 40_000; i++)
      filler.push(`http_request_duration_seconds_bucket{route="/r${i}",le="0.1",label="é"} ${i}`);
    page = filler.join('\n') + '\napp_queue_depth{worker="0"} 3\napp_queue_depth{worker="1"} 4\n';
    expect(Buffer.byteLength(page)).toBeGreaterThan(3 * 1024 * 1024);
    const reading = await prometheusSource(url(), 'app_queue_depth', 'queued', 5_000).read();
    expect(reading.queue).toEqual({ queued: 7, source: { queued: 'prometheus' } });
  });
  it.each([
    ['series', (i: number) => `app_queue_depth{id="${i}"} 1`],
    ['line, one series repeated', () => 'app_queue_depth{id="0"} 1'],
  ])("stops reading at the gauge's 10,001st %s, and says so", async (_what, line) => {
    // Every series string was kept for deduplication: 60 MiB of a gauge labelled per
    // request cost 464 ms of CPU and a 79 MB heap a read; one series repeated was read to
    // the timeout. The page here never ends: the read stops at the bound, not at the
    // page's end or the timeout.
    const endless = http.createServer((_req, res) => {
      res.writeHead(200, { 'content-type': 'text/plain; version=0.0.4' });
      const lines: string[] = [];
      for (let i = 0; i <= MAX_GAUGE_LINES; i++) lines.push(line(i));
      res.write(lines.join('\n') + '\n');
    });
    await new Promise<void>((resolve) => endless.listen(0, '127.0.0.1', resolve));
    try {
      const at = new URL(`http://127.0.0.1:${(endless.address() as AddressInfo).port}/metrics`);
      await expect(
        prometheusSource(at, 'app_queue_depth', 'queued', 60_000).read(),
      ).rejects.toThrow(/gauge app_queue_depth has over 10000 lines/);
    } finally {
      endless.closeAllConnections();
      await new Promise<void>((resolve) => endless.close(() => resolve()));
    }
  });
  it('says so too when the 10,001st line is the last, without its newline', async () => {
    const lines: string[] = [];
    for (let i = 0; i <= MAX_GAUGE_LINES; i++) lines.push(`app_queue_depth{id="${i}"} 1`);
    page = lines.join('\n');
    // Before: the last line was read after the bound's check, and 10,001 series summed.
    await expect(
      prometheusSource(url(), 'app_queue_depth', 'queued', 5_000).read(),
    ).rejects.toThrow(/gauge app_queue_depth has over 10000 lines/);
  });
  it('says a gauge that is there is not a finite number, not that it is missing', async () => {
    for (const value of ['1e999', 'NaN', '+Inf']) {
      page = `app_queue_depth{worker="0"} ${value}\n`;
      await expect(
        prometheusSource(url(), 'app_queue_depth', 'queued', 5_000).read(),
      ).rejects.toThrow(`gauge app_queue_depth: 1 of 1 lines unreadable ("${value}") at`);
    }
  });
  it.each([
    ['undefined', '"undefined"'],
    ['1,5e1', '"1,5e1"'],
    ['NaN', '"NaN"'],
    ['1e999', '"1e999"'],
    ['', 'no value'],
  ])(
    'fails the read when one line of the gauge is unreadable (%j), the others fine',
    async (value, why) => {
      // The other series were summed: `queued: 0`, verdict up, nothing on stderr.
      page = `# TYPE q gauge\nq{worker="1"} ${value}\nq{worker="2"} 0\nother NaN\n`;
      await expect(prometheusSource(url(), 'q', 'queued', 5_000).read()).rejects.toThrow(
        new RegExp(
          `^gauge q: 1 of 2 lines unreadable \\(${why}\\) at http://127\\.0\\.0\\.1:\\d+/metrics: queued must be a count from 0 to 9007199254740991$`,
        ),
      );
    },
  );
  it('fails the read on a label set never closed, and on a line below 0 beside others', async () => {
    page = 'q{worker="1} 3\nq{worker="2"} 0\n';
    await expect(prometheusSource(url(), 'q', 'queued', 5_000).read()).rejects.toThrow(
      /^gauge q: 1 of 2 lines unreadable \(a label set not closed\) at /,
    );
    // Summed before: 3 queued.
    page = 'q{worker="1"} -7\nq{worker="2"} 10\n';
    await expect(prometheusSource(url(), 'q', 'inFlight', 5_000).read()).rejects.toThrow(
      /^gauge q is -7 on 1 of 2 lines at http:.*: inFlight must be a count from 0 to 9007199254740991$/,
    );
  });
  it('fails on a line of the gauge over 64 Ki characters however the page is cut', async () => {
    // Read as 40 in one piece, skipped (the page read 0) when split across pieces.
    const big = `q{worker="1",big="${'y'.repeat(70_000)}"} 40`;
    for (const [body, sizes] of [
      [`q{worker="2"} 0\n${big}\n`, [100_000, 65536, 1000, 97]],
      [`${big}\nq{worker="2"} 0\n`, [100_000, 65536, 1000, 97]],
    ] as const) {
      for (const size of sizes) {
        page = body;
        pieceSize = size;
        try {
          await expect(prometheusSource(url(), 'q', 'queued', 5_000).read()).rejects.toThrow(
            /^gauge q: 1 of 2 lines unreadable \(a line over 65536 characters\) at /,
          );
        } finally {
          pieceSize = 1000;
        }
      }
    }
    // Another metric's long line is skipped, as before.
    page = `other{big="${'y'.repeat(70_000)}"} 1\nq{worker="2"} 4\n`;
    const reading = await prometheusSource(url(), 'q', 'queued', 5_000).read();
    expect(reading.queue).toEqual({ queued: 4, source: { queued: 'prometheus' } });
  });
  it("names the page in its errors without the URL's password", async () => {
    const at = url();
    at.username = 'scraper';
    at.password = 's3cr3t-pw';
    const shown = `http://scraper:***@127.0.0.1:${at.port}/metrics`;
    const series: string[] = [];
    for (let i = 0; i <= MAX_GAUGE_LINES; i++) series.push(`app_queue_depth{id="${i}"} 1`);
    for (const body of [
      'app_queue_depth NaN\n',
      'other 1\n',
      'app_queue_depth -7\n',
      series.join('\n'),
    ]) {
      page = body;
      const err = await prometheusSource(at, 'app_queue_depth', 'queued', 5_000)
        .read()
        .then(
          () => undefined,
          (e: Error) => e,
        );
      expect(err?.message).toContain(` at ${shown}`);
      expect(err?.message).not.toContain('s3cr3t');
    }
  });
  it('refuses a gauge outside 0 to 2^53-1 rather than clamp it; a fraction rounds', async () => {
    // Clamped before: -7 went out as `queued: 0` (an idle backend), 1e308 as 2^53-1.
    for (const value of ['-7', '-1.5', '1e308', '9007199254740993']) {
      page = `app_queue_depth{worker="0"} ${value}\n`;
      await expect(
        prometheusSource(url(), 'app_queue_depth', 'inFlight', 5_000).read(),
      ).rejects.toThrow(
        /^gauge app_queue_depth is [-0-9.e+]+ at http:.*: inFlight must be a count from 0 to 9007199254740991$/,
      );
    }
    for (const [value, count] of [
      ['0.4', 0],
      ['-0.4', 0],
      ['2.6', 3],
      ['9007199254740991', Number.MAX_SAFE_INTEGER],
    ] as const) {
      page = `app_queue_depth{worker="0"} ${value}\n`;
      const reading = await prometheusSource(url(), 'app_queue_depth', 'queued', 5_000).read();
      expect(reading.queue).toEqual({ queued: count, source: { queued: 'prometheus' } });
    }
  });
  /** One sample of an agent reading `gauge` from the page: its queue block, and its warnings. */
  async function agentSample(
    backendId: string,
    gauge: string,
  ): Promise<{ queue: unknown; warnings: string[] }> {
    const agent = createAgent({
      backendId,
      queue: { source: 'prometheus', url: url().href, gauge },
      cgroup: false,
    });
    const warnings: string[] = [];
    agent.on('warning', (w) => warnings.push(w));
    try {
      return { queue: (await agent.sample()).queue, warnings };
    } finally {
      await agent.stop({ graceMs: 0 });
    }
  }
  it('an agent leaves the queue block out when a line of the gauge is unreadable, and warns', async () => {
    page = 'q{worker="1"} undefined\nq{worker="2"} 0\n';
    const { queue, warnings } = await agentSample('prom-unreadable', 'q');
    expect(queue).toBeUndefined();
    expect(warnings).toEqual([
      expect.stringMatching(
        /^queue source \(prometheus\) failed: gauge q: 1 of 2 lines unreadable \("undefined"\) at /,
      ),
    ]);
  });
  it('an agent leaves the queue block out of the report and warns naming the field', async () => {
    page = 'app_queue_depth -7\n';
    const { queue, warnings } = await agentSample('prom-neg', 'app_queue_depth');
    expect(queue).toBeUndefined();
    expect(warnings).toEqual([
      expect.stringMatching(
        /^queue source \(prometheus\) failed: gauge app_queue_depth is -7 at .*: queued must be a count/,
      ),
    ]);
  });
  it('fails an error status at the head, naming it, without reading the page', async () => {
    // Checked after the body: an endless fast 503 page was read to the 64 MiB bound every
    // interval (~10% of a core, RSS 70 -> 119 MB), and the warning said "response body
    // over 67108864 bytes", not the status.
    const app = await endlessServer(503, 'other_metric{le="0.1"} 1\n');
    try {
      await expect(
        prometheusSource(app.url, 'app_queue_depth', 'queued', 60_000).read(),
      ).rejects.toThrow(/^prometheus endpoint answered 503$/);
      await app.closed; // the agent hung up
      // What the server got into its socket before the close, not the bound's 16 MiB.
      expect(app.bytesWritten()).toBeLessThan(MAX_EXPOSITION_BYTES / 4);
    } finally {
      await app.close();
    }
  });
  it('stops an endless page at queue.maxBytes (default 16 MiB), and says so', async () => {
    const app = await endlessServer(200, 'other_metric{le="0.1"} 1\n');
    try {
      for (const [maxBytes, bound] of [
        [undefined, MAX_EXPOSITION_BYTES],
        [65536, 65536],
      ] as const) {
        await expect(
          prometheusSource(app.url, 'app_queue_depth', 'queued', 60_000, maxBytes).read(),
        ).rejects.toThrow(`response body over ${bound} bytes`);
      }
    } finally {
      await app.close();
    }
    expect(MAX_EXPOSITION_BYTES).toBe(16 * 1024 * 1024);
  });
  it('says so when the gauge is not on the page', async () => {
    page = 'other 1\n';
    await expect(
      prometheusSource(url(), 'app_queue_depth', 'queued', 5_000).read(),
    ).rejects.toThrow(/gauge app_queue_depth not found/);
  });
});
