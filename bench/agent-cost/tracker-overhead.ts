/**
 * CPU cost of trackRequests() per request, measured on the server process:
 * utime + stime (from /proc/<pid>/stat) per completed request for an Express
 * app with no tracker, with a tracker, and with a tracker limiting concurrency
 * (so requests queue). The client is this process, over 32 keep-alive sockets.
 *
 *   node bench/dist/agent-cost/tracker-overhead.js [--requests 20000] [--runs 3]
 */
import { spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { parseArgs } from 'node:util';
import express from 'express';
import { trackRequests } from '@loadwise/health-agent';

const VARIANTS = ['none', 'tracker', 'tracker-limit-4'] as const;
type Variant = (typeof VARIANTS)[number];

function serve(variant: Variant): void {
  const app = express();
  if (variant === 'tracker') app.use(trackRequests({ exposePath: '/stats' }));
  if (variant === 'tracker-limit-4')
    app.use(trackRequests({ concurrencyLimit: 4, exposePath: '/stats' }));
  app.get('/work', (_req, res) => {
    setImmediate(() => res.send('ok'));
  });
  const server = app.listen(0, '127.0.0.1', () => {
    process.stdout.write(`${(server.address() as AddressInfo).port}\n`);
  });
}

function cpuTicks(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return Number(f[11]) + Number(f[12]);
}

async function load(port: number, requests: number, concurrency: number): Promise<void> {
  const agent = new http.Agent({ keepAlive: true, maxSockets: concurrency });
  let sent = 0;
  const worker = async (): Promise<void> => {
    while (sent < requests) {
      sent++;
      await new Promise<void>((resolve, reject) => {
        http
          .get({ host: '127.0.0.1', port, path: '/work', agent }, (res) => {
            res.resume();
            res.on('end', () => resolve());
          })
          .on('error', reject);
      });
    }
  };
  await Promise.all(Array.from({ length: concurrency }, worker));
  agent.destroy();
}

async function measure(variant: Variant, requests: number): Promise<number> {
  const child = spawn(process.execPath, [__filename, '--serve', variant], {
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  const port = await new Promise<number>((resolve) =>
    child.stdout!.once('data', (d: Buffer) => resolve(Number(d.toString().trim()))),
  );
  await load(port, 2000, 32); // warm-up: JIT, sockets
  const before = cpuTicks(child.pid!);
  await load(port, requests, 32);
  const after = cpuTicks(child.pid!);
  child.kill('SIGKILL');
  return (((after - before) / 100) * 1e6) / requests; // µs of server CPU per request
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      serve: { type: 'string' },
      requests: { type: 'string', default: '20000' },
      runs: { type: 'string', default: '3' },
    },
  });
  if (values.serve) return serve(values.serve as Variant);
  const requests = Number(values.requests);
  const results: Record<string, number[]> = {};
  for (let run = 0; run < Number(values.runs); run++) {
    for (const v of VARIANTS) (results[v] ??= []).push(await measure(v, requests));
  }
  const median = (xs: number[]): number =>
    [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
  for (const v of VARIANTS) {
    console.log(
      `${v.padEnd(16)} server CPU per request: median ${median(results[v]!).toFixed(1)} µs (runs: ${results[v]!.map((x) => x.toFixed(1)).join(', ')})`,
    );
  }
}

main().catch((err: unknown) => {
  console.error(err);
  process.exit(1);
});
