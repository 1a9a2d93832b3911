/**
 * What one read of the agent's `--kernel-port` queue source costs
 * (packages/health-agent/src/queue/kernel-source.ts): the CPU (user + system,
 * `process.cpuUsage`, the kernel's formatting of the tables included) per read
 * of an IPv4 listener's and a dual-stack `::` listener's figures, with
 * `--connections` loopback connections open to each, against a read of both
 * whole tables (what every read did before 2026-12-02, and what the source
 * still does every 30 s; parsed as now, which skips other ports' lines). The
 * agent reads once per interval (1 s by default).
 *
 *   npm run bench:agent-kernel-read [-- --connections 1500 --reads 100]
 */
import { kernelSource } from '@loadwise/health-agent/internals';
import { withOpenConnections } from '../lib/loopback';

function arg(name: string, fallback: string): string {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 ? process.argv[i + 1]! : fallback;
}

async function cpuUsPerRead(fn: () => Promise<unknown>, reads: number): Promise<number> {
  await fn();
  const from = process.cpuUsage();
  for (let i = 0; i < reads; i++) await fn();
  const d = process.cpuUsage(from);
  return (d.user + d.system) / reads;
}

async function main(): Promise<void> {
  const n = Number(arg('connections', '1500'));
  const reads = Number(arg('reads', '100'));
  const rows = await withOpenConnections(n, async (open, v4, v6) => {
    const cells: string[] = [];
    for (const l of [v4, v6]) {
      // A source that never trusts what it learnt (a clock always past the recheck): both
      // tables on every read, as before.
      let t = 0;
      const both = kernelSource(l.port, '/proc', () => (t += 1e9));
      const product = kernelSource(l.port, '/proc');
      cells.push((await cpuUsPerRead(() => both.read(), reads)).toFixed(0));
      cells.push((await cpuUsPerRead(() => product.read(), reads)).toFixed(0));
    }
    return `| ${open} per listener | ${cells.join(' | ')} |`;
  });
  process.stdout.write(
    `agent --kernel-port read cost, ${reads} reads each, CPU µs per read\n` +
      '| open connections | IPv4 listener, both tables | IPv4 listener, the source | `::` listener, both tables | `::` listener, the source |\n' +
      '|---|---:|---:|---:|---:|\n' +
      rows.join('\n') +
      '\n',
  );
}

void main().catch((e: unknown) => {
  console.error(e);
  process.exit(1);
});
