/**
 * The quick start with a reader that closes early, as `npm start | head -3`:
 * the next line it printed was an uncaught `write EPIPE` (exit 1, a stack),
 * and the signing keys' folders in the temp directory stayed behind. Now it
 * stops as for Ctrl-C: exit 0, its children gone, the key folders removed.
 * Closed during the start-up (after three lines, as `head -3`) and once it
 * runs (after the first of its per-second lines).
 */
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import path from 'node:path';
import { createInterface } from 'node:readline';
import { alive } from '../kit/pids';

const SCRIPT = path.resolve(__dirname, '../../examples/dist/quick-start.js');

const CASES: [string, (line: string, n: number) => boolean][] = [
  ['after three lines, during the start-up', (_line, n) => n === 3],
  ['after its first per-second line', (line) => /^b1 \[/.test(line)],
];

it.each(CASES)(
  'stops with exit 0 and leaves no key folder when its stdout closes %s',
  async (_name, closeAfter) => {
    const child = spawn(process.execPath, [SCRIPT, '--port', '0', '--interval-ms', '250'], {
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stderr = '';
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    const exited = new Promise<{ code: number | null; signal: string | null }>((resolve) =>
      child.once('exit', (code, signal) => resolve({ code, signal })),
    );
    const lines: string[] = [];
    const lines$ = createInterface({ input: child.stdout });
    lines$.on('line', (line) => {
      lines.push(line);
      // The reader goes away: its end of the pipe closes, as when `head` exits.
      if (closeAfter(line, lines.length)) {
        lines$.close();
        child.stdout.destroy();
      }
    });
    const guard = setTimeout(() => child.kill('SIGKILL'), 40_000);
    const exit = await exited;
    clearTimeout(guard);

    expect(lines.length).toBeGreaterThanOrEqual(3);
    expect(exit).toEqual({ code: 0, signal: null });
    expect(stderr).not.toMatch(/EPIPE|\n\s+at /);
    const keyFiles = lines
      .map((l) => /signing keys for this run in (.+?) \(one per agent/.exec(l)?.[1])
      .find((m) => m !== undefined)
      ?.split(', ');
    expect(keyFiles).toHaveLength(3);
    for (const file of keyFiles!) expect(existsSync(path.dirname(file))).toBe(false);
    const pids = lines.flatMap((l) => {
      const m = /\(pid (\d+), agent pid (\d+)\)/.exec(l);
      return m ? [Number(m[1]), Number(m[2])] : [];
    });
    expect(pids.length).toBeGreaterThanOrEqual(2);
    for (const pid of pids) expect(alive(pid)).toBe(false);
  },
  45_000,
);
