/**
 * Slow clients against one gateway, on loopback, bounded (about 30 s).
 *
 *   npm run bench:hostile                      # 1,000 slow-body + 1,000 slow-header, then 1,000 normal
 *   npm run bench:hostile -- --server hardened # with the http.Server timeouts docs/gateway.md recommends
 *   npm run bench:hostile -- --slow-body 200 --slow-header 200 --normal 500
 *   # five attacking addresses, 64 slow bodies each, each cut body opened again at once:
 *   npm run bench:hostile -- --server hardened --backends 1 --attackers 5 --slow-body 64 \
 *     --slow-header 0 --trickle-ms 3000 --reopen --normal 150 --normal-spread-ms 30000
 *
 * An attacker at 127.0.0.2 opens `--slow-body` POSTs that announce a 1 MB
 * body and send one byte every 5 s (below any body idle timeout: only a
 * per-client bound stops them), and `--slow-header` connections that send a
 * header line every 5 s and never finish the head. Once they are all open,
 * normal clients at 127.0.0.1 send `--normal` GETs, open loop over 10 s (users
 * do not wait for each other) through 100 keep-alive connections, each with a
 * 10 s deadline from the moment it is issued. Printed: normal
 * requests ok / failed (by status and X-Loadwise-Error code), their latency,
 * what the attacker's requests got, and the gateway's open file descriptors
 * (/proc/<pid>/fd: client sockets, backend sockets, everything) under
 * attack, after the normal load, and 25 s after the attack began.
 *
 * Three backends answer after 10 ms once they have the whole body, like an
 * app behind express.json(). The gateway runs with its default options (see
 * bench/hostile/gateway.ts). Gateway, backends and normal clients each run
 * in a process of their own (this script forks itself for the latter two),
 * so the attackers' sockets, here, do not slow the clients being measured.
 */
import { fork, type ChildProcess } from 'node:child_process';
import { readFileSync, readdirSync } from 'node:fs';
import http from 'node:http';
import { connect, type AddressInfo, type Socket } from 'node:net';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { cpuSeconds } from '../lib/procs';
import type { HostileGatewayConfig } from './gateway';

/** The first attacking address; `--attackers n` uses n of them from here (127.0.0.2-6 for 5). */
const ATTACKER = '127.0.0.2';
const attackerAddress = (i: number): string => `127.0.0.${2 + i}`;
const NORMAL_TIMEOUT_MS = 10_000;
const BACKEND_SERVICE_MS = 10;
const SETTLE_MS = 25_000;

/** The server settings docs/gateway.md recommends ("Slow and hostile clients"). */
export const HARDENED_SERVER = {
  connectionsCheckingInterval: 2_000,
  headersTimeout: 10_000,
  requestTimeout: 60_000,
  keepAliveTimeout: 65_000,
  maxHeadersCount: 100,
};

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

/** The machine's 1-minute load average: on a shared machine, what the figures above are worth. */
function loadAverage(): string {
  try {
    return readFileSync('/proc/loadavg', 'utf8').split(' ')[0]!;
  } catch {
    return '?';
  }
}

function countFds(pid: number): number {
  try {
    return readdirSync(`/proc/${pid}/fd`).length;
  } catch {
    return -1;
  }
}

/** Role `backends`: `count` servers; tells the parent their ports, runs until it goes away. */
async function runBackends(count: number): Promise<void> {
  const ports: number[] = [];
  for (let i = 0; i < count; i++) {
    const server = http.createServer((req, res) => {
      req.resume();
      req.on('end', () => setTimeout(() => res.end('ok'), BACKEND_SERVICE_MS));
    });
    server.keepAliveTimeout = 65_000;
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    ports.push((server.address() as AddressInfo).port);
  }
  process.send?.({ type: 'ready', ports });
  process.on('disconnect', () => process.exit(0));
}

/** Role `normal`: the measured clients; sends their figures to the parent and exits. */
async function runNormal(port: number, count: number, spreadMs: number): Promise<void> {
  const stats = await normalLoad(port, count, spreadMs);
  process.send?.(
    { type: 'done', ok: stats.ok, failed: [...stats.failed], latenciesMs: stats.latenciesMs },
    () => process.exit(0),
  );
}

/** Forks a process (this script in a role, or the gateway) and waits for its first message. */
function forkChild<T>(
  script: string,
  args: string[],
  want: string,
): { child: ChildProcess; first: Promise<T> } {
  const child = fork(join(__dirname, script), args, { stdio: ['ignore', 'ignore', 'pipe', 'ipc'] });
  let stderr = '';
  child.stderr?.on('data', (d: Buffer) => (stderr = (stderr + d.toString()).slice(-4000)));
  const first = new Promise<T>((resolve, reject) => {
    child.once('message', (m: T & { type?: string }) => {
      if (m.type === want) resolve(m);
      else reject(new Error(`${script}: ${JSON.stringify(m)}`));
    });
    child.once('exit', (code) => reject(new Error(`${script} exited (${code})\n${stderr}`)));
  });
  return { child, first };
}

interface AttackStats {
  opened: number;
  connectErrors: number;
  /** First status line the attacker got back, counted by status code ("none" if nothing). */
  answers: Map<string, number>;
  closedByGateway: number;
  /** Connections opened again after the gateway cut one (`--reopen`). */
  reopened: number;
}

interface AttackPlan {
  /** From this address. */
  from: string;
  trickleMs: number;
  /** Open a new one as soon as one the gateway had accepted is closed, while this says so. */
  reopen?: () => boolean;
}

function attack(
  port: number,
  count: number,
  kind: 'body' | 'header',
  sockets: Socket[],
  stats: AttackStats,
  plan: AttackPlan,
): Promise<void> {
  return new Promise((resolve) => {
    let pending = count;
    if (count === 0) return resolve();
    const settle = (): void => {
      if (--pending === 0) resolve();
    };
    let opened = 0;
    const openBatch = (): void => {
      // Batches of 100 per 20 ms: a burst of thousands of SYNs at once would
      // overflow the accept backlog and measure the kernel, not the gateway.
      for (let i = 0; i < 100 && opened < count; i++, opened++) openOne(false);
      if (opened < count) setTimeout(openBatch, 20);
    };
    function openOne(again: boolean): void {
      let connected = false;
      {
        const s = connect({ port, host: '127.0.0.1', localAddress: plan.from });
        if (again) stats.reopened++;
        sockets.push(s);
        let answered = false;
        let settled = false;
        const once = (): void => {
          if (!settled) {
            settled = true;
            settle();
          }
        };
        s.on('connect', () => {
          connected = true;
          stats.opened++;
          s.write(
            kind === 'body'
              ? 'POST /upload HTTP/1.1\r\nHost: gw\r\nContent-Type: application/octet-stream\r\nContent-Length: 1000000\r\n\r\nx'
              : 'GET /page HTTP/1.1\r\nHost: gw\r\n',
          );
          once();
          let n = 0;
          const timer = setInterval(() => {
            if (s.destroyed || !s.writable) return clearInterval(timer);
            s.write(kind === 'body' ? 'x' : `X-Pad-${n++}: y\r\n`);
          }, plan.trickleMs);
          s.once('close', () => clearInterval(timer));
        });
        s.once('close', () => {
          if (connected && plan.reopen?.()) openOne(true);
        });
        s.on('data', (d: Buffer) => {
          if (answered) return;
          answered = true;
          const status = /^HTTP\/1\.[01] (\d{3})/.exec(d.toString('latin1'))?.[1] ?? 'other';
          stats.answers.set(status, (stats.answers.get(status) ?? 0) + 1);
        });
        s.on('end', () => stats.closedByGateway++);
        s.on('error', () => {
          if (!s.readyState || s.connecting) stats.connectErrors++;
          once();
        });
      }
    }
    openBatch();
  });
}

interface NormalStats {
  ok: number;
  failed: Map<string, number>;
  latenciesMs: number[];
}

async function normalLoad(port: number, count: number, spreadMs: number): Promise<NormalStats> {
  // 100 connections, reused: a thousand fresh handshakes at once measure the
  // loopback and a busy machine, not the gateway.
  const agent = new http.Agent({ keepAlive: true, maxSockets: 100 });
  const stats: NormalStats = { ok: 0, failed: new Map(), latenciesMs: [] };
  const fail = (why: string): void => void stats.failed.set(why, (stats.failed.get(why) ?? 0) + 1);
  const one = (): Promise<void> =>
    new Promise((resolve) => {
      const start = performance.now();
      const req = http.get({ host: '127.0.0.1', port, path: '/api/item', agent }, (res) => {
        res.resume();
        res.on('end', () => {
          clearTimeout(deadline);
          stats.latenciesMs.push(performance.now() - start);
          if (res.statusCode === 200) stats.ok++;
          else fail(`${res.statusCode} ${res.headers['x-loadwise-error'] ?? ''}`.trim());
          resolve();
        });
      });
      // A deadline from the moment the user asks, queueing in the pool included.
      const deadline = setTimeout(
        () => req.destroy(new Error('client timeout')),
        NORMAL_TIMEOUT_MS,
      );
      req.on('error', (err) => {
        clearTimeout(deadline);
        stats.latenciesMs.push(performance.now() - start);
        fail(err.message === 'client timeout' ? 'timeout (10 s)' : `error ${err.message}`);
        resolve();
      });
    });
  const all: Promise<void>[] = [];
  for (let i = 0; i < count; i++) {
    all.push(one());
    await sleep(spreadMs / count);
  }
  await Promise.all(all);
  agent.destroy();
  return stats;
}

function pct(sorted: number[], p: number): number {
  if (sorted.length === 0) return 0;
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))]!;
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      role: { type: 'string', default: 'main' },
      port: { type: 'string', default: '0' },
      'slow-body': { type: 'string', default: '1000' },
      'slow-header': { type: 'string', default: '1000' },
      normal: { type: 'string', default: '1000' },
      server: { type: 'string', default: 'default' },
      options: { type: 'string', default: '{}' },
      backends: { type: 'string', default: '3' },
      attackers: { type: 'string', default: '1' },
      'trickle-ms': { type: 'string', default: '5000' },
      reopen: { type: 'boolean', default: false },
      'normal-spread-ms': { type: 'string', default: '10000' },
    },
  });
  const attackers = Number(values.attackers);
  const trickleMs = Number(values['trickle-ms']);
  const spreadMs = Number(values['normal-spread-ms']);
  const slowBody = Number(values['slow-body']);
  const slowHeader = Number(values['slow-header']);
  const normal = Number(values.normal);
  if (values.role === 'backends') return runBackends(Number(values.backends));
  if (values.role === 'normal') return runNormal(Number(values.port), normal, spreadMs);
  const script = 'slow-clients.js';
  const backendsProc = forkChild<{ ports: number[] }>(
    script,
    ['--role', 'backends', '--backends', values.backends],
    'ready',
  );
  const { ports } = await backendsProc.first;
  const cfg: HostileGatewayConfig = {
    options: {
      backends: ports.map((p, i) => ({ id: `b${i + 1}`, url: `http://127.0.0.1:${p}` })),
      ...(JSON.parse(values.options) as object),
    },
    server: values.server === 'hardened' ? HARDENED_SERVER : undefined,
  };
  const gateway = forkChild<{ port: number }>('gateway.js', [JSON.stringify(cfg)], 'ready');
  const child = gateway.child;
  const { port } = await gateway.first;
  const pid = child.pid ?? -1;
  let crashed = false;
  child.once('exit', () => (crashed = true));
  let maxFds = countFds(pid);
  const sampler = setInterval(() => (maxFds = Math.max(maxFds, countFds(pid))), 250);
  const fdsIdle = countFds(pid);
  const cpuStart = cpuSeconds(pid);

  const sockets: Socket[] = [];
  const bodyStats: AttackStats = {
    opened: 0,
    connectErrors: 0,
    answers: new Map(),
    closedByGateway: 0,
    reopened: 0,
  };
  const headerStats: AttackStats = { ...bodyStats, answers: new Map() };
  const t0 = Date.now();
  let attacking = true;
  const reopen = values.reopen ? (): boolean => attacking : undefined;
  await Promise.all([
    ...Array.from({ length: attackers }, (_, i) =>
      attack(port, slowBody, 'body', sockets, bodyStats, {
        from: attackerAddress(i),
        trickleMs,
        reopen,
      }),
    ),
    attack(port, slowHeader, 'header', sockets, headerStats, { from: ATTACKER, trickleMs }),
  ]);
  await sleep(1_000);
  const fdsUnderAttack = countFds(pid);
  const normalProc = forkChild<{ ok: number; failed: [string, number][]; latenciesMs: number[] }>(
    script,
    [
      '--role',
      'normal',
      '--port',
      String(port),
      '--normal',
      String(normal),
      '--normal-spread-ms',
      String(spreadMs),
    ],
    'done',
  );
  const done = await normalProc.first;
  attacking = false;
  const normalStats: NormalStats = { ...done, failed: new Map(done.failed) };
  const fdsAfterNormal = countFds(pid);
  // Attackers keep trickling: what the gateway still holds 25 s in (after a
  // 10 s headersTimeout, checked every 2 s, in the hardened server).
  await sleep(Math.max(0, t0 + SETTLE_MS - Date.now()));
  const fdsLate = countFds(pid);
  const elapsedS = (Date.now() - t0) / 1000;
  const cpuS = cpuSeconds(pid) - cpuStart;
  clearInterval(sampler);

  const lat = normalStats.latenciesMs.sort((a, b) => a - b);
  const answers = (m: Map<string, number>): string =>
    [...m].map(([k, v]) => `${k}: ${v}`).join(', ') || 'none';
  const from = attackers === 1 ? ATTACKER : `${ATTACKER}-${2 + attackers - 1}`;
  console.log(`slow clients: ${slowBody} slow-body${attackers > 1 ? ` from each of ${attackers} addresses` : ''} (a byte every ${trickleMs} ms${values.reopen ? ', each cut one opened again at once' : ''}) + ${slowHeader} slow-header from ${from}, then ${normal} normal GETs from 127.0.0.1 over ${spreadMs / 1000} s, ${values.backends} backend(s)
  gateway options: ${values.options}, server: ${values.server}${crashed ? '  ** GATEWAY CRASHED **' : ''}
  normal: ok ${normalStats.ok}, failed ${normal - normalStats.ok} (${answers(normalStats.failed)}); latency p50 ${pct(lat, 50).toFixed(0)} ms, p99 ${pct(lat, 99).toFixed(0)} ms, max ${pct(lat, 100).toFixed(0)} ms
  slow-body: opened ${bodyStats.opened}/${slowBody * attackers} (${bodyStats.reopened} of them again after a cut), answered (${answers(bodyStats.answers)}), closed by the gateway ${bodyStats.closedByGateway}
  slow-header: opened ${headerStats.opened}/${slowHeader}, answered (${answers(headerStats.answers)}), closed by the gateway ${headerStats.closedByGateway}
  gateway fds: idle ${fdsIdle}, under attack ${fdsUnderAttack}, after the normal load ${fdsAfterNormal}, 25 s in ${fdsLate}, max ${maxFds}; run ${elapsedS.toFixed(1)} s, gateway CPU ${cpuS.toFixed(1)} s; load average ${loadAverage()}`);

  for (const s of sockets) s.destroy();
  child.kill('SIGTERM');
  await new Promise<void>((r) => (child.exitCode !== null ? r() : child.once('exit', () => r())));
  backendsProc.child.kill('SIGTERM');
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
