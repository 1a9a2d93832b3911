import { Counter, Registry } from 'prom-client';
import { createGatewayMetrics, LATENCY_BUCKETS_S } from './metrics';
import type { BackendSnapshot, BalancerSnapshot } from './snapshot';

function backend(id: string, over: Partial<BackendSnapshot> = {}): BackendSnapshot {
  return {
    id,
    url: `http://127.0.0.1:1/${id}`,
    origin: 'config',
    weight: 1,
    state: 'healthy',
    stateReason: null,
    inFlight: 0,
    latencyMs: null,
    expectedWaitMs: null,
    serviceTimeSource: 'local',
    cpuThroughputRps: null,
    reportAgeMs: null,
    reportFresh: false,
    signedBy: null,
    lastReport: null,
    trafficShare: 0,
    windowRequests: 0,
    slowStartFactor: 1,
    ejections: 0,
    requestsTotal: 0,
    failuresTotal: 0,
    ...over,
  };
}

function snapshot(
  backends: BackendSnapshot[],
  over: Partial<BalancerSnapshot> = {},
): BalancerSnapshot {
  return {
    takenAt: new Date(0).toISOString(),
    service: null,
    strategy: 'load-aware',
    panic: false,
    saturationQueueLength: 0,
    openWebSockets: 0,
    openStreams: 0,
    requestBufferBytes: 0,
    inFlight: backends.reduce((n, b) => n + b.inFlight, 0),
    eventLoopDelayMs: null,
    overloaded: false,
    acceptQueueDepth: null,
    brokerConnected: null,
    trafficWindowMs: 10_000,
    backends,
    ...over,
  };
}

/** Value of one series in the registry's JSON form, undefined when absent. */
async function value(
  registry: Registry,
  name: string,
  labels: Record<string, string | number> = {},
): Promise<number | undefined> {
  const metric = registry.getSingleMetric(name);
  if (!metric) throw new Error(`no metric ${name}`);
  const { values } = await metric.get();
  const hit = values.find(
    (v) =>
      Object.entries(labels).every(([k, want]) => String(v.labels[k]) === String(want)) &&
      Object.keys(v.labels).length >= Object.keys(labels).length,
  );
  return hit?.value;
}

describe('createGatewayMetrics', () => {
  it('counts responses by backend and status class and observes latency in seconds', async () => {
    const registry = new Registry();
    const m = createGatewayMetrics({ registry });
    m.onResponse('a', 200, 4);
    m.onResponse('a', 204, 30);
    m.onResponse('a', 503, 2);
    m.onResponse('b', 404, 1);
    m.onResponse('b', 999, 1); // nonsense status: counted as 5xx, no new label
    expect(
      await value(registry, 'loadwise_backend_requests_total', {
        backend: 'a',
        status_class: '2xx',
      }),
    ).toBe(2);
    expect(
      await value(registry, 'loadwise_backend_requests_total', {
        backend: 'a',
        status_class: '5xx',
      }),
    ).toBe(1);
    expect(
      await value(registry, 'loadwise_backend_requests_total', {
        backend: 'b',
        status_class: '4xx',
      }),
    ).toBe(1);
    expect(
      await value(registry, 'loadwise_backend_requests_total', {
        backend: 'b',
        status_class: '5xx',
      }),
    ).toBe(1);

    const text = await registry.metrics();
    // 4 ms and 2 ms fall in le=0.005; 30 ms in le=0.05; count 3, sum 0.036 s.
    expect(text).toContain('loadwise_backend_latency_seconds_bucket{le="0.005",backend="a"} 2');
    expect(text).toContain('loadwise_backend_latency_seconds_bucket{le="0.05",backend="a"} 3');
    expect(text).toContain('loadwise_backend_latency_seconds_count{backend="a"} 3');
    expect(text).toMatch(/loadwise_backend_latency_seconds_sum\{backend="a"\} 0\.036/);
  });

  it('has latency buckets from 1 ms to 10 s', () => {
    expect(LATENCY_BUCKETS_S[0]).toBe(0.001);
    expect(LATENCY_BUCKETS_S[LATENCY_BUCKETS_S.length - 1]).toBe(10);
  });

  it('counts errors, picks, ejections, retries, sheds and invalid messages', async () => {
    const registry = new Registry();
    const m = createGatewayMetrics({ registry, prefix: 'gw_' });
    m.onError('a', 'connect');
    m.onError('a', 'connect');
    m.onError('a', 'timeout');
    m.onPick('a', 'load-aware');
    m.onPick('b', 'load-aware');
    m.onPick('b', 'load-aware');
    m.onEjection('a');
    m.onRetry('a');
    m.onRetry('a');
    m.onShed('saturated');
    m.onShed('no-backend');
    m.onShed('saturated');
    m.onInvalidMessage('LW_PROTO_MALFORMED_JSON');
    m.onInvalidMessage('LW_PROTO_REPLAY');
    m.onInvalidMessage('LW_PROTO_REPLAY');
    expect(
      await value(registry, 'gw_backend_errors_total', { backend: 'a', kind: 'connect' }),
    ).toBe(2);
    expect(
      await value(registry, 'gw_backend_errors_total', { backend: 'a', kind: 'timeout' }),
    ).toBe(1);
    expect(await value(registry, 'gw_picks_total', { backend: 'b', strategy: 'load-aware' })).toBe(
      2,
    );
    expect(await value(registry, 'gw_ejections_total', { backend: 'a' })).toBe(1);
    expect(await value(registry, 'gw_retries_total', { backend: 'a' })).toBe(2);
    expect(await value(registry, 'gw_shed_total', { reason: 'saturated' })).toBe(2);
    expect(await value(registry, 'gw_shed_total', { reason: 'no-backend' })).toBe(1);
    expect(await value(registry, 'gw_invalid_messages_total', { code: 'LW_PROTO_REPLAY' })).toBe(2);
    // The same counts as plain totals (the dashboard's view), and a copy: a reader cannot change them.
    const totals = m.totals();
    expect(totals).toEqual({
      retries: 2,
      shed: { saturated: 2, overloaded: 0, 'no-backend': 1, draining: 0 },
      invalidMessages: { LW_PROTO_MALFORMED_JSON: 1, LW_PROTO_REPLAY: 2 },
    });
    totals.shed.saturated = 99;
    expect(m.totals().shed.saturated).toBe(2);
  });

  it('sets the gauges from the snapshot source once per scrape', async () => {
    const registry = new Registry();
    const getSnapshot = jest.fn(() =>
      snapshot(
        [
          backend('a', {
            inFlight: 3,
            reportAgeMs: 1500,
            reportFresh: true,
            signedBy: null,
            trafficShare: 0.75,
            lastReport: {
              cpuUtilization: 0.9,
              memoryUtilization: 0.5,
              inFlight: 4,
              queued: 7,
              concurrencyLimit: 8,
              verdict: 'up',
              agentState: 'online',
            },
          }),
          backend('b', { state: 'ejected', trafficShare: 0.25 }),
        ],
        {
          panic: true,
          saturationQueueLength: 5,
          openWebSockets: 4,
          openStreams: 6,
          requestBufferBytes: 65_536,
          eventLoopDelayMs: 20,
          acceptQueueDepth: 130,
          brokerConnected: true,
        },
      ),
    );
    createGatewayMetrics({ registry, getSnapshot });
    const text = await registry.metrics();
    expect(getSnapshot).toHaveBeenCalledTimes(1);
    expect(text).toContain('loadwise_backend_in_flight{backend="a"} 3');
    expect(text).toContain('loadwise_in_flight 3');
    expect(text).toContain('loadwise_websockets_open 4');
    expect(text).toContain('loadwise_streams_open 6');
    expect(text).toContain('loadwise_request_buffer_bytes 65536');
    expect(text).toContain('loadwise_backend_report_age_seconds{backend="a"} 1.5');
    expect(text).not.toContain('loadwise_backend_report_age_seconds{backend="b"}');
    expect(text).toContain('loadwise_backend_report_fresh{backend="a"} 1');
    expect(text).toContain('loadwise_backend_report_fresh{backend="b"} 0');
    expect(text).toContain('loadwise_backend_traffic_share{backend="a"} 0.75');
    expect(text).toContain('loadwise_backend_state{backend="b",state="ejected"} 1');
    expect(text).toContain('loadwise_backend_state{backend="b",state="healthy"} 0');
    expect(text).toContain('loadwise_backend_reported_cpu_utilization{backend="a"} 0.9');
    expect(text).toContain('loadwise_backend_reported_queued{backend="a"} 7');
    expect(text).toContain('loadwise_panic 1');
    expect(text).toContain('loadwise_saturation_queue_length 5');
    expect(text).toContain('loadwise_event_loop_delay_seconds 0.02');
    expect(text).toContain('loadwise_accept_queue_depth 130');
    expect(text).toContain('loadwise_broker_connected 1');
  });

  it('drops the gauge series of a backend that left the snapshot', async () => {
    const registry = new Registry();
    let backends = [backend('a', { inFlight: 1 }), backend('b', { inFlight: 2 })];
    createGatewayMetrics({ registry, getSnapshot: () => snapshot(backends) });
    expect(await registry.metrics()).toContain('loadwise_backend_in_flight{backend="b"} 2');
    backends = [backend('a', { inFlight: 1 })];
    // The per-scrape memo is released on the next turn of the event loop.
    await new Promise((resolve) => setImmediate(resolve));
    const text = await registry.metrics();
    expect(text).toContain('loadwise_backend_in_flight{backend="a"} 1');
    expect(text).not.toContain('backend="b"');
  });

  it('forgets every series of a backend that left for good, and no other', async () => {
    const m = createGatewayMetrics();
    for (const id of ['gone', 'kept']) {
      m.onResponse(id, 200, 5);
      m.onResponse(id, 503, 5);
      m.onError(id, 'reset');
      m.onPick(id, 'p2c');
      m.onEjection(id);
      m.onRetry(id);
    }
    expect(await m.registry.metrics()).toContain('backend="gone"');
    m.forgetBackend('gone');
    const text = await m.registry.metrics();
    expect(text).not.toContain('backend="gone"');
    for (const name of ['requests_total', 'errors_total', 'latency_seconds_count']) {
      expect(text).toContain(`loadwise_backend_${name}{`);
    }
    expect(text.match(/backend="kept"/g)!.length).toBeGreaterThan(6);
    // It may come back, counted from zero.
    m.onResponse('gone', 200, 5);
    expect(await m.registry.metrics()).toContain(
      'loadwise_backend_requests_total{backend="gone",status_class="2xx"} 1',
    );
  });

  it('keeps counting across scrapes (counts are handed over once, never twice)', async () => {
    const registry = new Registry();
    const m = createGatewayMetrics({ registry });
    for (let i = 0; i < 3; i++) m.onPick('a', 'p2c');
    m.onResponse('a', 200, 1);
    await registry.metrics();
    await registry.metrics();
    for (let i = 0; i < 2; i++) m.onPick('a', 'p2c');
    m.onResponse('a', 201, 1);
    const text = await registry.metrics();
    expect(text).toContain('loadwise_picks_total{backend="a",strategy="p2c"} 5');
    expect(text).toContain('loadwise_backend_requests_total{backend="a",status_class="2xx"} 2');
    expect(text).toContain('loadwise_backend_latency_seconds_count{backend="a"} 2');
  });

  it('puts a latency on a bucket bound into that bucket, and above 10 s into +Inf only', async () => {
    const registry = new Registry();
    const m = createGatewayMetrics({ registry });
    m.onResponse('a', 200, 10); // exactly 0.01 s: le="0.01" (bounds are inclusive)
    m.onResponse('a', 200, 60_000);
    m.onResponse('a', 200, Number.NaN); // counted as a response, not observed
    const text = await registry.metrics();
    expect(text).toContain('loadwise_backend_latency_seconds_bucket{le="0.005",backend="a"} 0');
    expect(text).toContain('loadwise_backend_latency_seconds_bucket{le="0.01",backend="a"} 1');
    expect(text).toContain('loadwise_backend_latency_seconds_bucket{le="10",backend="a"} 1');
    expect(text).toContain('loadwise_backend_latency_seconds_bucket{le="+Inf",backend="a"} 2');
    expect(text).toContain('loadwise_backend_latency_seconds_count{backend="a"} 2');
    expect(text).toContain('loadwise_backend_requests_total{backend="a",status_class="2xx"} 3');
    expect(text).toContain('# TYPE loadwise_backend_latency_seconds histogram');
  });

  it('serves the histogram through getMetricsAsJSON and resetMetrics like prom-client metrics', async () => {
    const registry = new Registry();
    const m = createGatewayMetrics({ registry });
    m.onResponse('a', 200, 3);
    const json = await registry.getMetricsAsJSON();
    const h = json.find((x) => x.name === 'loadwise_backend_latency_seconds');
    expect(h?.type).toBe('histogram');
    expect(h?.values).toContainEqual({
      labels: { backend: 'a' },
      value: 1,
      metricName: 'loadwise_backend_latency_seconds_count',
    });
    registry.resetMetrics();
    expect(await registry.metrics()).toContain(
      'loadwise_backend_latency_seconds_count{backend="a"} 0',
    );
    // The request path keeps observing into the same series after a reset.
    m.onResponse('a', 200, 3);
    expect(await registry.metrics()).toContain(
      'loadwise_backend_latency_seconds_count{backend="a"} 1',
    );
  });

  it('balancers of different services share one registry, each series labelled with its service', async () => {
    const registry = new Registry();
    const users = createGatewayMetrics({
      registry,
      service: 'users',
      getSnapshot: () => snapshot([backend('u1', { inFlight: 2 })]),
    });
    const orders = createGatewayMetrics({
      registry,
      service: 'orders',
      getSnapshot: () => snapshot([backend('o1', { inFlight: 1 })], { panic: true }),
    });
    users.onResponse('u1', 200, 5);
    orders.onResponse('o1', 503, 5);
    orders.onShed('saturated');
    const text = await registry.metrics();
    expect(text).toContain(
      'loadwise_backend_requests_total{service="users",backend="u1",status_class="2xx"} 1',
    );
    expect(text).toContain(
      'loadwise_backend_requests_total{service="orders",backend="o1",status_class="5xx"} 1',
    );
    expect(text).toContain(
      'loadwise_backend_latency_seconds_count{service="users",backend="u1"} 1',
    );
    expect(text).toContain('loadwise_shed_total{service="orders",reason="saturated"} 1');
    expect(text).toContain('loadwise_backend_in_flight{service="users",backend="u1"} 2');
    expect(text).toContain('loadwise_backend_in_flight{service="orders",backend="o1"} 1');
    expect(text).toContain('loadwise_panic{service="users"} 0');
    expect(text).toContain('loadwise_panic{service="orders"} 1');
    // One HELP/TYPE per family, not one per balancer.
    expect(text.match(/^# TYPE loadwise_backend_in_flight /gm)).toHaveLength(1);
  });

  it('refuses a second balancer of the same service on one registry with a coded error', () => {
    const registry = new Registry();
    createGatewayMetrics({ registry, service: 'users' });
    expect(() => createGatewayMetrics({ registry, service: 'users' })).toThrow(
      /^LW_GW_INVALID_OPTION: metricsRegistry is already used by a balancer of service users/,
    );
    createGatewayMetrics({ registry });
    expect(() => createGatewayMetrics({ registry })).toThrow(
      /^LW_GW_INVALID_OPTION: metricsRegistry is already used by a balancer without a service/,
    );
  });

  it('turns a name clash with a metric registered elsewhere into a coded error', () => {
    const registry = new Registry();
    new Counter({ name: 'loadwise_picks_total', help: 'not ours', registers: [registry] });
    expect(() => createGatewayMetrics({ registry })).toThrow(
      /^LW_GW_INVALID_OPTION: metricsRegistry: .*already been registered/,
    );
  });

  it('release() keeps the counts, stops the gauges and frees the service name', async () => {
    const registry = new Registry();
    const first = createGatewayMetrics({
      registry,
      service: 'users',
      getSnapshot: () => snapshot([backend('u1', { inFlight: 4 })]),
    });
    first.onPick('u1', 'p2c');
    first.release();
    const text = await registry.metrics();
    expect(text).toContain('loadwise_picks_total{service="users",backend="u1",strategy="p2c"} 1');
    expect(text).not.toContain('loadwise_backend_in_flight{');
    const second = createGatewayMetrics({ registry, service: 'users' });
    second.onPick('u1', 'p2c');
    expect(await registry.metrics()).toContain(
      'loadwise_picks_total{service="users",backend="u1",strategy="p2c"} 2',
    );
  });

  it('two balancers with their own registries never clash', () => {
    expect(() => {
      createGatewayMetrics();
      createGatewayMetrics();
    }).not.toThrow();
  });

  it('reads 0 for gateway gauges that do not apply (no broker, no overload protection)', async () => {
    const registry = new Registry();
    createGatewayMetrics({ registry, getSnapshot: () => snapshot([backend('a')]) });
    const text = await registry.metrics();
    expect(text).toMatch(/^loadwise_broker_connected 0$/m);
    expect(text).toMatch(/^loadwise_event_loop_delay_seconds 0$/m);
    expect(text).toMatch(/^loadwise_accept_queue_depth 0$/m);
  });
});
