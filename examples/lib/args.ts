/**
 * Command-line numbers for the example programs: an integer in a range, or
 * one line on stderr naming the flag and exit code 2.
 */
export function integerArg(
  program: string,
  name: string,
  text: string,
  min: number,
  max: number,
): number {
  const n = Number(text);
  if (!Number.isInteger(n) || n < min || n > max) {
    process.stderr.write(`${program}: --${name} must be an integer ${min}..${max}\n`);
    process.exit(2);
  }
  return n;
}
