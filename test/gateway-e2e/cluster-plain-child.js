/**
 * A pool of plain HTTP workers (runWorkers, built from dist: `npm test` builds
 * first) for cluster-lifecycle.test.ts: no broker and no balancer, so a test
 * of the pool's own lifecycle starts in a second. The primary logs with
 * runWorkers' default logger (stderr) and says `pool listening on <port>`.
 * Environment: LW_WORKERS (default 2), LW_PORT (default 0), LW_START_TIMEOUT_MS,
 * LW_MAX_RESTARTS; LW_HANG=all makes every start() hang (never listen),
 * LW_HANG=restart every start but a slot's first; LW_START_DELAY_MS makes
 * start() wait that long before listening; LW_VERSION_FILE (a path) is read at
 * each start and answered. Each answer is `<id> <pid> <version>`; `?d=<ms>`
 * delays it (and the worker logs its arrival). LW_OPS_FIRST=1: start() first
 * listens on an ops port of its own (port 0, answers `ops`), as docs/gateway.md
 * suggests for per-worker metrics, before its main server; LW_HOLD_RELOAD=1 makes
 * a replacement (restarts > 0) wait there, between the two listens, until it gets
 * SIGUSR2; LW_RETURN_PORT=1: start() returns the main server's port;
 * LW_NO_LISTEN=1: start() returns at once, its server never listening.
 * LW_MODE_FILE (a path) is read at each start, as a deploy that changes between two:
 * `crash:<ms>` makes the worker throw (uncaught) that long after its start() returned,
 * a build that crash-loops; `slow:<ms>` makes start() wait that long before listening, then
 * serve; `slow-fail:<ms>` makes it wait that long, then throw. With a mode the worker logs
 * it, and its main port once it listens (port 0: a slot left without a worker gets a new one).
 */
const fs = require('node:fs');
const http = require('node:http');
const timers = require('node:timers');
const { setTimeout: sleep } = require('node:timers/promises');
const { closeListener, runWorkers } = require('@loadwise/gateway-plugin');

const env = process.env;
const opts = {
  workers: Number(env.LW_WORKERS ?? 2),
  restart: { initialDelayMs: 50, maxRestarts: Number(env.LW_MAX_RESTARTS ?? 5) },
  shutdownTimeoutMs: 10_000,
  start: async ({ id, restarts }) => {
    let ops;
    if (env.LW_OPS_FIRST) {
      ops = http.createServer((_req, res) => res.end('ops'));
      await new Promise((r) => ops.listen(0, '127.0.0.1', r));
      process.stderr.write(
        `worker ${id} (pid ${process.pid}) ops listening on ${ops.address().port}\n`,
      );
    }
    if (env.LW_HANG === 'all' || (env.LW_HANG === 'restart' && restarts > 0)) {
      process.stderr.write(`worker ${id} hangs in start()\n`);
      await new Promise(() => {});
    }
    const version = env.LW_VERSION_FILE ? fs.readFileSync(env.LW_VERSION_FILE, 'utf8').trim() : '-';
    process.stderr.write(`worker ${id} (pid ${process.pid}) runs ${version}\n`);
    const [mode, ms] = env.LW_MODE_FILE
      ? fs.readFileSync(env.LW_MODE_FILE, 'utf8').trim().split(':')
      : [];
    if (mode) process.stderr.write(`worker ${id} (pid ${process.pid}) mode ${mode} ${ms}\n`);
    if (mode === 'slow' || mode === 'slow-fail') await sleep(Number(ms));
    if (mode === 'slow-fail') throw new Error('start failed on purpose (slow-fail)');
    if (env.LW_HOLD_RELOAD && restarts > 0) {
      const go = new Promise((r) => process.once('SIGUSR2', r));
      process.stderr.write(`worker ${id} (pid ${process.pid}) holds before its main listen\n`);
      await go;
    }
    if (env.LW_NO_LISTEN) return { close: async () => {} };
    if (env.LW_START_DELAY_MS) await sleep(Number(env.LW_START_DELAY_MS));
    const server = http.createServer((req, res) => {
      const d = Number(/[?&]d=(\d+)/.exec(req.url)?.[1] ?? 0);
      // A slow request says it arrived, so a test can act while it is in flight.
      if (d > 0) process.stderr.write(`worker ${id} (pid ${process.pid}) got ${req.url}\n`);
      void sleep(d).then(() => res.end(`${id} ${process.pid} ${version}`));
    });
    await new Promise((r) => server.listen(Number(env.LW_PORT ?? 0), '127.0.0.1', r));
    if (env.LW_OPS_FIRST)
      process.stderr.write(
        `worker ${id} (pid ${process.pid}) start() returns (main port ${server.address().port})\n`,
      );
    if (mode)
      process.stderr.write(
        `worker ${id} (pid ${process.pid}) listening on ${server.address().port}\n`,
      );
    if (mode === 'crash')
      timers
        .setTimeout(() => {
          throw new Error('crash on purpose (the old code)');
        }, Number(ms))
        .unref();
    return {
      close: () => Promise.all([closeListener(server), ops && closeListener(ops)]).then(() => {}),
      ...(env.LW_RETURN_PORT ? { port: server.address().port } : {}),
    };
  },
};
if (env.LW_START_TIMEOUT_MS) opts.startTimeoutMs = Number(env.LW_START_TIMEOUT_MS);

void runWorkers(opts).then((pool) =>
  pool?.listening().then(
    (port) => process.stderr.write(`pool listening on ${port}\n`),
    () => undefined,
  ),
);
