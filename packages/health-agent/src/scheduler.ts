import cron, { type ScheduledTask } from 'node-cron';

/**
 * Runs `tick` on a schedule with a fixed random offset per agent (so a fleet
 * started together does not fire at the same instant) and never two ticks at
 * once (a slow sample skips the next tick instead of piling up).
 *
 * - `cron`: a node-cron expression (seconds field allowed), e.g. '*\/5 * * * * *'.
 * - `intervalMs`: a plain unref'd timer firing at wall-clock instants
 *   k × interval + offset (the same instants '*\/N * * * * *' would give).
 *   node-cron only resolves whole seconds, so it cannot express 500 ms or
 *   7 s; and starting a node-cron task initialises Intl.DateTimeFormat (it
 *   matches every second's date in a time zone), which costs ~12 MB of RSS,
 *   measured — a sixth of the agent's budget — for nothing an interval needs.
 *   See docs/agent.md for the figures.
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

export function createScheduler(opts: SchedulerOptions): Scheduler {
  const expression = opts.cron;
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
      // A timer may run a millisecond before its instant by Date.now() (timers
      // use the monotonic clock): never schedule the same instant twice. Only
      // while the last instant is at most an interval ahead, though: after the
      // wall clock stepped back (an NTP step, a VM resume) it lies as far ahead
      // as the step, and waiting for it would stop reporting that long.
      let lastInstant = -Infinity;
      const schedule = (): void => {
        if (stopped) return;
        const now = Date.now();
        let next = Math.floor((now - opts.offsetMs) / intervalMs + 1) * intervalMs + opts.offsetMs;
        if (next <= lastInstant && lastInstant - now <= intervalMs) next = lastInstant + intervalMs;
        lastInstant = next;
        later(
          () => {
            fire();
            schedule();
          },
          Math.max(0, next - now),
        );
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
