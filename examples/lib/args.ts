/**
 * Command lines for the example programs: flags parsed strictly, and an
 * integer in a range; a mistake gets one line on stderr naming it, and exit
 * code 2, never a stack trace.
 */
import { parseArgs, type ParseArgsConfig } from 'node:util';

/** One line naming the mistake, then exit 2. */
function refuse(program: string, what: string, hint?: string): never {
  process.stderr.write(`${program}: ${what}${hint === undefined ? '' : `; ${hint}`}\n`);
  process.exit(2);
}

/**
 * `parseArgs` with `strict: true`. An unknown flag, a flag without its value
 * or a stray argument make it throw a TypeError (ERR_PARSE_ARGS_*), which a
 * program's catch printed with its stack and exit code 1: here it is one
 * line, with `hint` (where to find the flags) after it, and exit 2.
 */
export function parseFlags<T extends ParseArgsConfig['options']>(
  program: string,
  options: T,
  hint?: string,
): ReturnType<typeof parseArgs<{ options: T; strict: true }>> {
  try {
    return parseArgs({ options, strict: true });
  } catch (err) {
    if (!String((err as NodeJS.ErrnoException).code).startsWith('ERR_PARSE_ARGS_')) throw err;
    refuse(program, (err as Error).message.split('\n')[0]!.replace(/\.$/, ''), hint);
  }
}

export function integerArg(
  program: string,
  name: string,
  text: string,
  min: number,
  max: number,
): number {
  // Decimal digits only: Number() also reads ' 2', '2e0', '0x2' and '' (as 0).
  const n = /^-?[0-9]+$/.test(text) ? Number(text) : NaN;
  if (!Number.isInteger(n) || n < min || n > max)
    refuse(program, `--${name} must be an integer ${min}..${max}`);
  return n;
}
