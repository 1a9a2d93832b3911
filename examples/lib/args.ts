/**
 * Command lines for the example programs: flags parsed strictly, and an
 * integer in a range; a mistake gets one line on stderr naming it, and exit
 * code 2, never a stack trace. `--help` (`-h`) prints the usage made from a
 * table naming every flag, and exits 0.
 */
import { parseArgs, type ParseArgsConfig } from 'node:util';

/** One line naming the mistake, then exit 2. */
export function refuse(program: string, what: string, hint?: string): never {
  process.stderr.write(`${program}: ${what}${hint === undefined ? '' : `; ${hint}`}\n`);
  process.exit(2);
}

type Options = ParseArgsConfig['options'];

/** What `--help` prints. */
export interface Usage<T extends Options> {
  /** How to run the program, after "Usage: ". */
  usage: string;
  /**
   * Every flag the program takes (but --help, added here): its value's placeholder
   * ('' for a switch) and what it does; a '\n' in the text starts another line.
   * A flag without a line is a type error: none goes undocumented.
   */
  flags: { [K in Exclude<keyof T, 'help'>]: readonly [arg: string, text: string] };
  /** Lines after the flags: environment variables, examples. */
  notes?: string[];
}

/** The --help text of `usage`, flags in a column. */
export function usageText<T extends Options>(usage: Usage<T>): string {
  const rows: [string, string][] = [
    ...Object.entries<readonly [string, string]>(usage.flags).map(
      ([flag, [arg, text]]): [string, string] => [`--${flag}${arg ? ` ${arg}` : ''}`, text],
    ),
    ['-h, --help', 'this help'],
  ];
  const width = Math.max(...rows.map(([left]) => left.length)) + 2;
  const lines = rows.map(
    ([left, text]) => `  ${left.padEnd(width)}${text.replaceAll('\n', `\n  ${' '.repeat(width)}`)}`,
  );
  return [`Usage: ${usage.usage}`, ...lines, ...(usage.notes ?? []), ''].join('\n');
}

/**
 * `parseArgs` with `strict: true`. An unknown flag, a flag without its value
 * or a stray argument make it throw a TypeError (ERR_PARSE_ARGS_*), which a
 * program's catch printed with its stack and exit code 1: here it is one
 * line, with `hint` (where to find the flags) after it, and exit 2.
 *
 * With `usage`: `--help` (or `-h`) prints it on stdout and exits 0, and
 * `hint` defaults to "--help lists the options".
 */
export function parseFlags<T extends Options>(
  program: string,
  options: T,
  hint?: string,
  usage?: Usage<T>,
): ReturnType<typeof parseArgs<{ options: T; strict: true }>> {
  if (usage !== undefined) hint ??= '--help lists the options';
  try {
    if (usage === undefined) return parseArgs({ options, strict: true });
    const parsed = parseArgs({
      options: { ...options, help: { type: 'boolean', short: 'h' } },
      strict: true,
    });
    const values = parsed.values as { help?: boolean };
    if (values.help) {
      process.stdout.write(usageText(usage));
      process.exit(0);
    }
    delete values.help;
    return parsed as ReturnType<typeof parseArgs<{ options: T; strict: true }>>;
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
