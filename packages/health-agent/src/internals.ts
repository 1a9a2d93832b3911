/**
 * `@loadwise/health-agent/internals`: pieces of the agent for this
 * repository's benchmarks (bench/agent-cost/kernel-read.ts, prometheus-read.ts). Not part of the
 * public API (index.ts, checked by test/api/): its members change without
 * notice and without a semver bump.
 */
export { kernelSource } from './queue/kernel-source';
export { prometheusSource } from './queue/prometheus-source';
