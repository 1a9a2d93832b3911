import type { Server } from 'node:http';
/** Helpers for the bench's child processes: config from argv, messages to the parent. */
export function readConfig<T>(): T {
  const raw = process.argv[2];
  if (!raw) throw new Error('missing JSON config in argv[2]');
  return JSON.parse(raw) as T;
}

export function tell(msg: Record<string, unknown>): void {
  if (process.send) process.send(msg);
}

/** Closes an HTTP server now: keep-alive connections dropped, resolves once it is closed. */
export async function closeServer(server: Server): Promise<void> {
  server.closeAllConnections();
  await new Promise<void>((resolve) => server.close(() => resolve()));
}

/** Runs `close` on SIGTERM/SIGINT or when the parent goes away, then exits. */
export function onShutdown(close: () => Promise<void> | void): void {
  let closing = false;
  const shutdown = (): void => {
    if (closing) return;
    closing = true;
    const hardStop = setTimeout(() => process.exit(0), 2_000);
    hardStop.unref();
    Promise.resolve()
      .then(close)
      .catch(() => undefined)
      .finally(() => process.exit(0));
  };
  process.on('SIGTERM', shutdown);
  process.on('SIGINT', shutdown);
  // An orphaned child (the runner crashed) must not keep ports and CPU busy.
  process.on('disconnect', shutdown);
}

export function fail(err: unknown): never {
  tell({ type: 'error', message: err instanceof Error ? err.message : String(err) });
  console.error(err);
  process.exit(1);
}
