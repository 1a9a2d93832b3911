/**
 * Does the gateway shed before the kernel drops? A burst of new connections
 * (one request each, `agent: false`, open loop: each request timed from its
 * scheduled send) well above what one gateway process serves, against the
 * bench gateway (bench/procs/gateway-loadwise.ts: Express + loadBalance,
 * `app.listen`, so Node's default listen backlog of 511, below the host's
 * net.core.somaxconn) in front of 4 backends that answer after 2 ms. Per
 * `overload.maxEventLoopDelayMs` setting: the 503 + Retry-After answers
 * (LW_GW_OVERLOADED), the errors (refused, reset, timed out), the p50/p99 of
 * all answers and of the 200s, and TcpExtListenOverflows (`nstat -az`, a host-wide counter)
 * before and after.
 *
 *   npm run bench:burst [-- --rate 6000 --seconds 3 --runs 3 --limits 1000,200,100,50]
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
  shed: number;
  shedWithoutRetryAfter: number;
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
    shedWithoutRetryAfter: 0,
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
            res.resume();
            res.on('end', () => {
              const ms = performance.now() - at;
              r.allMs.push(ms);
              if (res.statusCode === 200) {
                r.ok++;
                r.okMs.push(ms);
              } else if (res.statusCode === 503) {
                r.shed++;
                if (res.headers['retry-after'] === undefined) r.shedWithoutRetryAfter++;
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
  const rate = Number(arg('rate', '6000'));
  const seconds = Number(arg('seconds', '3'));
  const runs = Number(arg('runs', '3'));
  const limits = arg('limits', '1000,200,100,50').split(',').map(Number);
  const somaxconn = readFileSync('/proc/sys/net/core/somaxconn', 'utf8').trim();
  const backends = await forkRole<{
    ports: number[];
    child: import('node:child_process').ChildProcess;
  }>(['backends'], 'ready');
  const rows: string[] = [];
  process.stdout.write(
    `burst: ${rate} new connections/s for ${seconds} s, 4 backends of ${BACKEND_MS} ms; ` +
      `listen backlog 511 (Node default, app.listen), net.core.somaxconn ${somaxconn}\n` +
      '| maxEventLoopDelayMs | run | sent | 200 | 503+Retry-After | errors | p50 all ms | p99 all ms | p99 of 200s ms | ListenOverflows |\n' +
      '|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|\n',
  );
  for (let run = 1; run <= runs; run++) {
    for (const limit of limits) {
      const gw = forkProc('gateway', 'gateway-loadwise.js', {
        options: {
          backends: backends.ports.map((p, i) => ({ id: `b${i}`, url: `http://127.0.0.1:${p}` })),
          healthCheck: false,
          overload: { maxEventLoopDelayMs: limit, sampleIntervalMs: Math.min(500, limit) },
          logger: undefined,
        },
      });
      const { port } = await gw.waitFor<{ port: number }>('ready');
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
        `| ${limit} | ${run} | ${r.sent} | ${r.ok} | ${r.shed - r.shedWithoutRetryAfter} (other status ${r.otherStatus + r.shedWithoutRetryAfter}) | ${errs || '0'} | ` +
        `${pct(r.allMs, 50).toFixed(0)} | ${pct(r.allMs, 99).toFixed(0)} | ${pct(r.okMs, 99).toFixed(0)} | ${after - before} |`;
      rows.push(row);
      process.stdout.write(row + '\n');
      await sleep(1000);
    }
  }
  backends.child.disconnect();
  backends.child.kill();
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
