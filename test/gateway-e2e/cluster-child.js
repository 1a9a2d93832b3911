/**
 * A pool of gateway workers (runWorkers, built from dist: `npm test` builds
 * first) for cluster-workers.test.ts. The test owns the broker and backends
 * and passes them in the environment: LW_BROKER_URL, LW_BACKENDS (JSON
 * [{ id, url }]), LW_PORT (0: the kernel's choice, which the primary logs as
 * `pool listening on <port>`), LW_WORKERS; LW_FAIL_START makes every start()
 * throw, LW_FAIL_RESTART every start but a slot's first, LW_MAX_RESTARTS
 * bounds restarts; LW_W2_FAIL_WHILE (a path) makes w2's start throw while that file
 * exists; LW_SLOW_START_MS makes start() wait that long after listening;
 * LW_SLOW_RESTART_MS makes every start but a slot's first wait that long before listening;
 * LW_SHUTDOWN_MS is the pool's shutdownTimeoutMs (default 10000). Each worker answers with
 * x-gateway-pid so the test can see which worker served a request.
 */
const fs = require('node:fs');
const http = require('node:http');
const { setTimeout: sleep } = require('node:timers/promises');
const express = require('express');
const { closeListener, loadBalance, runWorkers } = require('@loadwise/gateway-plugin');

const pool = runWorkers({
  workers: Number(process.env.LW_WORKERS),
  restart: { initialDelayMs: 50, maxRestarts: Number(process.env.LW_MAX_RESTARTS ?? 5) },
  shutdownTimeoutMs: Number(process.env.LW_SHUTDOWN_MS ?? 10000),
  start: async ({ id, restarts }) => {
    if (process.env.LW_FAIL_START) throw new Error('start failed on purpose');
    if (process.env.LW_FAIL_RESTART && restarts > 0) throw new Error('restart failed on purpose');
    if (id === 'w2' && process.env.LW_W2_FAIL_WHILE && fs.existsSync(process.env.LW_W2_FAIL_WHILE))
      throw new Error('w2 failed on purpose');
    const lb = loadBalance({
      backends: JSON.parse(process.env.LW_BACKENDS),
      broker: { url: process.env.LW_BROKER_URL, clientIdPrefix: `lw-${id}`, protocolVersion: 4 },
      // LW_HEALTH_CHECK: active checks on, so the warm-up also preconnects to the backends.
      healthCheck: process.env.LW_HEALTH_CHECK ? { path: '/' } : false,
      maxInFlightPerClient: false,
      // The workers share two cores with the test, its load and the other workers (a fork
      // starting is a stall of its own): event-loop shedding would measure the harness, and
      // a 503 from it counts as a failed request here (test/kit/gateway.ts says the same).
      overload: false,
    });
    const app = express();
    app.use((_req, res, next) => {
      res.setHeader('x-gateway-pid', String(process.pid));
      next();
    });
    app.use(lb);
    await lb.ready();
    const server = http.createServer(app);
    if (process.env.LW_SLOW_RESTART_MS && restarts > 0) {
      process.stderr.write(`worker ${id} restart ${restarts} warming up\n`);
      await sleep(Number(process.env.LW_SLOW_RESTART_MS));
    }
    await new Promise((r) => server.listen(Number(process.env.LW_PORT), '127.0.0.1', r));
    if (process.env.LW_SLOW_RESTART_MS && restarts > 0)
      process.stderr.write(`worker ${id} restart ${restarts} listening\n`);
    if (process.env.LW_SLOW_START_MS) {
      process.stderr.write(`worker ${id} listening, start() not done\n`);
      await sleep(Number(process.env.LW_SLOW_START_MS));
    }
    return {
      close: async () => {
        await Promise.all([closeListener(server), lb.close({ graceMs: 5000 })]);
        process.stderr.write(`worker ${id} closed its server and balancer\n`);
      },
    };
  },
});

// The primary says which port the pool listens on (LW_PORT=0: one the kernel chose).
void pool.then((p) =>
  p?.listening().then(
    (port) => process.stderr.write(`pool listening on ${port}\n`),
    () => undefined,
  ),
);
