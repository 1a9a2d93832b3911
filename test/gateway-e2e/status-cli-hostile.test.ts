/**
 * `loadwise status` (its committed bin shim, as npm links it) against status
 * servers of the test's own that misbehave: a malformed status document, a
 * server that never answers while Ctrl-C comes, and a reader of its output
 * that goes away (`loadwise status --watch | head -1`).
 */
import { spawn } from 'node:child_process';
import http from 'node:http';
import { GATEWAY_BIN, spawnScript } from '../kit/agent-cli';
import { listen, type TestServer } from '../kit/http';
import { withinOrFail } from '../kit/agent-http';

const doc = (backends: unknown[]): string =>
  JSON.stringify({ strategy: 'load-aware', inFlight: 0, takenAt: 'T', backends });

/** Paths: /malformed a document with rows that are not objects; /never never answers; /ok one backend. */
let server: TestServer;
let arrivedNever: (() => void) | undefined;
const spawned: ReturnType<typeof spawnScript>[] = [];

beforeAll(async () => {
  server = await listen(
    http.createServer((req, res) => {
      if (req.url === '/malformed')
        return res.end(doc([null, 7, { id: { toString: 1 }, state: 'healthy' }, { id: 'b1' }]));
      if (req.url === '/ok') return res.end(doc([{ id: 'b1', state: 'healthy' }]));
      if (req.url === '/never') return arrivedNever?.();
      res.statusCode = 404;
      res.end();
    }),
  );
});

afterEach(async () => {
  for (const p of spawned.splice(0)) await p.kill();
});

afterAll(() => server.close());

function loadwise(args: string[]) {
  const p = spawnScript(GATEWAY_BIN, args);
  spawned.push(p);
  return p;
}

it('shows a malformed document: rows that are not objects skipped, other values as -', async () => {
  const once = loadwise(['status', '--url', `${server.url}/malformed`]);
  // Before the fix: a TypeError and its stack (String() of { toString: 1 }, a null row), exit 1.
  expect(await once.exited).toBe(0);
  expect(once.stderr()).toBe('');
  expect(once.stdout()).toMatch(/^- +healthy +/m);
  expect(once.stdout()).toMatch(/^b1 +\? +/m);

  // --watch goes on refreshing it, where the exception used to end it.
  const watch = loadwise([
    'status',
    '--url',
    `${server.url}/malformed`,
    '--watch',
    '--interval-ms',
    '100',
    '--count',
    '2',
  ]);
  expect(await watch.exited).toBe(0);
  expect(watch.stderr()).toBe('');
  expect(watch.stdout().match(/^b1 +\?/gm)).toHaveLength(2);
});

it.each(['SIGINT', 'SIGTERM'] as const)(
  '%s during a --watch read exits at once, with no "retrying" line',
  async (signal) => {
    const arrived = new Promise<void>((r) => (arrivedNever = r));
    const p = loadwise([
      'status',
      '--url',
      `${server.url}/never`,
      '--watch',
      '--timeout-ms',
      '20000',
    ]);
    await withinOrFail(arrived, 10_000, 'the read reaches the server');
    p.child.kill(signal);
    // Before the fix: the read's whole --timeout-ms, then "... (retrying every 1000 ms)", exit 1.
    expect(await withinOrFail(p.exited, 3_000, 'the exit')).toBe(0);
    expect(p.stdout() + p.stderr()).not.toMatch(/retrying/);
    expect(p.stderr()).toBe('');
  },
);

it('--watch | head -1: a reader of its output that goes away ends it quietly', async () => {
  const child = spawn(
    process.execPath,
    [GATEWAY_BIN, 'status', '--url', `${server.url}/ok`, '--watch', '--interval-ms', '100'],
    { env: { PATH: process.env.PATH }, stdio: ['ignore', 'pipe', 'pipe'] },
  );
  let err = '';
  child.stderr.setEncoding('utf8').on('data', (c: string) => (err += c));
  const exited = new Promise<number | string>((resolve) =>
    child.once('exit', (code, sig) => resolve(code ?? sig ?? -1)),
  );
  try {
    // As `head -1` does: read the first frame, then close the pipe. The next frame meets EPIPE.
    await withinOrFail(new Promise((r) => child.stdout.once('data', r)), 10_000, 'the first frame');
    child.stdout.destroy();
    // Before the fix: an unhandled 'error' event (write EPIPE) and its stack, exit 1.
    expect(await withinOrFail(exited, 5_000, 'the exit')).toBe(0);
    expect(err).toBe('');
  } finally {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    await exited;
  }
});
