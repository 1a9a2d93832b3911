/**
 * The harness must not rot: a few-second run of the smoke scenario (two real
 * backends with their agents, an embedded broker, loadwise and Express + HPM as
 * real processes) must produce sane output. No timing thresholds: only that
 * requests were served, percentiles are ordered and shares sum to 1.
 */
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startEmbeddedBroker, type EmbeddedBroker } from '@loadwise/gateway-plugin';
import { parseArgs, runBench } from './run';
import type { RunRecord } from './lib/engine';

jest.setTimeout(120_000);

describe('bench harness (smoke)', () => {
  let broker: EmbeddedBroker;
  let out: string;

  beforeAll(async () => {
    broker = await startEmbeddedBroker();
    out = mkdtempSync(join(tmpdir(), 'loadwise-bench-smoke-'));
  });

  afterAll(async () => {
    await broker.close();
    rmSync(out, { recursive: true, force: true });
  });

  it('runs the smoke scenario and writes a sane table and chart', async () => {
    const args = {
      ...parseArgs(['--scenario', 'smoke', '--runs', '1', '--quick']),
      brokerUrl: broker.url,
      resultsDir: out,
    };
    const files = await runBench(args, () => undefined);
    expect(files).toEqual([join(out, 'smoke.md')]);

    const { records } = JSON.parse(readFileSync(join(out, 'raw', 'smoke.json'), 'utf8')) as {
      records: RunRecord[];
    };
    expect(records.map((r) => r.balancer).sort()).toEqual([
      'express+hpm round robin',
      'loadwise load-aware',
    ]);
    for (const r of records) {
      expect(r.error).toBeUndefined();
      const res = r.result!;
      expect(res.ok).toBeGreaterThan(0);
      expect(res.ok + res.errorCount).toBe(res.sent);
      const l = res.latency;
      expect(l.p50Ms).toBeGreaterThan(0);
      expect(l.p50Ms).toBeLessThanOrEqual(l.p90Ms);
      expect(l.p90Ms).toBeLessThanOrEqual(l.p99Ms);
      expect(l.p99Ms).toBeLessThanOrEqual(l.p999Ms);
      expect(l.p999Ms).toBeLessThanOrEqual(l.maxMs);
      const shares = Object.values(res.shares);
      expect(shares.reduce((a, b) => a + b, 0)).toBeCloseTo(1, 6);
      expect(Object.keys(res.shares).sort()).toEqual(['b1', 'b2']);
      expect(r.cpu.gateway).toBeGreaterThan(0);
    }

    const md = readFileSync(join(out, 'smoke.md'), 'utf8');
    expect(md).toContain('| case | balancer | p50 ms |');
    expect(md).toMatch(/\d+ cores/);
    expect(readFileSync(join(out, 'smoke.svg'), 'utf8')).toMatch(/^<svg/);
  });
});
