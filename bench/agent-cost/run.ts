/**
 * The health agent's own cost at 1 sample/s: CPU (utime + stime from
 * /proc/<pid>/stat) and RSS (VmRSS from /proc/<pid>/status) of the real
 * `loadwise-agent` CLI, publishing to an embedded broker, reading a real
 * tracker endpoint, probing a health URL and watching a process.
 *
 *   npm run bench:agent -- [--duration-s 60] [--runs 3] [--warmup-s 5] [--variants proc,systeminformation,proc-cron]
 *   npm run bench:agent -- --variants proc,early-off,early-max,early-max-100 --out bench/agent-cost/early-results.json
 *
 * Each run starts one agent per variant at the same time (they measure
 * only their own process, so running them side by side halves the wall time),
 * and the figures are the medians over the runs. Results go to stdout and to
 * bench/agent-cost/results.json.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import { parseArgs } from 'node:util';
import express from 'express';
import { connect } from 'mqtt';
import { startEmbeddedBroker } from '@loadwise/gateway-plugin';
import { trackRequests } from '@loadwise/health-agent';

const ROOT = path.resolve(__dirname, '../../..');
const CLI = path.join(ROOT, 'packages/health-agent/dist/cli.js');
const CLOCK_TICKS_PER_S = 100;
const STATS_PATH = '/.well-known/loadwise/stats';

/** What each measured agent runs with, on top of the common flags. */
const VARIANTS: Record<string, string[]> = {
  // the default: /proc readers, interval timer
  proc: ['--host-source', 'proc'],
  // the named library for host CPU/memory
  systeminformation: ['--host-source', 'systeminformation'],
  // the same 1 Hz schedule through node-cron instead of the interval timer
  'proc-cron': ['--host-source', 'proc', '--cron', '* * * * * *'],
  // early reports off: the scheduled reports alone
  'early-off': ['--host-source', 'proc', '--early-rise', '0'],
  // early reports at their most frequent: the backend's outstanding goes 0 -> 1 on every
  // request (one each 20 ms), so a rise of 1 fires as often as the default 300 ms gap allows
  'early-max': ['--host-source', 'proc', '--early-rise', '1'],
  // the same with a 100 ms gap (up to 10 early reports a second)
  'early-max-100': ['--host-source', 'proc', '--early-rise', '1', '--early-min-gap-ms', '100'],
};

interface Reading {
  cpuTicks: number;
  rssBytes: number;
}

function read(pid: number): Reading {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  const status = readFileSync(`/proc/${pid}/status`, 'utf8');
  const rss = /^VmRSS:\s+(\d+)/m.exec(status);
  // utime + stime + cutime + cstime: children the agent waited for (systeminformation's
  // execSync of `cat /proc/stat | grep cpu`) are part of its cost.
  return {
    cpuTicks: Number(f[11]) + Number(f[12]) + Number(f[13]) + Number(f[14]),
    rssBytes: Number(rss?.[1] ?? 0) * 1024,
  };
}

const median = (xs: number[]): number => {
  const s = [...xs].sort((a, b) => a - b);
  const m = Math.floor(s.length / 2);
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
};
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

interface RunResult {
  /** The variant name. */
  source: string;
  cpuPercentOfOneCore: number;
  rssMaxMB: number;
  rssEndMB: number;
  messages: number;
  durationS: number;
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      'duration-s': { type: 'string', default: '60' },
      'warmup-s': { type: 'string', default: '5' },
      runs: { type: 'string', default: '3' },
      variants: { type: 'string', default: 'proc,systeminformation,proc-cron' },
      out: { type: 'string', default: 'bench/agent-cost/results.json' },
    },
  });
  const durationS = Number(values['duration-s']);
  const warmupS = Number(values['warmup-s']);
  const runs = Number(values.runs);
  const sources = values.variants!.split(',');
  for (const v of sources)
    if (!VARIANTS[v])
      throw new Error(`unknown variant ${v}; one of ${Object.keys(VARIANTS).join(', ')}`);

  // The backend the agent watches: a tracked Express app with light, steady traffic.
  const tracker = trackRequests({
    concurrencyLimit: 8,
    exposePath: STATS_PATH,
    bypassPaths: ['/healthz'],
  });
  const app = express();
  app.use(tracker);
  app.get('/healthz', (_req, res) => {
    res.send('ok');
  });
  app.get('/work', (_req, res) => {
    setTimeout(() => res.send('done'), 5);
  });
  const server = app.listen(0, '127.0.0.1');
  await new Promise((r) => server.once('listening', r));
  const backendUrl = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  const traffic = setInterval(
    () => http.get(`${backendUrl}/work`, (r) => r.resume()).on('error', () => undefined),
    20,
  );

  const broker = await startEmbeddedBroker();
  const counts = new Map<string, number>();
  const sub = connect(broker.url, { reconnectPeriod: 0 });
  await new Promise((r) => sub.once('connect', r));
  await sub.subscribeAsync('bench-agent/v1/backends/+/metrics');
  sub.on('message', (topic) => {
    const id = topic.split('/')[3]!;
    counts.set(id, (counts.get(id) ?? 0) + 1);
  });

  const results: RunResult[] = [];
  for (let run = 1; run <= runs; run++) {
    const children: Array<{ source: string; child: ChildProcess; id: string }> = sources.map(
      (source) => {
        const id = `${source}-${run}`;
        const child = spawn(
          process.execPath,
          [
            CLI,
            '--backend-id',
            id,
            '--broker',
            broker.url,
            '--prefix',
            'bench-agent',
            '--interval-ms',
            '1000',
            ...VARIANTS[source]!,
            '--tracker-url',
            `${backendUrl}${STATS_PATH}`,
            '--probe-url',
            `${backendUrl}/healthz`,
            '--service-pid',
            String(process.pid),
            '--drain-grace-ms',
            '0',
            '--log-level',
            'warn',
          ],
          { stdio: ['ignore', 'ignore', 'inherit'] },
        );
        return { source, child, id };
      },
    );
    await sleep(warmupS * 1000);
    const start = children.map((c) => ({
      ...read(c.child.pid!),
      msgs: counts.get(c.id) ?? 0,
      at: performance.now(),
    }));
    const rssMax = children.map(() => 0);
    for (let s = 0; s < durationS; s++) {
      await sleep(1000);
      children.forEach((c, i) => (rssMax[i] = Math.max(rssMax[i]!, read(c.child.pid!).rssBytes)));
    }
    children.forEach((c, i) => {
      const end = read(c.child.pid!);
      const elapsedS = (performance.now() - start[i]!.at) / 1000;
      const r: RunResult = {
        source: c.source,
        cpuPercentOfOneCore:
          ((end.cpuTicks - start[i]!.cpuTicks) / CLOCK_TICKS_PER_S / elapsedS) * 100,
        rssMaxMB: rssMax[i]! / 2 ** 20,
        rssEndMB: end.rssBytes / 2 ** 20,
        messages: (counts.get(c.id) ?? 0) - start[i]!.msgs,
        durationS: elapsedS,
      };
      results.push(r);
      console.log(
        `run ${run} ${r.source.padEnd(17)} cpu ${r.cpuPercentOfOneCore.toFixed(2)}% of a core, rss max ${r.rssMaxMB.toFixed(1)} MB, ${r.messages} reports in ${r.durationS.toFixed(1)} s`,
      );
    });
    await Promise.all(
      children.map(
        (c) =>
          new Promise((r) => {
            c.child.once('exit', r);
            c.child.kill('SIGTERM');
          }),
      ),
    );
  }

  const summary = sources.map((source) => {
    const rs = results.filter((r) => r.source === source);
    return {
      source,
      runs: rs.length,
      durationS,
      cpuPercentOfOneCoreMedian: Number(median(rs.map((r) => r.cpuPercentOfOneCore)).toFixed(2)),
      rssMaxMBMedian: Number(median(rs.map((r) => r.rssMaxMB)).toFixed(1)),
      reportsPerSecondMedian: Number(median(rs.map((r) => r.messages / r.durationS)).toFixed(2)),
    };
  });
  console.log('\nmedians:');
  console.table(summary);
  writeFileSync(
    path.resolve(ROOT, values.out!),
    `${JSON.stringify({ measuredAt: new Date().toISOString(), node: process.version, cpus: (await import('node:os')).cpus().length, summary, results }, null, 2)}\n`,
  );

  clearInterval(traffic);
  tracker.close();
  server.closeAllConnections();
  server.close();
  await sub.endAsync();
  await broker.close();
}

main().catch((err: unknown) => {
  console.error(err);
  process.exit(1);
});
