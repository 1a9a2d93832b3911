/**
 * Does the gateway shed before the kernel drops? A burst of new connections
 * (one request each, `agent: false`, open loop: each request timed from its
 * scheduled send) well above what one gateway process serves, against the
 * bench gateway (bench/procs/gateway-loadwise.ts: Express + loadBalance,
 * listening with `--backlog`, 511 by default as Node's `app.listen`, capped by
 * the host's net.core.somaxconn) in front of 4 backends that answer after 2 ms.
 * Per configuration (the accept-queue signal on or off, `acceptQueue` with the
 * same backlog, × each `overload.maxEventLoopDelayMs`), interleaved in each run:
 * the requests shed (503 LW_GW_OVERLOADED with Retry-After), other answers, the
 * errors (refused, reset, timed out), the p50/p99 of all answers and of the
 * 200s, and TcpExtListenOverflows (`nstat -az`, a host-wide counter) before
 * and after.
 *
 *   npm run bench:burst [-- --rate 2000 --seconds 2 --runs 3 --signal on,off --limits 500 --backlog 511
 *                          --accept-queue '{"shedAt":0.75}']
 */
import { fork } from 'node:child_process';
import { listenOverflows } from '../lib/engine';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { readFileSync } from 'node:fs';
import { forkProc, sleep } from '../lib/procs';

const BACKENDS = 4;
const BACKEND_MS = 2;

async function runBackends(): Promise<void> {
  const ports: number[] = [];
  for (let i = 0; i < BACKENDS; i++) {
    const server = http.createServer((req, res) => {
      req.resume();
      req.on('end', () => setTimeout(() => res.end('ok'), BACKEND_MS));
    });
    server.keepAliveTimeout = 65_000;
    await new Promise<void>((r) => server.listen({ port: 0, host: '127.0.0.1', backlog: 4096 }, r));
    ports.push((server.address() as AddressInfo).port);
  }
  process.send?.({ type: 'ready', ports });
  process.on('disconnect', () => process.exit(0));
}

interface BurstResult {
  type: 'done';
  sent: number;
  ok: number;
  /** 503 LW_GW_OVERLOADED with Retry-After: the gateway shed it. */
  shed: number;
  /** Any other answer (a 503 without the code or Retry-After included). */
  otherStatus: number;
  errors: Record<string, number>;
  allMs: number[];
  okMs: number[];
}

/** Role `burst`: `rate` new connections a second for `seconds`, one request each. */
async function runBurst(port: number, rate: number, seconds: number): Promise<void> {
  const r: BurstResult = {
    type: 'done',
    sent: 0,
    ok: 0,
    shed: 0,
    otherStatus: 0,
    errors: {},
    allMs: [],
    okMs: [],
  };
  const total = Math.round(rate * seconds);
  const t0 = performance.now();
  let pending = 0;
  let scheduled = 0;
  await new Promise<void>((resolve) => {
    const tick = (): void => {
      const now = performance.now();
      const due = Math.min(total, Math.floor(((now - t0) / 1000) * rate));
      while (scheduled < due) {
        const at = t0 + (scheduled * 1000) / rate;
        scheduled++;
        pending++;
        r.sent++;
        const req = http.get(
          { host: '127.0.0.1', port, path: '/', agent: false, timeout: 10_000 },
          (res) => {
            let body = '';
            if (res.statusCode === 503) res.on('data', (d: Buffer) => (body += d.toString()));
            else res.resume();
            res.on('end', () => {
              const ms = performance.now() - at;
              r.allMs.push(ms);
              if (res.statusCode === 200) {
                r.ok++;
                r.okMs.push(ms);
              } else if (
                res.statusCode === 503 &&
                res.headers['retry-after'] !== undefined &&
                body.includes('LW_GW_OVERLOADED')
              ) {
                r.shed++;
              } else r.otherStatus++;
              done();
            });
          },
        );
        req.on('timeout', () =>
          req.destroy(Object.assign(new Error('timeout'), { code: 'TIMEOUT' })),
        );
        req.on('error', (e: Error & { code?: string }) => {
          const k = e.code ?? e.message;
          r.errors[k] = (r.errors[k] ?? 0) + 1;
          done();
        });
      }
      if (scheduled < total) setTimeout(tick, 1);
    };
    const done = (): void => {
      pending--;
      if (pending === 0 && scheduled >= total) resolve();
    };
    tick();
  });
  process.send?.(r, () => process.exit(0));
}

function forkRole<T>(args: string[], want: string, timeoutMs = 60_000): Promise<T> {
  const child = fork(__filename, args, { stdio: ['ignore', 'ignore', 'inherit', 'ipc'] });
  return new Promise<T>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`${args[0]}: no ${want}`)), timeoutMs);
    child.once('message', (m: T & { type?: string }) => {
      clearTimeout(timer);
      if (m.type === want) resolve(Object.assign(m, { child }));
      else reject(new Error(JSON.stringify(m)));
    });
  });
}

const pct = (xs: number[], p: number): number => {
  if (xs.length === 0) return NaN;
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))]!;
};

function arg(name: string, fallback: string): string {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 ? process.argv[i + 1]! : fallback;
}

async function main(): Promise<void> {
  const rate = Number(arg('rate', '2000'));
  const seconds = Number(arg('seconds', '2'));
  const runs = Number(arg('runs', '3'));
  const limits = arg('limits', '500').split(',').map(Number);
  const signals = arg('signal', 'on,off').split(',');
  const backlog = Number(arg('backlog', '511'));
  /** Extra acceptQueue options for the signal-on runs, as JSON (e.g. '{"shedAt":0.5}'). */
  const acceptQueueExtra = JSON.parse(arg('accept-queue', '{}')) as Record<string, unknown>;
  if (signals.some((x) => x !== 'on' && x !== 'off'))
    throw new Error('--signal: on, off or on,off');
  const somaxconn = readFileSync('/proc/sys/net/core/somaxconn', 'utf8').trim();
  const backends = await forkRole<{
    ports: number[];
    child: import('node:child_process').ChildProcess;
  }>(['backends'], 'ready');
  process.stdout.write(
    `burst: ${rate} new connections/s for ${seconds} s, 4 backends of ${BACKEND_MS} ms; ` +
      `net.core.somaxconn ${somaxconn}; accept-queue signal on: acceptQueue ${JSON.stringify({ backlog, ...acceptQueueExtra })} (other keys default)\n` +
      '| accept-queue signal | maxEventLoopDelayMs | listen backlog | run | sent | 200 | shed (503 LW_GW_OVERLOADED) | other status | errors | p50 all ms | p99 all ms | p99 of 200s ms | ListenOverflows |\n' +
      '|---|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|\n',
  );
  for (let run = 1; run <= runs; run++) {
    for (const signal of signals) {
      for (const limit of limits) {
        await burstOnce(run, signal === 'on', limit);
      }
    }
  }
  backends.child.disconnect();
  backends.child.kill();

  async function burstOnce(run: number, signal: boolean, limit: number): Promise<void> {
    const gw = forkProc('gateway', 'gateway-loadwise.js', {
      options: {
        backends: backends.ports.map((p, i) => ({ id: `b${i}`, url: `http://127.0.0.1:${p}` })),
        healthCheck: false,
        overload: { maxEventLoopDelayMs: limit, sampleIntervalMs: Math.min(500, limit) },
        acceptQueue: signal ? { backlog } : false,
        logger: undefined,
      },
      backlog,
    });
    const ready = await gw.waitFor<{ port: number; backlog: number }>('ready');
    const { port } = ready;
    await sleep(500);
    const before = listenOverflows();
    const r = await forkRole<BurstResult>(
      ['burst', String(port), String(rate), String(seconds)],
      'done',
      120_000,
    );
    const after = listenOverflows();
    await gw.stop();
    const errs = Object.entries(r.errors)
      .map(([k, v]) => `${k} ${v}`)
      .join(', ');
    const row =
      `| ${signal ? 'on' : 'off'} | ${limit} | ${ready.backlog} | ${run} | ${r.sent} | ${r.ok} | ${r.shed} | ${r.otherStatus} | ${errs || '0'} | ` +
      `${pct(r.allMs, 50).toFixed(0)} | ${pct(r.allMs, 99).toFixed(0)} | ${pct(r.okMs, 99).toFixed(0)} | ${after - before} |`;
    process.stdout.write(row + '\n');
    await sleep(1000);
  }
}

const role = process.argv[2];
if (role === 'backends') void runBackends();
else if (role === 'burst')
  void runBurst(Number(process.argv[3]), Number(process.argv[4]), Number(process.argv[5]));
else if (require.main === module)
  void main().catch((e: unknown) => {
    console.error(e);
    process.exit(1);
  });
