/**
 * What the accept-queue signal costs (packages/gateway-plugin/src/admission/accept-queue.ts):
 * one read of the listeners at the head of /proc/net/tcp (an IPv4 listener) or
 * /proc/net/tcp6 (a dual-stack `::` listener, Node's default for `listen(port)`),
 * with `--connections` open loopback connections to each listener, against a
 * read of the whole table. The read runs on the event loop every
 * `acceptQueue.sampleIntervalMs` (50 ms) while requests arrive. "to the end"
 * reads every listener and the line after them (a full read, as every read did
 * before 2026-12-02); "the product's" is the reader the gateway uses, which
 * after a full read stops at the port's own line. The listener's place among
 * the listeners is shown: the kernel's walk after the last one is the cost.
 *
 *   npm run bench:accept-queue-read [-- --connections 1500 --reads 200]
 */
import { readFileSync } from 'node:fs';
import { procDepthReader, readListenDepth } from '@loadwise/gateway-plugin/internals';
import { withOpenConnections } from '../lib/loopback';

function arg(name: string, fallback: string): string {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 ? process.argv[i + 1]! : fallback;
}

function perReadUs(fn: () => unknown, reads: number): number {
  fn();
  const t0 = process.hrtime.bigint();
  for (let i = 0; i < reads; i++) fn();
  return Number(process.hrtime.bigint() - t0) / reads / 1000;
}

const lines = (path: string): number => readFileSync(path, 'latin1').split('\n').length - 2;

/** "k of n": the port's place among the LISTEN lines at the head of the table. */
function place(path: string, port: number): string {
  const hex = `:${port.toString(16).toUpperCase().padStart(4, '0')}`;
  const listeners = readFileSync(path, 'latin1')
    .split('\n')
    .slice(1)
    .map((l) => l.trim().split(/\s+/))
    .filter((f) => f[3] === '0A');
  return `${listeners.findIndex((f) => f[1]!.endsWith(hex)) + 1} of ${listeners.length}`;
}

async function main(): Promise<void> {
  const n = Number(arg('connections', '1500'));
  const reads = Number(arg('reads', '200'));
  const rows = await withOpenConnections(n, (open, v4, v6) => {
    const tcp = lines('/proc/net/tcp');
    const tcp6 = lines('/proc/net/tcp6');
    const head4 = perReadUs(() => readListenDepth('/proc/net/tcp', v4.port), reads);
    const head6 = perReadUs(() => readListenDepth('/proc/net/tcp6', v6.port), reads);
    const reader = procDepthReader();
    const own4 = perReadUs(() => reader({ port: v4.port, ipv6: false }), reads);
    const own6 = perReadUs(() => reader({ port: v6.port, ipv6: true }), reads);
    const full4 = perReadUs(() => readFileSync('/proc/net/tcp'), Math.max(10, reads / 10));
    const full6 = perReadUs(() => readFileSync('/proc/net/tcp6'), Math.max(10, reads / 10));
    return `| ${open} per listener | ${tcp} / ${tcp6} | ${place('/proc/net/tcp', v4.port)} / ${place('/proc/net/tcp6', v6.port)} | ${head4.toFixed(0)} | ${own4.toFixed(0)} | ${head6.toFixed(0)} | ${own6.toFixed(0)} | ${full4.toFixed(0)} | ${full6.toFixed(0)} |`;
  });
  process.stdout.write(
    `accept-queue read cost, ${reads} reads each, µs per read\n` +
      "| open connections | lines in tcp / tcp6 | listener among the listeners, tcp / tcp6 | tcp (IPv4 listener) to the end of the listeners | tcp, the product's reader | tcp6 (`::` listener) to the end | tcp6, the product's reader | whole tcp | whole tcp6 |\n" +
      '|---|---:|---|---:|---:|---:|---:|---:|---:|\n' +
      rows.join('\n') +
      '\n',
  );
}

void main().catch((e: unknown) => {
  console.error(e);
  process.exit(1);
});
