/** A Node script in a child process, its output collected line by line, and its exit as a promise. */
import { spawn, type ChildProcess } from 'node:child_process';
import { createInterface } from 'node:readline';

export interface ScriptChild {
  child: ChildProcess;
  /** stdout lines so far. */
  lines: string[];
  /** stderr lines so far. */
  errLines: string[];
  exited: Promise<{ code: number | null; signal: string | null }>;
}

/** `ownGroup`: in a process group of its own, so a test can signal the group as a terminal does. */
export function startScript(
  script: string,
  args: string[],
  env: NodeJS.ProcessEnv = process.env,
  ownGroup = false,
): ScriptChild {
  const child = spawn(process.execPath, [script, ...args], {
    stdio: ['ignore', 'pipe', 'pipe'],
    env,
    detached: ownGroup,
  });
  const lines: string[] = [];
  const errLines: string[] = [];
  createInterface({ input: child.stdout! }).on('line', (l) => lines.push(l));
  createInterface({ input: child.stderr! }).on('line', (l) => errLines.push(l));
  const exited = new Promise<{ code: number | null; signal: string | null }>((resolve) =>
    child.once('exit', (code, signal) => resolve({ code, signal })),
  );
  return { child, lines, errLines, exited };
}
