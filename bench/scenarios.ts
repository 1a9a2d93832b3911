/**
 * The benchmark scenarios (docs/bench.md "Scenarios"), as data. Service
 * times are tens of ms and rates a few hundred per second so the load
 * generator, backends and gateway together stay well inside the machine's 2
 * cores: the tails then come from routing, not from Node processes fighting
 * for CPU. Capacity of a backend = slots / service time.
 */
import {
  expressHpm,
  expressHpmKeepAlive,
  serverClassVariants,
  expressUndici,
  haproxy,
  loadwise,
  loadwiseWorkers,
  nginx,
  parseStrategySpec,
  PEERS,
  type BalancerDef,
} from './lib/balancers';
import { reportEvery, withoutCgroup, withoutServicePid, type BackendSpec } from './lib/cluster';
import { forkProc } from './lib/procs';
import type { LoadSpec, Scenario } from './lib/scenario';

export interface ScenarioOptions {
  quick: boolean;
  /** loadwise strategies to compare (the gateway's registered names). */
  strategies: string[];
  /** Simulated agents in scenario 7. */
  controlPlaneAgents: number;
  /** Scenario 8's rates (req/s); default 500 to 2,500 by 500 (200 and 400 with `quick`). */
  rates?: number[];
}

function open(rate: number, quick: boolean, durationMs = 8_000, windowMs = 1_000): LoadSpec {
  return {
    mode: 'open',
    rate,
    warmupMs: quick ? 1_000 : 2_000,
    durationMs: quick ? 3_000 : durationMs,
    // Open loop models many independent clients: the pool must never cap
    // concurrency, or requests queue behind one slow backend's responses in
    // the client (head-of-line blocking no real user population has). Enough
    // sockets for every request of the timeout span to be outstanding at once.
    maxSockets: Math.min(4_000, Math.ceil((rate * 10_000) / 1000)),
    timeoutMs: 10_000,
    windowMs,
  };
}

function closed(concurrency: number, quick: boolean): LoadSpec {
  return {
    mode: 'closed',
    concurrency,
    warmupMs: quick ? 1_000 : 2_000,
    durationMs: quick ? 3_000 : 6_000,
    maxSockets: 256,
    timeoutMs: 10_000,
    windowMs: 1_000,
  };
}

function identical(n: number, slots: number, serviceMs: number): BackendSpec[] {
  return Array.from({ length: n }, (_, i) => ({ id: `b${i + 1}`, slots, serviceMs }));
}

/** Backends b1, b2, … of 8 slots each, with these service times in ms. */
function slots8(...serviceMs: number[]): BackendSpec[] {
  return serviceMs.map((ms, i) => ({ id: `b${i + 1}`, slots: 8, serviceMs: ms }));
}

export function buildScenarios(o: ScenarioOptions): Scenario[] {
  const [defaultStrategy = 'load-aware'] = o.strategies;
  const lw = o.strategies.map((s) => loadwise(s));
  const lwDefault = loadwise(defaultStrategy);
  // Listening with nginx's backlog in this harness (bench/lib/peers.ts: backlog=4096), the guard
  // told so, as docs/gateway.md deploys it ("Accept queue").
  const lwBacklog4096 = loadwise(
    defaultStrategy,
    { acceptQueue: { backlog: 4096 } },
    { backlog: 4096 },
    ', backlog 4096',
  );
  // Option variants (`load-aware/choices=3`) also run where only the default would.
  const variants = o.strategies
    .filter((s) => parseStrategySpec(s).strategyOptions !== undefined)
    .map((s) => loadwise(s));
  const leastConns = [nginx('least_conn'), nginx('random two least_conn'), haproxy('leastconn')];
  const q = o.quick;

  // 200 req/s per fast backend (8 slots x 40 ms).
  const FAST = { slots: 8, serviceMs: 40 };
  const three = identical(3, FAST.slots, FAST.serviceMs);

  const scenarios: Scenario[] = [
    {
      name: 'heterogeneous',
      title: '1. Heterogeneous capacities',
      description:
        'Backends b1, b2: 8 slots x 40 ms (200 req/s each); b3: 8 slots x 160 ms (50 req/s, 4x slower). ' +
        'Open-loop Poisson at 315 req/s = 70% of the 450 req/s total.',
      backends: [
        { id: 'b1', ...FAST },
        { id: 'b2', ...FAST },
        { id: 'b3', slots: 8, serviceMs: 160 },
      ],
      maxQueue: 512,
      agents: true,
      cases: [{ label: '315 req/s', load: open(315, q) }],
      balancers: [...lw, ...PEERS],
    },
    {
      name: 'hidden-load',
      title: '2. Hidden load',
      description:
        'Three backends of 200 req/s (8 slots x 40 ms). Another client sends 120 req/s straight to b3, ' +
        "past the gateway; only b3's agent sees it. The gateway gets 300 req/s: 420 of 600 req/s in all (70%).",
      backends: three,
      maxQueue: 512,
      agents: true,
      cases: [
        {
          label: '300 + 120 hidden req/s',
          load: open(300, q),
          hiddenLoad: { backendId: 'b3', rate: 120 },
        },
      ],
      balancers: [...lw, ...PEERS],
    },
    {
      name: 'degradation',
      title: '3. A backend degrades mid-run',
      description:
        "Three backends of 200 req/s at 360 req/s (60%). b1's service time goes 40 -> 200 ms (x5) " +
        'from 4 s to 10 s after warm-up, then recovers. Shares are counted in 500 ms windows.',
      backends: three,
      maxQueue: 512,
      agents: true,
      cases: [
        {
          label: '360 req/s, b1 x5 from 4 to 10 s',
          load: open(360, q, 16_000, 500),
          events: q
            ? [
                { atMs: 1_000, backendId: 'b1', serviceMs: 200 },
                { atMs: 2_000, backendId: 'b1', serviceMs: 40 },
              ]
            : [
                { atMs: 4_000, backendId: 'b1', serviceMs: 200 },
                { atMs: 10_000, backendId: 'b1', serviceMs: 40 },
              ],
        },
      ],
      balancers: [lwDefault, ...variants, ...leastConns, haproxy('agent-check'), expressHpm],
    },
    {
      name: 'identical',
      title: '4. Identical backends',
      description:
        'Three backends of 200 req/s (8 slots x 40 ms), open-loop Poisson at 420 req/s (70%).',
      backends: three,
      maxQueue: 512,
      agents: true,
      cases: [{ label: '420 req/s', load: open(420, q) }],
      balancers: [
        ...lw.filter((b) => /load-aware|least-in-flight|p2c|peak-ewma/.test(b.name)),
        ...leastConns,
      ],
    },
    {
      name: 'two-gateways',
      title: '5. Two gateways, one broker',
      description:
        'Two gateway processes on the same broker and backends (three of 200 req/s); the load generator ' +
        'alternates requests between them, 420 req/s in all. Herding shows as a backend taking far more than ' +
        'its fair third in a 1 s window.',
      backends: three,
      maxQueue: 512,
      agents: true,
      gatewayInstances: 2,
      cases: [{ label: '420 req/s over 2 gateways', load: open(420, q) }],
      balancers: [lwDefault, ...variants, nginx('least_conn'), haproxy('leastconn')],
    },
    {
      name: 'gateways',
      title: '5b. Several gateways, one slow backend',
      description:
        'Four backends of 160/160/80/32 req/s (8 slots x 50/50/100/250 ms; b4 is 5x slower), 280 req/s ' +
        '(65% of 432) spread evenly over 1, 2 or 4 gateway processes on the same broker, warm (5 s ' +
        "discarded), 20 s measured. Each gateway's own p99 is reported (gwNP99Ms) and the worst of them: " +
        'every gateway must keep the advantage, not only their mix. The peers run as many instances, ' +
        'each with only its own connection counts, as several nginx or HAProxy boxes would. A gateway learns ' +
        "the others' requests only from the backends' reports; a loadwise row with agents reporting every " +
        '250 ms instead of 1 s shows what knowing them sooner buys.',
      backends: slots8(50, 50, 100, 250),
      maxQueue: 512,
      agents: true,
      cases: [1, 2, 4].map((n) => ({
        label: `280 req/s over ${n} gateway${n > 1 ? 's' : ''}`,
        load: { ...open(280, q, 20_000), warmupMs: q ? 1_000 : 5_000 },
        gatewayInstances: n,
      })),
      balancers: [
        lwDefault,
        ...variants,
        // How much must each gateway know of the others' requests? They see them only in the
        // backends' reports: this row has the agents report 4 times as often.
        {
          ...lwDefault,
          name: `${lwDefault.name}, agents every 250 ms`,
          agentArgs: reportEvery(250),
        },
        nginx('least_conn'),
        haproxy('leastconn'),
      ],
    },
    {
      name: 'overhead',
      title: '6. Overhead',
      description:
        'Three backends that answer at once (no service time, 1000 slots). Closed loop, 32 concurrent ' +
        'requests: the gateway is the bottleneck, so throughput and p99 show its cost per request. ' +
        'Open loop at 1,000 req/s: gateway CPU per proxied request (its /proc/<pid>/stat over the ' +
        'measured phase / requests). The fair Node baseline is Express + http-proxy-middleware with a ' +
        'keep-alive agent, round robin (bench/procs/gateway-hpm.ts); without the agent HPM opens a ' +
        'connection per request (that row is in scenario 8). Express + undici is the same Express front ' +
        "with undici (a keep-alive Pool per backend) in place of Node's http client and http-proxy, " +
        'round robin (bench/procs/gateway-undici.ts). The last two rows swap the server classes: loadwise on ' +
        "Node's own (app.listen), the keep-alive peer on loadwise's gatewayServerOptions() (docs/gateway.md). " +
        'All processes share the 2 cores, so absolute figures are lower than on separate machines.',
      backends: identical(3, 1000, 0),
      maxQueue: 1024,
      agents: true,
      cases: [
        { label: 'closed loop, 32 concurrent', load: closed(32, q) },
        { label: '1,000 req/s', load: open(1000, q, 6_000) },
      ],
      balancers: [
        lwDefault,
        expressHpmKeepAlive,
        expressUndici,
        nginx('least_conn'),
        haproxy('leastconn'),
        ...serverClassVariants(),
      ],
    },
    {
      name: 'workers',
      title: 'Every core: 1 vs 2 gateway workers',
      description:
        'The default gateway in one process, and as 1 and 2 workers of runWorkers (node:cluster) on ' +
        'one port; gateway CPU adds the primary and its workers. Three backends that answer at once; ' +
        'closed loop, 32 concurrent, and open loop at 1,400 req/s. The machine has 2 cores, shared ' +
        'by the gateway, the load generator, 3 backends and 3 agents: the "all CPU" column shows what ' +
        'the other processes leave for a second worker.',
      backends: identical(3, 1000, 0),
      maxQueue: 1024,
      agents: true,
      cases: [
        { label: 'closed loop, 32 concurrent', load: closed(32, q) },
        { label: '1,400 req/s', load: open(1400, q, 6_000) },
      ],
      balancers: [
        lwDefault,
        loadwiseWorkers(defaultStrategy, 1),
        loadwiseWorkers(defaultStrategy, 2),
        nginx('least_conn'),
      ],
    },
    {
      name: 'control-plane',
      title: '7. Control plane',
      description:
        `${o.controlPlaneAgents} simulated agents publish real encoded metrics reports at 1 Hz through ` +
        'Mosquitto (from a separate process) while the gateway proxies. Idle cases (20 req/s) isolate the ' +
        'ingest CPU; closed-loop cases (16 concurrent) show the effect on proxy throughput.',
      backends: identical(3, 1000, 0),
      maxQueue: 1024,
      agents: true,
      cases: [
        { label: 'idle, no simulated agents', load: open(20, q) },
        {
          label: `idle, ${o.controlPlaneAgents} agents`,
          load: open(20, q),
          side: simAgents(o.controlPlaneAgents),
        },
        { label: 'proxy, no simulated agents', load: closed(16, q) },
        {
          label: `proxy, ${o.controlPlaneAgents} agents`,
          load: closed(16, q),
          side: simAgents(o.controlPlaneAgents),
        },
      ],
      balancers: [lwDefault],
    },
    {
      name: 'rate-sweep',
      title: '8. Rate sweep with fast backends',
      description:
        'Three backends of 64 slots x 10 ms (6400 req/s each: they never queue), open-loop rate raised ' +
        "step by step. Any tail here is the gateway's own.",
      backends: identical(3, 64, 10),
      maxQueue: 1024,
      agents: true,
      cases: (o.rates ?? (q ? [200, 400] : [500, 1000, 1500, 2000, 2500])).map((rate) => ({
        label: `${rate} req/s`,
        load: open(rate, q, 6_000),
      })),
      // Express + HPM (a connection per request) last, so its TIME_WAIT sockets
      // follow every other balancer's run rather than precede loadwise's.
      // The default (Node's backlog of 511), the backlog nginx gets here, and the accept-queue
      // guard off: a fresh gateway per rate meets the load generator's connection storm
      // (docs/bench.md, "On a slower machine, the same afternoon").
      balancers: [
        nginx('least_conn'),
        lwDefault,
        lwBacklog4096,
        // The same with 4 accept handles (multiAccept): Node 20 accepts one connection per
        // handle per event-loop turn (docs/gateway.md, "Accept queue").
        loadwise(
          defaultStrategy,
          { acceptQueue: { backlog: 4096 } },
          { backlog: 4096, acceptHandles: 4 },
          ', backlog 4096, 4 accept handles',
        ),
        loadwise(defaultStrategy, { acceptQueue: false }, {}, ', acceptQueue off'),
        expressHpmKeepAlive,
        expressHpm,
      ],
    },
    {
      name: 'steady-heterogeneous',
      title: '8b. Steady tails, fast heterogeneous backends',
      description:
        'The cold-start fleet warm: 8 slots x 10/10/20/50 ms (800/800/400/160 req/s, 2,160 in all), ' +
        "open loop at 1,400 req/s (65%), 2 s warm-up discarded, 10 s measured. Any tail is the gateway's " +
        'or its routing: the backends answer in 10-50 ms.',
      backends: slots8(10, 10, 20, 50),
      maxQueue: 1024,
      agents: true,
      cases: [{ label: '1,400 req/s', load: open(1400, q, 10_000) }],
      balancers: [
        lwDefault,
        // With Node's 511 the guard shed in 2 of 3 runs on the morning of 2026-12-04.
        lwBacklog4096,
        nginx('least_conn'),
        haproxy('leastconn'),
      ],
    },
    ...coldStartScenarios(defaultStrategy),
    ...cpuBoundScenarios(defaultStrategy, q, variants),
    {
      name: 'smoke',
      title: 'Smoke test',
      description:
        'Two backends of 4 slots x 20 ms (200 req/s each) at 40 req/s for a few seconds: the harness works.',
      backends: identical(2, 4, 20),
      maxQueue: 64,
      agents: true,
      onlyWhenNamed: true,
      cases: [
        {
          label: '40 req/s',
          load: { ...open(40, true), warmupMs: 500, durationMs: 2_000, windowMs: 500 },
        },
      ],
      balancers: [lwDefault, expressHpm],
    },
  ];
  return scenarios;
}

/** Seconds of the cold-start run reported one by one. */
export const COLD_START_SECONDS = 5;

/**
 * Cold start: the gateway is started and left idle for 5 s (agents reporting,
 * no traffic), then open-loop Poisson load at about 45% of capacity arrives at
 * once. No warm-up is discarded: the loadgen's series (1 s windows) starts with
 * the first request. Identical backends (4 x 8 slots x 10 ms = 3,200 req/s at
 * 1,400 req/s) and heterogeneous ones (8 slots x 10/10/20/50 ms = 800/800/400/160
 * req/s, 2,160 in all, at 970 req/s). Run by `npm run bench:cold-start`
 * (bench/cold-start/run.ts) or `npm run bench -- --scenario cold-start-identical`.
 * With `restartAtMs` (`npm run bench:cold-start -- --restart`), each balancer's
 * process is killed (SIGKILL) that long into the load and started again on the
 * same port while the load goes on.
 */
export function coldStartScenarios(
  strategy = 'load-aware',
  durationMs = 10_000,
  /** The restart variant: SIGKILL the balancer this long into the load and start it again. */
  restartAtMs?: number,
): Scenario[] {
  const load = (rate: number): LoadSpec => ({
    mode: 'open',
    rate,
    warmupMs: 0,
    durationMs,
    maxSockets: Math.min(4_000, Math.ceil((rate * 10_000) / 1000)),
    timeoutMs: 10_000,
    windowMs: 1_000,
  });
  // Every loadwise row listens after `await lb.ready()` (bench/procs/gateway-loadwise.ts) and
  // runs as a user runs it: no instrumentation. One more row of the default carries the trace
  // (queue, in-flight, pool and accept queue every 200 ms, the accept queue read by an `ss` child
  // process): the cause, not only the tail, kept apart because the trace costs the gateway.
  const balancers = [
    {
      // The cold process, as measured before the product warmed up (docs/bench.md "Cold start").
      ...loadwise(strategy, { warmUp: false }),
      name: `loadwise ${strategy} warm-up off`,
    },
    {
      // The product's default: warm-up (request path and pools) before ready().
      ...loadwise(strategy, {}),
      name: `loadwise ${strategy} (backlog 511)`,
    },
    {
      // The default before 3,000: does the longer warm-up earn its second of startup?
      ...loadwise(strategy, { warmUp: { requests: 300 } }),
      name: `loadwise ${strategy} warm-up 300`,
    },
    {
      // The same with nginx's backlog in this harness (bench/lib/peers.ts: backlog=4096), told to
      // the accept-queue guard as docs/gateway.md deploys it ("Accept queue"). Until 2026-12-03
      // this row and the next left the guard at 511: it shed from 256 queued connections.
      ...loadwise(strategy, { acceptQueue: { backlog: 4096 } }, { backlog: 4096 }),
      name: `loadwise ${strategy} backlog 4096`,
    },
    {
      // And 4 accept handles (multiAccept): the storm accepted 4 connections a turn, not 1.
      ...loadwise(
        strategy,
        { acceptQueue: { backlog: 4096 } },
        { backlog: 4096, acceptHandles: 4 },
      ),
      name: `loadwise ${strategy} backlog 4096, 4 accept handles`,
    },
    {
      ...loadwise(strategy, {}, { traceEveryMs: 200 }),
      name: `loadwise ${strategy} default, traced`,
    },
    nginx('least_conn'),
    // Two workers (runWorkers, the quick start's --workers 2): the cold start's connection storm
    // split over two processes, on a machine where one worker has less than a core to spare.
    // Not in the restart variant, which has its own pool rows.
    ...(restartAtMs === undefined
      ? [{ ...loadwiseWorkers(strategy, 2), name: `loadwise ${strategy}, 2 workers` }]
      : []),
    // The Node baseline: Express + http-proxy-middleware with a keep-alive agent, round robin,
    // no warm-up. Whether a cold tail is this product's or any Node proxy's on the machine.
    // Not in the restart variant: killed in place, it only adds its boot time.
    ...(restartAtMs === undefined ? [expressHpmKeepAlive] : []),
    // The restart variant also restarts as operators do: a rolling reload of a
    // one-worker pool (runWorkers, SIGHUP) and nginx's graceful reload (SIGHUP).
    ...(restartAtMs === undefined
      ? []
      : [
          {
            // Killed and started in place, but listening before lb.ready(): it serves while
            // it warms up instead of refusing (docs/operations.md).
            ...loadwise(strategy, {}, { listenBeforeReady: true }),
            name: `loadwise ${strategy}, listening before ready`,
          },
          { ...loadwiseWorkers(strategy, 1), name: `loadwise ${strategy}, 1 worker, reload` },
          {
            // The replaced worker's clients move over 2 s, not at once (closeListener drainMs).
            ...loadwiseWorkers(strategy, 1, 2_000),
            name: `loadwise ${strategy}, 1 worker, reload, drain 2 s`,
          },
          nginx('least_conn', { reload: true }),
        ]),
  ];
  return [
    {
      name: 'cold-start-identical',
      title: 'Cold start, identical backends',
      description:
        '4 backends of 8 slots x 10 ms (3,200 req/s); the gateway idles 5 s after its start ' +
        '(agents reporting), then 1,400 req/s (44%) open loop at once. Nothing is discarded as warm-up.',
      backends: identical(4, 8, 10),
      maxQueue: 1024,
      agents: true,
      onlyWhenNamed: true,
      cases: [{ label: '1400 req/s', load: load(1400), idleBeforeMs: 5_000, restartAtMs }],
      balancers,
    },
    {
      name: 'cold-start-heterogeneous',
      title: 'Cold start, heterogeneous backends',
      description:
        'Backends of 8 slots x 10/10/20/50 ms (800/800/400/160 req/s, 2,160 in all); the gateway idles ' +
        '5 s after its start (agents reporting), then 970 req/s (45%) open loop at once.',
      backends: slots8(10, 10, 20, 50),
      maxQueue: 1024,
      agents: true,
      onlyWhenNamed: true,
      cases: [{ label: '970 req/s', load: load(970), idleBeforeMs: 5_000, restartAtMs }],
      balancers,
    },
  ];
}

/**
 * CPU-bound backends (docs/bench.md "CPU-bound"): three one-worker backends
 * (bench/procs/cpu-backend.ts), each request 2 ms of CPU time, each backend in
 * its own cgroup of 0.3 core with a 10 ms CFS period: 150 req/s each, 450 for
 * the fleet. `identical`: open-loop Poisson at 290 req/s (65%). `degraded`: a
 * busy-loop neighbour joins b1's cgroup when the warm-up starts and takes
 * about half of its quota under CFS fair share (b1 keeps ~75 req/s, the fleet
 * ~375), at 245 req/s (65%). Needs root and a writable cpu controller (the
 * scenario fails, saying why, without them), so it runs only when named:
 * `cpu-bound` runs both variants, `cpu-bound-identical` and
 * `cpu-bound-degraded` one each.
 */
export function cpuBoundScenarios(
  strategy: string,
  quick: boolean,
  variants: BalancerDef[] = [],
): Scenario[] {
  const CPU_MS = 2;
  const cgroup = { quotaCores: 0.3, periodUs: 10_000 };
  const backends: BackendSpec[] = ['b1', 'b2', 'b3'].map((id) => ({
    id,
    slots: 1,
    serviceMs: CPU_MS,
    cpuMs: CPU_MS,
    cgroup,
  }));
  const load = (rate: number): LoadSpec => ({
    ...open(rate, quick, 20_000),
    warmupMs: quick ? 1_000 : 3_000,
  });
  const identicalCase = { label: 'identical, 290 req/s', load: load(290) };
  const degradedCase = {
    label: 'degraded (neighbour in b1), 245 req/s',
    load: load(245),
    neighbour: { backendId: 'b1' },
  };
  const lw = loadwise(strategy);
  const lwNoCgroup: BalancerDef = {
    ...loadwise(strategy),
    name: `loadwise ${strategy}, agents --no-cgroup`,
    agentArgs: withoutCgroup,
  };
  // Agents without --service-pid report the cgroup's CPU only: the CPU pressure penalty's
  // case. By default it is off; the second row turns it on as it was by default before.
  const lwNoPid: BalancerDef = {
    ...loadwise(strategy),
    name: `loadwise ${strategy}, agents without --service-pid`,
    agentArgs: withoutServicePid,
  };
  const lwNoPidPenalty: BalancerDef = {
    ...loadwise(strategy, { load: { cpuPressurePenalty: 1 } }),
    name: `loadwise ${strategy}, agents without --service-pid, cpuPressurePenalty 1`,
    agentArgs: withoutServicePid,
  };
  const base = {
    description:
      'Three CPU-bound backends with one worker each (bench/procs/cpu-backend.ts): every request burns 2 ms ' +
      'of CPU time, FIFO, 503 beyond 256 waiting. Each backend runs in its own cgroup with a quota of 0.3 ' +
      'core and a 10 ms CFS period (150 req/s each, 450 for the fleet). Agents read the outstanding-requests ' +
      "gauge at /metrics (--prometheus-url, --concurrency-limit 1) and their backend's cgroup. Identical: " +
      "open-loop Poisson at 290 req/s (65%). Degraded: a busy-loop neighbour joins b1's cgroup when the " +
      "warm-up starts (about half its quota: b1 keeps ~75 of the fleet's ~375 req/s), at 245 req/s (65%). " +
      'loadwise runs four times: with its agents as configured, with agents started with --no-cgroup, ' +
      'and with agents started without --service-pid (no process CPU in their reports), by default and ' +
      'with the CPU pressure penalty on (cpuPressurePenalty 1, its default before 2026-12-02).',
    backends,
    maxQueue: 256,
    agents: true,
    onlyWhenNamed: true,
    balancers: [
      nginx('least_conn'),
      haproxy('leastconn'),
      lw,
      lwNoCgroup,
      lwNoPid,
      lwNoPidPenalty,
      ...variants,
    ],
    cpuTargets: { loadwise: lw.name, withoutSignal: lwNoCgroup.name },
  };
  return [
    {
      ...base,
      name: 'cpu-bound',
      title: 'CPU-bound backends under cgroup quotas',
      cases: [identicalCase, degradedCase],
    },
    {
      ...base,
      name: 'cpu-bound-identical',
      title: 'CPU-bound backends under cgroup quotas, identical',
      cases: [identicalCase],
    },
    {
      ...base,
      name: 'cpu-bound-degraded',
      title: 'CPU-bound backends under cgroup quotas, a noisy neighbour in b1',
      cases: [degradedCase],
    },
  ];
}

/** Scenario 7: a separate process publishing `count` agents' reports at 1 Hz. */
function simAgents(count: number) {
  return async (ctx: { brokerUrl: string; prefix: string }) => {
    const proc = forkProc('sim-agents', 'sim-agents.js', {
      brokerUrl: ctx.brokerUrl,
      prefix: ctx.prefix,
      count,
      intervalMs: 1000,
    });
    await proc.waitFor('ready', 30_000);
    return [proc];
  };
}

export type { BalancerDef };
