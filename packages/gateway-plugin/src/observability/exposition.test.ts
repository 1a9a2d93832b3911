import { EventEmitter } from 'node:events';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { Gauge, Registry, type RegistryContentType } from 'prom-client';
import { checkExposition } from '../../../../test/kit/prom-text';
import { metricsHandler } from './handlers';
import { createGatewayMetrics, type GatewayMetrics } from './metrics';
import { SnapshotGauge } from './snapshot-gauges';
import {
  BACKEND_STATE_NAMES,
  type BackendSnapshot,
  type BackendStateName,
  type BalancerSnapshot,
} from './snapshot';

/** Ids a label must escape (quote, backslash, newline), and plain ones. */
const ODD_IDS = ['quote"d', 'back\\slash', 'new\nline', 'ünïcode'];

function backend(id: string, i: number): BackendSnapshot {
  return {
    id,
    url: `http://127.0.0.1:1/${i}`,
    origin: 'config',
    weight: 1,
    state: BACKEND_STATE_NAMES[i % BACKEND_STATE_NAMES.length] as BackendStateName,
    stateReason: null,
    inFlight: i % 7,
    latencyMs: null,
    expectedWaitMs: null,
    serviceTimeSource: 'local',
    cpuThroughputRps: null,
    reportAgeMs: i % 3 === 0 ? null : i * 10 + 0.5,
    reportFresh: i % 2 === 0,
    signedBy: null,
    lastReport:
      i % 5 === 0
        ? null
        : {
            cpuUtilization: i % 4 === 0 ? null : (i % 100) / 100,
            memoryUtilization: 0.5,
            inFlight: 1,
            queued: i % 6 === 0 ? null : i % 11,
            concurrencyLimit: 8,
            verdict: 'up',
            agentState: 'online',
          },
    trafficShare: 1 / (i + 1),
    windowRequests: i,
    slowStartFactor: 1,
    ejections: 0,
    requestsTotal: i,
    failuresTotal: 0,
  };
}

function snapshotOf(backends: BackendSnapshot[], i: number): BalancerSnapshot {
  return {
    takenAt: new Date(0).toISOString(),
    service: null,
    strategy: 'load-aware',
    panic: i % 2 === 1,
    saturationQueueLength: i * 3,
    openWebSockets: i,
    openStreams: 2 * i,
    requestBufferBytes: 0,
    inFlight: 5 + i,
    eventLoopDelayMs: i === 0 ? null : 12.5,
    overloaded: false,
    acceptQueueDepth: i === 0 ? null : 4,
    brokerConnected: i === 0 ? null : true,
    trafficWindowMs: 10_000,
    backends,
  };
}

interface Fleet {
  registry: Registry;
  members: { service: string | undefined; metrics: GatewayMetrics; snapshot: BalancerSnapshot }[];
  getSnapshot: jest.Mock;
}

/** Balancers (one per service) sharing a registry, every backend with traffic of every kind. */
function fleet(services: (string | undefined)[], backends: number): Fleet {
  const registry = new Registry();
  const getSnapshot = jest.fn();
  const members = services.map((service, s) => {
    const ids = [
      ...ODD_IDS,
      ...Array.from({ length: backends - ODD_IDS.length }, (_, i) => `b-${i}`),
    ];
    const snapshot = snapshotOf(
      ids.map((id, i) => backend(id, i)),
      s,
    );
    const metrics = createGatewayMetrics({
      registry,
      ...(service !== undefined ? { service } : {}),
      getSnapshot: () => getSnapshot(snapshot) as BalancerSnapshot,
    });
    ids.forEach((id, i) => {
      metrics.onPick(id, 'load-aware');
      metrics.onResponse(id, i % 13 === 0 ? 503 : 200, (i % 50) * 7.3);
      if (i % 9 === 0) metrics.onError(id, 'timeout');
      if (i % 17 === 0) metrics.onRetry(id);
    });
    metrics.onShed('saturated');
    return { service, metrics, snapshot };
  });
  getSnapshot.mockImplementation((s: BalancerSnapshot) => s);
  return { registry, members, getSnapshot };
}

/**
 * The text the gateway served before the gauges and the histogram were
 * written directly: prom-client Gauges reset and set from the snapshots as
 * the old collect hook did, every other family formatted by prom-client from
 * its `get()` (the histogram's `get()` is the one it always had).
 */
async function previousText(f: Fleet): Promise<string> {
  return previousRegistry(f).metrics();
}

/** The registry previousText() formats: prom-client Gauges set from the snapshots, the other families read through. */
function previousRegistry(f: Fleet): Registry {
  const ref = new Registry();
  const gauges = new Map<string, Gauge<string>>();
  // Histograms and our gauges are not prom-client classes: read every metric as the Registry does.
  const metrics = f.registry.getMetricsAsArray() as unknown as {
    name: string;
    help: string;
    type: string;
    aggregator: string;
    get(): Promise<unknown>;
    reset(): void;
  }[];
  for (const metric of metrics) {
    if (metric instanceof SnapshotGauge) {
      gauges.set(
        metric.name,
        new Gauge({
          name: metric.name,
          help: metric.help,
          labelNames: [...metric.labelNames],
          registers: [ref],
        }),
      );
    } else {
      const generic = {
        name: metric.name,
        help: metric.help,
        type: metric.type,
        aggregator: metric.aggregator,
        get: () => metric.get(),
        reset: () => metric.reset(),
      };
      ref.registerMetric(generic as unknown as Parameters<Registry['registerMetric']>[0]);
    }
  }
  const g = (name: string): Gauge<string> => gauges.get(`loadwise_${name}`)!;
  for (const { service, snapshot: s } of f.members) {
    const L = (labels: Record<string, string>): Record<string, string> =>
      service === undefined ? labels : { service, ...labels };
    for (const b of s.backends) {
      const bl = L({ backend: b.id });
      g('backend_in_flight').set(bl, b.inFlight);
      if (b.reportAgeMs !== null) g('backend_report_age_seconds').set(bl, b.reportAgeMs / 1000);
      g('backend_report_fresh').set(bl, b.reportFresh ? 1 : 0);
      g('backend_traffic_share').set(bl, b.trafficShare);
      for (const name of BACKEND_STATE_NAMES)
        g('backend_state').set(L({ backend: b.id, state: name }), b.state === name ? 1 : 0);
      const r = b.lastReport;
      if (r?.cpuUtilization != null)
        g('backend_reported_cpu_utilization').set(bl, r.cpuUtilization);
      if (r?.queued != null) g('backend_reported_queued').set(bl, r.queued);
    }
    const gl = L({});
    g('in_flight').set(gl, s.inFlight);
    g('panic').set(gl, s.panic ? 1 : 0);
    g('overloaded').set(gl, s.overloaded ? 1 : 0);
    g('saturation_queue_length').set(gl, s.saturationQueueLength);
    g('websockets_open').set(gl, s.openWebSockets);
    g('request_buffer_bytes').set(gl, s.requestBufferBytes);
    g('streams_open').set(gl, s.openStreams);
    g('event_loop_delay_seconds').set(gl, (s.eventLoopDelayMs ?? 0) / 1000);
    g('accept_queue_depth').set(gl, s.acceptQueueDepth ?? 0);
    g('broker_connected').set(gl, s.brokerConnected === true ? 1 : 0);
  }
  return ref;
}

/** A response that keeps what the handler does with it; `write` answers `writeReturns()`. */
class FakeResponse extends EventEmitter {
  statusCode = 0;
  headersSent = false;
  writableEnded = false;
  destroyed = false;
  readonly headers: Record<string, unknown> = {};
  /** Every write(), in order; the end's body, if any, last. */
  readonly writes: string[] = [];
  /** The writes made before end() (or destroy()). */
  ended: Promise<'end' | 'destroy'>;
  writeReturns: () => boolean = () => true;
  private settle!: (how: 'end' | 'destroy') => void;

  constructor() {
    super();
    this.ended = new Promise((resolve) => (this.settle = resolve));
  }

  get body(): string {
    return this.writes.join('');
  }

  setHeader(name: string, value: unknown): void {
    if (this.headersSent) throw new Error('ERR_HTTP_HEADERS_SENT');
    this.headers[name.toLowerCase()] = value;
  }

  write(chunk: string): boolean {
    if (this.writableEnded || this.destroyed) throw new Error('write after end');
    this.headersSent = true;
    this.writes.push(chunk);
    return this.writeReturns();
  }

  end(chunk?: string): void {
    if (chunk !== undefined) this.write(chunk);
    this.headersSent = true;
    this.writableEnded = true;
    this.settle('end');
    this.emit('close');
  }

  destroy(): void {
    this.destroyed = true;
    this.settle('destroy');
    this.emit('close');
  }
}

/** One scrape through metricsHandler with plain request/response objects. */
function scrape(handler: ReturnType<typeof metricsHandler>): Promise<string> {
  return new Promise((resolve, reject) => {
    const req = { method: 'GET', headers: {} } as IncomingMessage;
    const res = new FakeResponse();
    void res.ended.then((how) => {
      if (how === 'end' && res.statusCode === 200) resolve(res.body);
      else reject(new Error(`${how}, status ${res.statusCode}`));
    });
    handler(req, res as unknown as ServerResponse, reject);
  });
}

describe('metrics exposition at many backends', () => {
  it.each([
    ['no service, 1,000 backends', [undefined], 1000],
    ['two services sharing a registry, 600 backends each', ['users', 'or"ders'], 600],
  ])('%s: the same text as before, sample for sample, and valid', async (_name, services, n) => {
    const f = fleet(services, n);
    const served = await scrape(metricsHandler(f.registry));
    const direct = await f.registry.metrics();
    const before = await previousText(f);
    expect(checkExposition(served)).toEqual([]);
    expect(served.length).toBeGreaterThan(n * 1000);
    expect(served).toBe(before);
    expect(direct).toBe(before);
    expect(served).toContain('backend="quote\\"d"');
    expect(served).toContain('backend="back\\\\slash"');
    expect(served).toContain('backend="new\\nline"');
  });

  it('writes nothing for a chunk of backends none of which has reported (no blank line)', async () => {
    const f = fleet([undefined], 600);
    for (const m of f.members)
      for (const b of m.snapshot.backends as Array<{ reportAgeMs: unknown; lastReport: unknown }>) {
        b.reportAgeMs = null;
        b.lastReport = null;
      }
    const served = await scrape(metricsHandler(f.registry));
    // Before: each such chunk of 250 gave a lone newline, and the text was not prom-client's.
    expect(served).toBe(await f.registry.metrics());
    expect(served).toBe(await previousText(f));
  });

  it('gives getMetricsAsJSON() the gauges prom-client gave', async () => {
    const f = fleet(['users', undefined], 20);
    const ours = await f.registry.getMetricsAsJSON();
    const previous = await previousText(f); // sets the reference gauges
    expect(previous).toBe(await f.registry.metrics());
    const inFlight = ours.find((m) => m.name === 'loadwise_backend_in_flight')!;
    expect(inFlight.type).toBe('gauge');
    expect(inFlight.values).toContainEqual({
      labels: { service: 'users', backend: 'b-0' },
      value: ODD_IDS.length % 7,
    });
    const state = ours.find((m) => m.name === 'loadwise_backend_state')!;
    expect(state.values).toHaveLength(2 * 20 * BACKEND_STATE_NAMES.length);
    const panic = ours.find((m) => m.name === 'loadwise_panic')!;
    expect(panic.values).toEqual([
      { labels: { service: 'users' }, value: 0 },
      { labels: {}, value: 1 },
    ]);
  });

  it('lets the event loop run during a scrape of 1,000 backends', async () => {
    const f = fleet([undefined], 1000);
    let ranBetween = false;
    // Queued before the scrape starts: it runs at the scrape's first pause, not after it.
    setImmediate(() => {
      ranBetween = true;
    });
    await scrape(metricsHandler(f.registry));
    expect(ranBetween).toBe(true);
  });

  it('serves scrapes that arrive together from one render, and renders again afterwards', async () => {
    const f = fleet([undefined], 1000);
    const handler = metricsHandler(f.registry);
    const [a, b] = await Promise.all([scrape(handler), scrape(handler)]);
    expect(a).toBe(b);
    expect(f.getSnapshot).toHaveBeenCalledTimes(1);
    await scrape(handler);
    expect(f.getSnapshot).toHaveBeenCalledTimes(2);
  });

  it('writes a backend that leaves during a scrape either whole or not at all', async () => {
    const f = fleet([undefined], 1000);
    const m = f.members[0]!.metrics;
    const text = scrape(metricsHandler(f.registry));
    // After the scrape's first pause: the histogram may be half written.
    await new Promise((resolve) => setImmediate(resolve));
    m.forgetBackend('b-990');
    expect(checkExposition(await text)).toEqual([]);
  });

  it('writes a backend forgotten and heard again during a scrape once at most', async () => {
    const f = fleet([undefined], 1000);
    const m = f.members[0]!.metrics;
    const handler = metricsHandler(f.registry);
    // After 1 to 6 pauses of the scrape (the histogram is written in some of them).
    for (let pauses = 1; pauses <= 6; pauses++) {
      const text = scrape(handler);
      for (let i = 0; i < pauses; i++) await new Promise((resolve) => setImmediate(resolve));
      // Forgotten, then the answer of a request still on it makes its series again: the
      // live iterator visited it a second time at the end of the family.
      m.forgetBackend('b-0');
      m.onResponse('b-0', 200, 12);
      expect([pauses, checkExposition(await text)]).toEqual([pauses, []]);
    }
  });

  it('leaves a registry with default labels to prom-client', async () => {
    const f = fleet([undefined], 10);
    f.registry.setDefaultLabels({ region: 'eu' });
    const served = await scrape(metricsHandler(f.registry));
    expect(served).toBe(await f.registry.metrics());
    expect(served).toContain('loadwise_panic{region="eu"} 0');
    expect(checkExposition(served)).toEqual([]);
  });

  describe('after an OpenMetrics registry merged from it was scraped', () => {
    /** What an application serving OpenMetrics does (docs/observability.md). */
    async function scrapeMergedOpenMetrics(registry: Registry): Promise<string> {
      // merge() is typed as giving a Prometheus-format registry: TypeScript needs the cast.
      const merged = Registry.merge([registry]) as Registry<RegistryContentType>;
      merged.setContentType(Registry.OPENMETRICS_CONTENT_TYPE);
      return merged.metrics();
    }

    it('still serves its counters, under their own names, sample for sample', async () => {
      const f = fleet(['users', undefined], 300);
      const handler = metricsHandler(f.registry);
      const before = await scrape(handler);
      expect(before).toContain('# TYPE loadwise_backend_requests_total counter');
      // prom-client renames the counters in place while it renders OpenMetrics (no _total).
      await scrapeMergedOpenMetrics(f.registry);
      const picks = f.registry.getSingleMetric('loadwise_picks_total') as unknown as {
        name: string;
      };
      expect(picks.name).toBe('loadwise_picks');
      const after = await scrape(handler);
      expect(after).toBe(before);
      expect(checkExposition(after)).toEqual([]);
    });

    it('still serves its counters with default labels', async () => {
      const f = fleet([undefined], 20);
      f.registry.setDefaultLabels({ region: 'eu' });
      const handler = metricsHandler(f.registry);
      const before = await scrape(handler);
      expect(before).toBe(await f.registry.metrics());
      await scrapeMergedOpenMetrics(f.registry);
      const after = await scrape(handler);
      expect(after).toBe(before);
      expect(after).toContain('loadwise_shed_total{reason="saturated",region="eu"} 1');
      expect(checkExposition(after)).toEqual([]);
    });

    it("gives the merged registry the OpenMetrics text prom-client's own gauges give", async () => {
      const f = fleet(['users', undefined], 50);
      await scrape(metricsHandler(f.registry)); // a scrape of ours first changes nothing there
      const merged = await scrapeMergedOpenMetrics(f.registry);
      // The reference after: its counters are ours, read through (renamed by then).
      const ref = previousRegistry(f) as Registry<RegistryContentType>;
      ref.setContentType(Registry.OPENMETRICS_CONTENT_TYPE);
      expect(merged).toBe(await ref.metrics());
      expect(merged.endsWith('\n# EOF\n')).toBe(true);
      expect(merged).toContain('# TYPE loadwise_picks counter\n');
      expect(merged).toContain(
        'loadwise_picks_total{service="users",backend="b-0",strategy="load-aware"} 1\n',
      );
      expect(merged).toContain('# TYPE loadwise_backend_latency_seconds histogram\n');
      expect(merged).toContain('loadwise_backend_state{backend="b-0",state="healthy"} 1\n');
    });
  });

  describe('written as it is rendered', () => {
    const get = { method: 'GET', headers: {} } as IncomingMessage;

    it('writes the text in parts of at most a chunk of backends, with the headers, then ends', async () => {
      const f = fleet([undefined], 3000);
      const res = new FakeResponse();
      metricsHandler(f.registry)(get, res as unknown as ServerResponse);
      expect(await res.ended).toBe('end');
      expect(res.statusCode).toBe(200);
      expect(res.headers['content-type']).toBe(f.registry.contentType);
      expect(res.headers['cache-control']).toBe('no-store');
      expect(res.headers['content-length']).toBeUndefined();
      expect(res.body).toBe(await f.registry.metrics());
      // The histogram's 16 lines of 250 backends: about 0.4 MB; the whole text is 5 MB.
      expect(res.body.length).toBeGreaterThan(4_000_000);
      expect(res.writes.length).toBeGreaterThan(30);
      expect(Math.max(...res.writes.map((w) => w.length))).toBeLessThan(600_000);
    });

    it("waits for 'drain' when the socket has enough", async () => {
      const f = fleet([undefined], 1000);
      const res = new FakeResponse();
      res.writeReturns = () => false;
      metricsHandler(f.registry)(get, res as unknown as ServerResponse);
      const turn = (): Promise<unknown> => new Promise((resolve) => setImmediate(resolve));
      for (let drains = 0; ; drains++) {
        // One write after each drain (the first without one), then none however long the loop runs.
        while (res.writes.length === drains && !res.writableEnded) await turn();
        for (let i = 0; i < 5; i++) await turn();
        if (res.writableEnded) break;
        expect([drains, res.writes.length]).toEqual([drains, drains + 1]);
        res.emit('drain');
      }
      expect(res.writes.length).toBeGreaterThan(10);
      expect(res.body).toBe(await f.registry.metrics());
    });

    it("adds one 'drain' listener however often it waits (compression's res.on keeps each)", async () => {
      const f = fleet([undefined], 1000);
      const res = new FakeResponse();
      res.writeReturns = () => false;
      // As the compression middleware: res.on('drain') goes to its zlib stream, res.off
      // does not follow it there. Before: a listener left there for each wait (44 on a
      // 5 MB scrape, a MaxListenersExceededWarning, every drain calling all of them).
      const zlib = new EventEmitter();
      const on = res.on.bind(res);
      res.on = ((event: string, listener: (...args: unknown[]) => void) =>
        event === 'drain' ? (zlib.on(event, listener), res) : on(event, listener)) as typeof res.on;
      metricsHandler(f.registry)(get, res as unknown as ServerResponse);
      const turn = (): Promise<unknown> => new Promise((resolve) => setImmediate(resolve));
      let waits = 0;
      while (!res.writableEnded) {
        for (let i = 0; i < 3; i++) await turn();
        if (zlib.listenerCount('drain') > 0) {
          waits++;
          zlib.emit('drain');
        }
      }
      expect(waits).toBeGreaterThan(10);
      expect(zlib.listenerCount('drain')).toBeLessThanOrEqual(1);
      expect(res.body).toBe(await f.registry.metrics());
    });

    it('destroys the response when the render fails after its first part', async () => {
      const f = fleet([undefined], 1000);
      // After the histogram and the gauges in the registry's order: a family that fails.
      f.registry.registerMetric({
        name: 'app_broken',
        help: 'fails',
        type: 'gauge',
        aggregator: 'sum',
        get: () => Promise.reject(new Error('collect failed')),
        reset() {},
      } as unknown as Parameters<Registry['registerMetric']>[0]);
      const res = new FakeResponse();
      const next = jest.fn();
      metricsHandler(f.registry)(get, res as unknown as ServerResponse, next);
      expect(await res.ended).toBe('destroy');
      expect(res.writableEnded).toBe(false);
      expect(res.writes.length).toBeGreaterThan(0);
      expect(next).toHaveBeenCalledWith(expect.objectContaining({ message: 'collect failed' }));
    });

    it('answers 500 when the render fails before its first part', async () => {
      const registry = new Registry();
      registry.registerMetric({
        name: 'app_broken',
        help: 'fails',
        type: 'gauge',
        aggregator: 'sum',
        get: () => Promise.reject(new Error('collect failed')),
        reset() {},
      } as unknown as Parameters<Registry['registerMetric']>[0]);
      const res = new FakeResponse();
      metricsHandler(registry)(get, res as unknown as ServerResponse);
      expect(await res.ended).toBe('end');
      expect(res.statusCode).toBe(500);
      expect(res.body).toBe('metrics collection failed\n');
    });

    it('stops writing when the client goes, and stops the render when no scrape is left', async () => {
      const f = fleet([undefined], 3000);
      const handler = metricsHandler(f.registry);
      const res = new FakeResponse();
      res.writeReturns = () => false;
      handler(get, res as unknown as ServerResponse);
      while (res.writes.length === 0) await new Promise((resolve) => setImmediate(resolve));
      res.emit('close'); // the client went while the socket was full
      // Read through, the render would reach the gauges (and take the snapshot) within
      // about 20 turns: the counters before them, the histogram's 12 chunks.
      for (let i = 0; i < 200; i++) await new Promise((resolve) => setImmediate(resolve));
      expect(res.writes).toHaveLength(1);
      expect(res.writableEnded).toBe(false);
      expect(f.getSnapshot).not.toHaveBeenCalled();
      // The next scrape renders anew, whole.
      expect(await scrape(handler)).toBe(await f.registry.metrics());
      expect(checkExposition(await scrape(handler))).toEqual([]);
    });

    it('gives a scrape that joins a render late every part from the first', async () => {
      const f = fleet([undefined], 1000);
      const handler = metricsHandler(f.registry);
      const first = scrape(handler);
      for (let i = 0; i < 3; i++) await new Promise((resolve) => setImmediate(resolve));
      const late = scrape(handler);
      const [a, b] = await Promise.all([first, late]);
      expect(b).toBe(a);
      expect(f.getSnapshot).toHaveBeenCalledTimes(1);
      expect(checkExposition(b)).toEqual([]);
    });
  });
});
