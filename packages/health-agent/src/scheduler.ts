import cron, { type ScheduledTask } from 'node-cron';

/**
 * Runs `tick` on a schedule with a fixed random offset per agent (so a fleet
 * started together does not fire at the same instant) and never two ticks at
 * once (a slow sample skips the next tick instead of piling up).
 *
 * - `cron`: a node-cron expression (seconds field allowed), e.g. '*\/5 * * * * *'.
 * - `intervalMs`: node-cron only resolves whole seconds and fires on wall-clock
 *   second boundaries, so an interval that is a whole number of seconds
 *   dividing 60 becomes '*\/N * * * * *'; any other interval (e.g. 500 ms or
 *   7 s) runs on a plain drift-free timer instead, which is also unref'd.
 *
 * node-cron's own `maxRandomDelay` draws a new delay on every run; a fixed
 * per-agent offset keeps the spacing between one agent's reports equal to the
 * interval, which is what a gateway's freshness limit assumes.
 */
export interface SchedulerOptions {
  intervalMs?: number;
  cron?: string;
  /** This agent's offset after each scheduled instant, ms. */
  offsetMs: number;
  tick: () => Promise<void>;
  onSkip?: () => void;
}

export interface Scheduler {
  readonly mode: 'cron' | 'timer';
  readonly expression: string | undefined;
  start(): void;
  stop(): void;
}

export function cronExpressionForInterval(intervalMs: number): string | undefined {
  if (intervalMs % 1000 !== 0) return undefined;
  const s = intervalMs / 1000;
  if (s < 1 || 60 % s !== 0) return undefined;
  return s === 1 ? '* * * * * *' : `*/${s} * * * * *`;
}

export function createScheduler(opts: SchedulerOptions): Scheduler {
  const expression =
    opts.cron ??
    (opts.intervalMs !== undefined ? cronExpressionForInterval(opts.intervalMs) : undefined);
  let running = false;
  let stopped = true;
  const pending = new Set<NodeJS.Timeout>();

  const fire = (): void => {
    if (stopped) return;
    if (running) {
      opts.onSkip?.();
      return;
    }
    running = true;
    opts.tick().finally(() => {
      running = false;
    });
  };

  const later = (fn: () => void, delayMs: number): void => {
    const t = setTimeout(() => {
      pending.delete(t);
      fn();
    }, delayMs);
    t.unref();
    pending.add(t);
  };

  if (expression !== undefined) {
    let task: ScheduledTask | undefined;
    return {
      mode: 'cron',
      expression,
      start() {
        if (!stopped) return;
        stopped = false;
        task = cron.createTask(expression, () => later(fire, opts.offsetMs), {
          unref: true,
          noOverlap: false,
        });
        void task.start();
      },
      stop() {
        stopped = true;
        if (task) void task.destroy();
        task = undefined;
        for (const t of pending) clearTimeout(t);
        pending.clear();
      },
    };
  }

  const intervalMs = opts.intervalMs!;
  return {
    mode: 'timer',
    expression: undefined,
    start() {
      if (!stopped) return;
      stopped = false;
      // Instants k × interval + offset on the wall clock, like cron, so the
      // offset spreads agents and the schedule does not drift with tick time.
      const schedule = (): void => {
        if (stopped) return;
        const now = Date.now();
        const next =
          Math.floor((now - opts.offsetMs) / intervalMs + 1) * intervalMs + opts.offsetMs;
        later(() => {
          fire();
          schedule();
        }, next - now);
      };
      schedule();
    },
    stop() {
      stopped = true;
      for (const t of pending) clearTimeout(t);
      pending.clear();
    },
  };
}
