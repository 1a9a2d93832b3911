/**
 * Logs a warning at most once per key per interval, with the number of
 * occurrences suppressed since: a flood of bad messages must not turn into a
 * flood of log lines (which would be a denial of service of its own).
 */
import type { Logger } from './options';

export class RateLimitedLog {
  private readonly last = new Map<string, { atMs: number; suppressed: number }>();

  constructor(
    private readonly logger: Logger,
    private readonly now: () => number,
    private readonly intervalMs = 10_000,
    private readonly maxKeys = 1000,
  ) {}

  warn(key: string, message: string): void {
    const nowMs = this.now();
    const entry = this.last.get(key);
    if (entry && nowMs - entry.atMs < this.intervalMs) {
      entry.suppressed++;
      return;
    }
    const suffix = entry && entry.suppressed > 0 ? ` (${entry.suppressed} more suppressed)` : '';
    if (!entry && this.last.size >= this.maxKeys) this.last.clear();
    this.last.set(key, { atMs: nowMs, suppressed: 0 });
    this.logger.warn(message + suffix);
  }
}
