/**
 * What keeps one bad reading from silencing the agent. Its figures come from
 * outside it (the app's tracker document, a Prometheus gauge, cgroup files,
 * /proc), and the protocol refuses a report with any field out of its rules
 * (docs/protocol.md). The agent used to drop the whole report then: a
 * tracker's `inFlight: 1.5`, a gauge of 1e308 or a `memory.max` above 2^53
 * stopped every report, the `down` verdict included, with one warning a
 * minute. Here the report loses only the optional block that breaks a rule
 * (queue, traffic, concurrency limit, process, cgroup), so host and health
 * always go out.
 */
import { PROTOCOL_VERSION, validateMessage } from '@loadwise/protocol';
import type { MetricsBody } from './agent';

/** Blocks a report can do without, in the order a failure names them. */
const OPTIONAL = new Set(['queue', 'traffic', 'concurrencyLimit', 'process', 'cgroup']);

/**
 * Removes from `body` (in place) every optional block that breaks a protocol
 * rule; returns what was removed, as `block (field: code)`, for a warning.
 * Host and health are left: a body still invalid after this is the agent's
 * own bug, and the encoder says so.
 */
export function dropInvalidBlocks(body: MetricsBody): string[] {
  const dropped: string[] = [];
  // One failure at a time: at most one per optional block.
  for (let i = 0; i <= OPTIONAL.size; i++) {
    const failure = validateMessage({
      v: PROTOCOL_VERSION,
      kind: 'metrics',
      backendId: 'x',
      epochMs: 0,
      seq: 0,
      ts: 0,
      ...body,
    });
    if (!failure) break;
    const block = failure.path.split('.')[0]!;
    if (!OPTIONAL.has(block)) break;
    delete (body as unknown as Record<string, unknown>)[block];
    dropped.push(`${block} (${failure.path}: ${failure.code})`);
  }
  return dropped;
}
