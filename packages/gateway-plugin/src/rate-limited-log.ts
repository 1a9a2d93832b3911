/**
 * Logs a line at most once per key per interval, with the number of
 * occurrences suppressed since: a flood of bad messages must not turn into a
 * flood of log lines (which would be a denial of service of its own).
 */
import { writeLog, type LogLevel } from './observability/event-log';
import type { Logger } from './options';

export class RateLimitedLog {
  private readonly last = new Map<string, { atMs: number; suppressed: number }>();

  constructor(
    private readonly logger: Logger,
    private readonly now: () => number,
    private readonly intervalMs = 10_000,
    private readonly maxKeys = 1000,
  ) {}

  warn(key: string, message: string, fields: Record<string, unknown> = {}): void {
    this.log('warn', key, fields, message);
  }

  /** `fields` gain `suppressed` (lines held back since the last one of this key) when any were. */
  log(level: LogLevel, key: string, fields: Record<string, unknown>, message: string): void {
    const nowMs = this.now();
    const entry = this.last.get(key);
    if (entry && nowMs - entry.atMs < this.intervalMs) {
      entry.suppressed++;
      return;
    }
    const suppressed = entry?.suppressed ?? 0;
    if (!entry && this.last.size >= this.maxKeys) this.last.clear();
    this.last.set(key, { atMs: nowMs, suppressed: 0 });
    if (suppressed > 0) {
      writeLog(
        this.logger,
        level,
        { ...fields, suppressed },
        `${message} (${suppressed} more suppressed)`,
      );
    } else {
      writeLog(this.logger, level, fields, message);
    }
  }
}
