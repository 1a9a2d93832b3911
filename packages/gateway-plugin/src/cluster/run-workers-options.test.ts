/**
 * runWorkers checks every option before it forks anything (run-workers.ts, checkOptions):
 * each mistake below throws LW_GW_INVALID_OPTION in this process, so no worker starts.
 */
import cluster from 'node:cluster';
import { runWorkers, type RunWorkersOptions } from './run-workers';

const start = () => ({ close: async () => {} });

async function codeOf(opts: unknown): Promise<string | undefined> {
  try {
    await runWorkers(opts as RunWorkersOptions);
  } catch (e) {
    return (e as { code?: string }).code ?? String(e);
  }
  return 'resolved';
}

describe('runWorkers options', () => {
  // Never a real fork from the test runner: reaching it is the failure.
  const fork = jest.spyOn(cluster, 'fork').mockImplementation(() => {
    throw new Error('forked');
  });
  afterAll(() => fork.mockRestore());

  it.each([
    ['no workers', { start }],
    ['0 workers', { workers: 0, start }],
    ['fractional workers', { workers: 1.5, start }],
    ['workers as a string', { workers: '2', start }],
    ['257 workers', { workers: 257, start }],
    ['no start', { workers: 1 }],
    ['options not an object', 2],
    // A timeout that is not a valid timer fired after 1 ms: every close became a SIGKILL.
    ['shutdownTimeoutMs past 2^31 - 1', { workers: 1, start, shutdownTimeoutMs: 3e9 }],
    ['shutdownTimeoutMs negative', { workers: 1, start, shutdownTimeoutMs: -1 }],
    ['shutdownTimeoutMs NaN', { workers: 1, start, shutdownTimeoutMs: NaN }],
    ['shutdownTimeoutMs a string', { workers: 1, start, shutdownTimeoutMs: 'abc' }],
    ['startTimeoutMs past 2^31 - 1', { workers: 1, start, startTimeoutMs: 3e9 }],
    ['startTimeoutMs 0', { workers: 1, start, startTimeoutMs: 0 }],
    ['a misspelt key', { workers: 1, start, shutdownTimeoutMS: 1000 }],
    ['log not a function', { workers: 1, start, log: 'stderr' }],
    ['handleSignals not a boolean', { workers: 1, start, handleSignals: 'no' }],
    ['env with a number', { workers: 1, start, env: { PORT: 8080 } }],
    ['restart delay past 2^31 - 1', { workers: 1, start, restart: { maxDelayMs: 3e9 } }],
  ])('%s: LW_GW_INVALID_OPTION, nothing forked', async (_name, opts) => {
    expect(await codeOf(opts)).toBe('LW_GW_INVALID_OPTION');
    expect(fork).not.toHaveBeenCalled();
  });
});
