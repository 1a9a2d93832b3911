/**
 * Decode (+ verify) throughput of @loadwise/protocol on one core.
 *
 * Scenario: a fleet of `--backends` agents (default 5,000), each sending full
 * metrics reports (~700 bytes, every optional block present) with increasing
 * sequence numbers, decoded as MQTT delivers them (Buffers). Variants:
 *   json-parse-only  JSON.parse of the same payloads: the floor, what a bare
 *                    subscriber pays (docs/architecture.md, rule 6)
 *   decode           topic + size + schema + order checks, unsigned
 *   decode+verify    the same with HMAC-SHA256 verification and the skew window
 * Each variant runs `--reps` times (default 7) over `--rounds` rounds of the
 * fleet; the median messages/s is reported. Single-threaded, so this is one core.
 *
 *   npm run bench:protocol [-- --backends 5000 --rounds 20 --reps 7]
 */
import {
  createDecoder,
  createEncoder,
  type EncodedMessage,
  type MetricsReport,
} from '@loadwise/protocol';
import { cpus } from 'node:os';
import { parseArgs } from 'node:util';

const { values } = parseArgs({
  options: {
    backends: { type: 'string', default: '5000' },
    rounds: { type: 'string', default: '20' },
    reps: { type: 'string', default: '7' },
  },
});
const BACKENDS = Number(values.backends);
const ROUNDS = Number(values.rounds);
const REPS = Number(values.reps);
const key = { keyId: 'bench', secret: Buffer.alloc(32, 11) };

function body(
  i: number,
): Omit<MetricsReport, 'v' | 'kind' | 'backendId' | 'epochMs' | 'seq' | 'ts'> {
  return {
    intervalMs: 1000,
    state: 'online',
    host: {
      cpuUtilization: (i % 100) / 100,
      memoryUtilization: 0.61,
      memoryAvailableBytes: 6442450944,
      loadAverage1m: 1.3,
      cpuCount: 8,
    },
    process: { pid: 1000 + i, cpuCores: 0.35, rssBytes: 104857600 },
    cgroup: {
      cpuLimitCores: 2,
      cpuUtilization: 0.23,
      memoryLimitBytes: 1073741824,
      memoryUsedBytes: 536870912,
      memoryUtilization: 0.5,
    },
    queue: {
      inFlight: i % 17,
      queued: i % 3,
      acceptBacklog: 0,
      openConnections: 40,
      source: {
        inFlight: 'tracker',
        queued: 'tracker',
        acceptBacklog: 'kernel',
        openConnections: 'kernel',
      },
    },
    concurrencyLimit: 16,
    traffic: {
      rps: 250.5,
      errorRate: 0.002,
      latencyMeanMs: 31.2,
      latencyP50Ms: 28,
      latencyP90Ms: 52,
      latencyP99Ms: 120,
      windowMs: 10000,
    },
    health: { verdict: 'up', probeLatencyMs: 2.1, probeStatus: 200 },
  };
}

/** Pre-encodes rounds × backends messages so only decoding is timed. */
function fleet(signed: boolean, epochMs: number): Array<{ topic: string; payload: Buffer }> {
  const encoders = Array.from({ length: BACKENDS }, (_, i) =>
    createEncoder({ backendId: `backend-${i}`, key: signed ? key : undefined, now: () => epochMs }),
  );
  const out: Array<{ topic: string; payload: Buffer }> = [];
  for (let r = 0; r < ROUNDS; r++) {
    for (let i = 0; i < BACKENDS; i++) {
      const m: EncodedMessage = encoders[i]!.metrics(body(i));
      out.push({ topic: m.topic, payload: Buffer.from(m.payload) });
    }
  }
  return out;
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)]!;
}

function measure(
  name: string,
  messages: Array<{ topic: string; payload: Buffer }>,
  run: (m: { topic: string; payload: Buffer }) => boolean,
) {
  const rates: number[] = [];
  for (let rep = 0; rep < REPS + 1; rep++) {
    let ok = 0;
    const t0 = process.hrtime.bigint();
    for (const m of messages) if (run(m)) ok++;
    const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
    if (ok !== messages.length) throw new Error(`${name}: only ${ok}/${messages.length} decoded`);
    if (rep > 0) rates.push(messages.length / seconds); // rep 0 warms up the JIT
  }
  return { name, median: median(rates), min: Math.min(...rates), max: Math.max(...rates) };
}

function main(): void {
  const now = Date.now();
  const plain = fleet(false, now);
  const signed = fleet(true, now);
  const bytes = plain[0]!.payload.length;
  const results = [
    measure('json-parse-only', plain, (m) => JSON.parse(m.payload.toString('utf8')) !== null),
    // A fresh decoder per repetition: replay state would otherwise reject the second pass.
    (() => {
      let dec = createDecoder();
      return measure('decode', plain, (m) => {
        if (m === plain[0]) dec = createDecoder();
        return dec.decode(m.topic, m.payload).ok;
      });
    })(),
    (() => {
      let dec = createDecoder({ keys: [key], now: () => now });
      return measure('decode+verify', signed, (m) => {
        if (m === signed[0]) dec = createDecoder({ keys: [key], now: () => now });
        return dec.decode(m.topic, m.payload).ok;
      });
    })(),
  ];
  const floor = results[0]!.median;
  console.log(`# protocol decode throughput (one core)`);
  console.log(
    `node ${process.version}, ${cpus().length} cores (${cpus()[0]?.model ?? 'unknown'}), ${new Date().toISOString()}`,
  );
  console.log(
    `${BACKENDS} backends x ${ROUNDS} rounds, payload ${bytes} bytes unsigned, median of ${REPS} reps\n`,
  );
  console.log(
    '| variant | median msg/s | min | max | µs/msg | vs JSON.parse | core share for 5,000 agents at 1 Hz |',
  );
  console.log('|---|---|---|---|---|---|---|');
  for (const r of results) {
    console.log(
      `| ${r.name} | ${Math.round(r.median).toLocaleString('en')} | ${Math.round(r.min).toLocaleString('en')} | ${Math.round(r.max).toLocaleString('en')} | ${(1e6 / r.median).toFixed(2)} | ${(floor / r.median).toFixed(2)}x cost | ${((5000 / r.median) * 100).toFixed(1)}% |`,
    );
  }
}

main();
