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
  // Decimal digits only: Number() also reads ' 2', '2e0', '0x2' and '' (as 0).
  const n = /^-?[0-9]+$/.test(text) ? Number(text) : NaN;
  if (!Number.isInteger(n) || n < min || n > max) {
    process.stderr.write(`${program}: --${name} must be an integer ${min}..${max}\n`);
    process.exit(2);
  }
  return n;
}
