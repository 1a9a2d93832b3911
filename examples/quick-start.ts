/**
 * loadwise quick start (`npm start`): an embedded MQTT broker, three backends
 * of different capacity each with its own health agent (the real CLI, as child
 * processes), and a gateway that routes by their reported load.
 *
 *   npm start                      # gateway on :8080, prints where to send requests
 *   npm start -- --load            # also drives load and prints routing once a second
 *   npm start -- --port 9090 --load --rate 600
 *
 * Ctrl-C stops everything: load, gateway, agents, backends, broker.
 */
import { parseArgs } from 'node:util';
import { startEmbeddedBroker } from '@loadwise/gateway-plugin';
import {
  startAgentProcess,
  startBackendProcess,
  type ManagedChild,
  type StartedBackend,
} from './lib/processes';
import { startReportMonitor, type ReportMonitor } from './lib/report-monitor';

/** Three backends as in docs/DESIGN.md's measurement: 800, 800 and 200 req/s. */
const FLEET = [
  { id: 'b1', slots: 8, serviceMs: 10 },
  { id: 'b2', slots: 8, serviceMs: 10 },
  { id: 'b3', slots: 4, serviceMs: 20 },
] as const;
const TOPIC_PREFIX = 'loadwise';

interface Args {
  port: number;
  load: boolean;
  ratePerSec: number;
  intervalMs: number;
}

function parse(): Args {
  const { values } = parseArgs({
    options: {
      port: { type: 'string', default: '8080' },
      load: { type: 'boolean', default: false },
      rate: { type: 'string', default: '400' },
      'interval-ms': { type: 'string', default: '1000' },
      help: { type: 'boolean', short: 'h', default: false },
    },
    strict: true,
  });
  if (values.help) {
    process.stdout.write(
      [
        'Usage: npm start -- [--port 8080] [--load] [--rate 400] [--interval-ms 1000]',
        '  --port         gateway port (0: any free port)',
        '  --load         drive load through the gateway and print routing once a second',
        '  --rate         load in requests per second (1..2000)',
        '  --interval-ms  how often each agent reports',
        '',
      ].join('\n'),
    );
    process.exit(0);
  }
  const int = (name: string, text: string, min: number, max: number): number => {
    const n = Number(text);
    if (!Number.isInteger(n) || n < min || n > max) {
      process.stderr.write(`quick-start: --${name} must be an integer ${min}..${max}\n`);
      process.exit(2);
    }
    return n;
  };
  return {
    port: int('port', values.port, 0, 65535),
    load: values.load,
    ratePerSec: int('rate', values.rate, 1, 2000),
    intervalMs: int('interval-ms', values['interval-ms'], 100, 60_000),
  };
}

function pct(x: number | undefined): string {
  return x === undefined ? '   -' : `${Math.round(x * 100)}%`.padStart(4);
}

async function main(): Promise<void> {
  const args = parse();
  const children: ManagedChild[] = [];
  const cleanups: (() => Promise<void> | void)[] = [];
  let stopping = false;
  const stop = async (code: number): Promise<void> => {
    if (stopping) return;
    stopping = true;
    // Newest first: load, gateway, then agents and backends, then the broker.
    for (const c of cleanups.reverse()) {
      try {
        await c();
      } catch (err) {
        process.stderr.write(`quick-start: cleanup: ${(err as Error).message}\n`);
      }
    }
    process.exit(code);
  };
  process.on('SIGINT', () => {
    if (stopping) {
      for (const c of children) c.signal('SIGKILL');
      process.exit(130);
    }
    process.stdout.write('\nstopping...\n');
    void stop(0);
  });
  process.on('SIGTERM', () => void stop(0));

  const broker = await startEmbeddedBroker();
  cleanups.push(() => broker.close());
  process.stdout.write(`embedded MQTT broker on ${broker.url}\n`);

  const backends: StartedBackend[] = await Promise.all(
    FLEET.map((spec) => startBackendProcess(spec)),
  );
  for (const b of backends) children.push(b.process);
  const agents = backends.map((b) =>
    startAgentProcess({
      backendId: b.id,
      brokerUrl: broker.url,
      prefix: TOPIC_PREFIX,
      backendPort: b.port,
      servicePid: b.process.pid,
      intervalMs: args.intervalMs,
      drainGraceMs: 200,
    }),
  );
  children.push(...agents);
  cleanups.push(async () => {
    await Promise.all(agents.map((a) => a.stop('SIGTERM')));
    await Promise.all(backends.map((b) => b.process.stop('SIGTERM')));
  });
  for (const [i, b] of backends.entries()) {
    const spec = FLEET[i]!;
    process.stdout.write(
      `backend ${b.id} on ${b.url}: ${spec.slots} slots x ${spec.serviceMs} ms = ${(spec.slots * 1000) / spec.serviceMs} req/s, agent pid ${agents[i]!.pid}\n`,
    );
  }

  const monitor: ReportMonitor = await startReportMonitor(broker.url, TOPIC_PREFIX);
  cleanups.push(() => monitor.close());
  await monitor.waitForReports(
    backends.map((b) => b.id),
    1,
    15_000,
  );
  process.stdout.write('every agent is reporting; live reports once a second (Ctrl-C to stop):\n');

  const timer = setInterval(() => {
    const now = Date.now();
    const cells = backends.map((b) => {
      const r = monitor.backends.get(b.id);
      const m = r?.metrics;
      const age =
        r?.metricsAtMs === undefined ? '-' : `${((now - r.metricsAtMs) / 1000).toFixed(1)}s`;
      return `${b.id} cpu ${pct(m?.host.cpuUtilization)} in-flight ${m?.queue?.inFlight ?? '-'} queued ${m?.queue?.queued ?? '-'} (${r?.state ?? '?'}, ${age} old)`;
    });
    process.stdout.write(`${cells.join(' | ')}\n`);
  }, 1000);
  cleanups.push(() => clearInterval(timer));
  if (args.load) {
    process.stdout.write('--load needs the gateway, which this build does not include yet\n');
  }
}

main().catch((err: unknown) => {
  process.stderr.write(`quick-start: ${(err as Error).stack ?? String(err)}\n`);
  process.exit(1);
});
