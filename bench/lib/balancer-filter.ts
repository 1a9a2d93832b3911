/**
 * `--balancers "nginx least_conn,loadwise"`: which rows a run keeps. A row is
 * kept when its name contains one of the comma-separated words, in any case
 * ("HAProxy leastconn" keeps the row named "haproxy leastconn"); blank words
 * are ignored, and no words at all keep every row.
 */
export function balancerWords(arg: string | undefined): string[] | undefined {
  if (arg === undefined) return undefined;
  const words = arg
    .split(',')
    .map((w) => w.trim().toLowerCase())
    .filter((w) => w.length > 0);
  return words.length > 0 ? words : undefined;
}

export function keepsBalancer(words: string[] | undefined, name: string): boolean {
  if (words === undefined) return true;
  const lower = name.toLowerCase();
  return words.some((w) => lower.includes(w));
}
