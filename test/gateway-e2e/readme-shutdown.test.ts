/**
 * The README's graceful shutdown recipe, as written (readme-shutdown-child.js
 * runs the SIGTERM handler taken from README.md): a request that takes 2 s is
 * in flight when SIGTERM arrives; the client gets its 200, and the gateway
 * process then ends by itself with code 0 (the recipe has no process.exit:
 * close() released the pools, the broker connection, the embedded broker and
 * every timer), having logged nothing. docs/gateway.md shows the same recipe.
 */
import { readFileSync } from 'node:fs';
import type { ServerResponse } from 'node:http';
import path from 'node:path';
import { eventually } from '../kit/fleet';
import { alive } from '../kit/pids';
import { startScript, type ScriptChild } from '../kit/script-child';
import { send, startBackend, type TestServer } from '../kit/http';

const ROOT = path.resolve(__dirname, '../..');
const SCRIPT = path.join(__dirname, 'readme-shutdown-child.js');

/** The statements of every `process.on('SIGTERM', ...)` block in a markdown file, comments dropped. */
function recipes(file: string): string[] {
  const text = readFileSync(path.join(ROOT, file), 'utf8');
  return [...text.matchAll(/^process\.on\('SIGTERM', async \(\) => \{\n([\s\S]*?)\n\}\);$/gm)].map(
    (m) =>
      m[1]!
        .split('\n')
        .map((l) => l.replace(/\/\/.*$/, '').trim())
        .join(' ')
        .trim(),
  );
}

describe("the README's SIGTERM recipe", () => {
  let backend: TestServer;
  let child: ScriptChild | undefined;
  const arrived: ServerResponse[] = [];
  beforeAll(async () => {
    backend = await startBackend('api-1', (req, res) => {
      // The gateway's own GETs (warm-up preconnect, health checks) are answered at once.
      if (req.headers['user-agent']?.startsWith('loadwise-gateway')) return void res.end('ok');
      arrived.push(res);
      setTimeout(() => res.end(`done ${req.url}`), 2000);
    });
  });
  afterAll(async () => {
    if (child?.child.pid !== undefined && alive(child.child.pid)) child.child.kill('SIGKILL');
    await backend.close();
  });

  it('is the one docs/gateway.md shows too', () => {
    const readme = recipes('README.md');
    expect(readme).toEqual(['server.close(); await lb.close({ graceMs: 10_000, server });']);
    expect(recipes('docs/gateway.md')).toEqual([readme[0], readme[0]]);
  });

  it('a 2 s request in flight at SIGTERM gets 200; then the process ends by itself, code 0, with nothing logged', async () => {
    child = startScript(SCRIPT, [backend.url]);
    const c = child;
    const listening = (): { port: number } | undefined =>
      c.lines
        .filter((l) => l.startsWith('{'))
        .map((l) => JSON.parse(l) as { event: string; port: number })
        .find((e) => e.event === 'listening');
    await eventually(
      () => listening() !== undefined,
      20_000,
      () => `listening (stderr: ${c.errLines.join('\n')})`,
    );
    const base = `http://127.0.0.1:${listening()!.port}`;
    // The embedded broker is up and the balancer connected to it before the test goes on.
    await eventually(
      () => c.lines.some((l) => l.includes('"broker-connected"')),
      20_000,
      'broker connected',
    );

    const started = Date.now();
    const slow = send(`${base}/api/slow`);
    await eventually(() => arrived.length === 1, 10_000, 'the request at the backend');
    c.child.kill('SIGTERM');
    const r = await slow;
    expect([r.status, r.body]).toEqual([200, 'done /slow']);
    expect(Date.now() - started).toBeGreaterThanOrEqual(1900);

    let timer: NodeJS.Timeout | undefined;
    const exit = await Promise.race([
      c.exited,
      new Promise<'still running'>((resolve) => {
        timer = setTimeout(() => resolve('still running'), 10_000);
      }),
    ]);
    clearTimeout(timer);
    expect(exit).toEqual({ code: 0, signal: null });
    expect(c.errLines).toEqual([]);
    expect(c.lines.filter((l) => l.includes('"balancer"'))).toEqual([
      JSON.stringify({ event: 'balancer', name: 'broker-connected' }),
    ]);
  }, 40_000);
});
