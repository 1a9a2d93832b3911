/**
 * The known name nearest to a mistyped one, for "unknown option stratgy (did
 * you mean strategy?)": the gateway's options, the agent's options, flags and
 * config keys all use it. Not part of the wire contract; it lives here because
 * both packages depend on this one and on nothing else of each other.
 */

/** Levenshtein distance, case-insensitive; small strings only (option names). */
function distance(a: string, b: string): number {
  const prev = Array.from({ length: b.length + 1 }, (_, i) => i);
  for (let i = 1; i <= a.length; i++) {
    let diag = prev[0]!;
    prev[0] = i;
    for (let j = 1; j <= b.length; j++) {
      const up = prev[j]!;
      const cost = a[i - 1]!.toLowerCase() === b[j - 1]!.toLowerCase() ? 0 : 1;
      prev[j] = Math.min(up + 1, prev[j - 1]! + 1, diag + cost);
      diag = up;
    }
  }
  return prev[b.length]!;
}

/**
 * The known name nearest to `name`, if it is close enough to be a typo: a
 * third of it (at least 1, at most 3 edits) may differ: `stratgy`, `pathh`,
 * `maxRetry`.
 */
export function didYouMean(name: string, known: readonly string[]): string | undefined {
  let best: string | undefined;
  let bestD = Infinity;
  for (const k of known) {
    const d = distance(name, k);
    if (d < bestD) {
      best = k;
      bestD = d;
    }
  }
  return best !== undefined && bestD <= Math.min(3, Math.max(1, Math.ceil(name.length / 3)))
    ? best
    : undefined;
}

/**
 * `unknown option queue.prot (did you mean queue.port?)`: the wording of the
 * gateway's and the agent's option errors. `prefix` is the path of the object
 * (`queue.`), or `--` for a flag.
 */
export function unknownOptionText(name: string, known: readonly string[], prefix = ''): string {
  const near = didYouMean(name, known);
  return `unknown option ${prefix}${name}${near ? ` (did you mean ${prefix}${near}?)` : ''}`;
}
