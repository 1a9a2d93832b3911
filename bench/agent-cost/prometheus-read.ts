/**
 * What one read of the agent's `--prometheus-url` queue source costs
 * (packages/health-agent/src/queue/prometheus-source.ts): the agent's CPU
 * (user + system, `process.cpuUsage`) per read of a page of `--mib` MiB each,
 * served by a real HTTP server in another process, the gauge on its last line
 * behind ordinary histogram lines (routes x statuses x buckets, as an app's
 * /metrics grows). The source reads the whole page every interval (1 s by
 * default), so its cost is the agent's budget's main risk.
 *
 *   npm run bench:agent-prometheus-read [-- --mib 0.1,1,4,16 --reads 20]
 */
import { fork } from 'node:child_process';
import http from 'node:http';
import type { AddressInfo, Server } from 'node:net';
import { prometheusSource } from '@loadwise/health-agent/internals';

function arg(name: string, fallback: string): string {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 ? process.argv[i + 1]! : fallback;
}

/** The child: serves /<mib> as a page of that many MiB, and prints its port. */
function serve(): void {
  const pages = new Map<string, Buffer>();
  const page = (mib: number): Buffer => {
    const lines: string[] = [];
    let bytes = 0;
    for (let i = 0; bytes < mib * 1024 * 1024; i++) {
      const line = `http_request_duration_seconds_bucket{route="/api/r${i % 200}",status="${200 + (i % 5)}",le="${i % 12}"} ${i}\n`;
      lines.push(line);
      bytes += line.length;
    }
    lines.push('app_queue_depth 3\n');
    return Buffer.from(lines.join(''));
  };
  http
    .createServer((req, res) => {
      const key = (req.url ?? '/').slice(1);
      let body = pages.get(key);
      if (!body) pages.set(key, (body = page(Number(key))));
      res.writeHead(200, { 'content-type': 'text/plain; version=0.0.4' });
      res.end(body);
    })
    .listen(0, '127.0.0.1', function (this: Server) {
      process.send!((this.address() as AddressInfo).port);
    });
}

async function main(): Promise<void> {
  const sizes = arg('mib', '0.1,1,4,16').split(',').map(Number);
  const reads = Number(arg('reads', '20'));
  const child = fork(__filename, ['--serve'], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
  const port = await new Promise<number>((resolve) =>
    child.once('message', (m) => resolve(m as number)),
  );
  const rows: string[] = [];
  try {
    for (const mib of sizes) {
      const source = prometheusSource(
        new URL(`http://127.0.0.1:${port}/${mib}`),
        'app_queue_depth',
        'queued',
        10_000,
        // Past the default bound (16 MiB) for the largest pages: their cost is measured.
        Math.ceil((mib + 1) * 1024 * 1024),
      );
      await source.read(); // the page is built and the code warm
      const from = process.cpuUsage();
      const t0 = performance.now();
      for (let i = 0; i < reads; i++) await source.read();
      const d = process.cpuUsage(from);
      const cpuMs = (d.user + d.system) / 1000 / reads;
      rows.push(
        `| ${mib} | ${cpuMs.toFixed(1)} | ${((performance.now() - t0) / reads).toFixed(1)} | ${(cpuMs / 10).toFixed(2)}% |`,
      );
    }
  } finally {
    child.kill();
  }
  process.stdout.write(
    `agent --prometheus-url read cost, ${reads} reads each, Node ${process.version}\n` +
      '| page MiB | agent CPU ms per read | wall ms per read | of one core at 1 read/s |\n' +
      '|---:|---:|---:|---:|\n' +
      rows.join('\n') +
      '\n',
  );
}

if (process.argv.includes('--serve')) serve();
else
  void main().catch((e: unknown) => {
    console.error(e);
    process.exit(1);
  });
