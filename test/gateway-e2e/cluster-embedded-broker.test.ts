/**
 * `broker: { embedded: true }` in a node:cluster worker is refused at
 * construction (LW_GW_INVALID_BROKER). Before, each worker of a runWorkers pool
 * started a broker of its own on the port they shared, the primary handed each
 * agent's connection to one of them, and every other worker never heard that
 * agent: after the agent reported its backend down, the other worker kept
 * sending it 4 requests of 5. A real cluster: a primary forks one worker,
 * which builds the balancer (from dist: `npm test` builds first) and sends
 * back what it got (cluster-embedded-child.js).
 */
import { spawn } from 'node:child_process';
import path from 'node:path';

const SCRIPT = path.resolve(__dirname, 'cluster-embedded-child.js');

it('a cluster worker is refused an embedded broker of its own (option or startEmbeddedBroker), and takes a broker URL', async () => {
  const child = spawn(process.execPath, [SCRIPT], {
    cwd: process.cwd(),
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  let out = '';
  child.stdout!.on('data', (c: Buffer) => (out += c.toString()));
  const code = await new Promise<number | null>((resolve) => child.once('exit', resolve));
  expect(code).toBe(0);
  expect(JSON.parse(out)).toEqual({
    embedded: 'LW_GW_INVALID_BROKER',
    url: 'built',
    started: 'LW_GW_INVALID_BROKER',
  });
});
