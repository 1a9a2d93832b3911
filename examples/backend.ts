/**
 * A small backend for demos and tests: an Express app whose capacity is set by
 * two numbers, worker slots and service time per request. It serves with a
 * timer rather than burning CPU, so capacity = slots / service time
 * (8 slots x 10 ms = 800 req/s) and several of them fit on a 2-core machine.
 * It mounts the loadwise tracker, so its agent reports real in-flight and
 * queued counts.
 *
 *   node examples/dist/backend.js --id b1 --slots 8 --service-ms 10 [--port 0]
 *        [--host 127.0.0.1] [--max-queue 1024] [--pid-file f] [--exit-with-parent]
 *   node examples/dist/backend.js --help
 *
 * Prints one JSON line on stdout once listening: {"event":"listening","id","port","pid"}.
 * Admin routes (loopback only, outside the tracker so they never queue):
 *   POST /admin/config {"serviceMs":50}       change the service time (degrade / recover)
 *   POST /admin/config {"failStatus":500}     answer every request with this status (0: off)
 *   POST /admin/config {"hiddenInFlight":6}   keep 6 requests of its own running against itself:
 *                                             load the gateway does not see (another client)
 *   GET  /health                              200 "ok" (the agent's probe)
 * Behind the tracker:
 *   POST /echo (JSON)                         {"backend","body","contentLength"}: what arrived
 *   WebSocket /ws                             echoes each message as "<id>: <message>"
 */
import { writeFileSync } from 'node:fs';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import express from 'express';
import { WebSocketServer } from 'ws';
import { trackRequests } from '@loadwise/health-agent';
import { integerArg, parseFlags, type Usage } from './lib/args';

export const STATS_PATH = '/.well-known/loadwise/stats';

interface BackendConfig {
  serviceMs: number;
  failStatus: number;
  hiddenInFlight: number;
}

interface Args {
  id: string;
  port: number;
  host: string;
  slots: number;
  maxQueue: number;
  exitWithParent: boolean;
  pidFile: string | undefined;
  config: BackendConfig;
}

const OPTIONS = {
  id: { type: 'string', default: 'backend' },
  port: { type: 'string', default: '0' },
  host: { type: 'string', default: '127.0.0.1' },
  slots: { type: 'string', default: '8' },
  'service-ms': { type: 'string', default: '10' },
  'max-queue': { type: 'string', default: '1024' },
  'exit-with-parent': { type: 'boolean', default: false },
  'pid-file': { type: 'string' },
} as const;

const USAGE: Usage<typeof OPTIONS> = {
  usage:
    'node examples/dist/backend.js [--id b1] [--slots 8] [--service-ms 10] [--port 0] [--host 127.0.0.1]\n' +
    '         [--max-queue 1024] [--pid-file <file>] [--exit-with-parent]',
  flags: {
    id: ['<id>', 'backend id, in x-served-by and its answers (default backend)'],
    port: ['<n>', 'port to listen on (default 0: any free port)'],
    host: ['<address>', 'address to listen on (default 127.0.0.1)'],
    slots: [
      '<n>',
      'worker slots: requests served at once, the concurrency limit (1..100000, default 8)',
    ],
    'service-ms': ['<ms>', 'service time of every request (0..3600000, default 10)'],
    'max-queue': [
      '<n>',
      'requests waiting for a slot beyond this are answered 503 at once (0..10000000, default 1024)',
    ],
    'pid-file': [
      '<file>',
      "write this process's PID here once listening (an agent's --service-pid-file)",
    ],
    'exit-with-parent': [
      '',
      'stop when stdin closes: the parent holding its pipe is gone, even by SIGKILL',
    ],
  },
  notes: [
    '',
    'Prints {"event":"listening","id","port","pid"} on stdout once listening.',
    'Admin routes (loopback only): POST /admin/config {"serviceMs"|"failStatus"|"hiddenInFlight": n}.',
  ],
};

function parse(): Args {
  const { values } = parseFlags('backend', OPTIONS, undefined, USAGE);
  const int = (name: string, text: string, min: number, max: number): number =>
    integerArg('backend', name, text, min, max);
  return {
    id: values.id,
    port: int('port', values.port, 0, 65535),
    host: values.host,
    slots: int('slots', values.slots, 1, 100_000),
    maxQueue: int('max-queue', values['max-queue'], 0, 10_000_000),
    exitWithParent: values['exit-with-parent'],
    pidFile: values['pid-file'],
    config: {
      serviceMs: int('service-ms', values['service-ms'], 0, 3_600_000),
      failStatus: 0,
      hiddenInFlight: 0,
    },
  };
}

function isLoopback(address: string | undefined): boolean {
  return address === '127.0.0.1' || address === '::1' || address === '::ffff:127.0.0.1';
}

function main(): void {
  const args = parse();
  const config = args.config;
  const app = express();
  const tracker = trackRequests({
    concurrencyLimit: args.slots,
    maxQueue: args.maxQueue,
    exposePath: STATS_PATH,
  });

  app.get('/health', (_req, res) => {
    res.type('text/plain').send('ok');
  });

  app.use('/admin', (req, res, next) => {
    // Loopback alone is not the operator: a gateway on this host connects from loopback
    // too, and anyone who reached it changed this backend for every gateway (a review
    // sent POST /admin/config {"failStatus":500} through one). A proxied request says so.
    const proxied =
      req.headers['x-forwarded-for'] !== undefined ||
      req.headers['forwarded'] !== undefined ||
      req.headers['via'] !== undefined;
    if (!isLoopback(req.socket.remoteAddress) || proxied) res.status(403).end();
    else next();
  });
  app.post('/admin/config', express.json(), (req, res) => {
    const body = (req.body ?? {}) as Partial<Record<keyof BackendConfig, unknown>>;
    for (const key of ['serviceMs', 'failStatus', 'hiddenInFlight'] as const) {
      const v = body[key];
      if (v === undefined) continue;
      if (typeof v !== 'number' || !Number.isInteger(v) || v < 0 || v > 100_000) {
        res.status(400).json({ error: `${key} must be an integer 0..100000` });
        return;
      }
      config[key] = v;
    }
    setHiddenLoad(config.hiddenInFlight);
    res.json(config);
  });
  app.get('/admin/config', (_req, res) => {
    res.json(config);
  });

  app.use(tracker);
  app.post('/echo', express.json(), (req, res) => {
    res.setHeader('x-served-by', args.id);
    res.json({
      backend: args.id,
      body: req.body as unknown,
      contentLength: req.headers['content-length'] ?? null,
    });
  });
  app.use((req, res) => {
    setTimeout(() => {
      res.setHeader('x-served-by', args.id);
      if (config.failStatus !== 0) {
        res.status(config.failStatus).json({ backend: args.id, error: 'configured failure' });
        return;
      }
      res.json({ backend: args.id, path: req.path });
    }, config.serviceMs);
  });

  const server = http.createServer(app);
  const wss = new WebSocketServer({ server, path: '/ws' });
  wss.on('connection', (socket) => {
    socket.on('message', (data) => socket.send(`${args.id}: ${String(data)}`));
  });
  // Keep-alive longer than a gateway's idle sockets, so the gateway closes first (no reset races).
  server.keepAliveTimeout = 65_000;

  // Hidden load: loops of requests this process sends to itself through the tracker.
  const selfAgent = new http.Agent({ keepAlive: true, maxSockets: 1000 });
  let hiddenRunning = 0;
  let stopping = false;
  const hiddenLoop = (): void => {
    if (stopping || hiddenRunning > config.hiddenInFlight) {
      hiddenRunning--;
      return;
    }
    const port = (server.address() as AddressInfo).port;
    const req = http.get({ host: '127.0.0.1', port, path: '/hidden', agent: selfAgent }, (res) => {
      res.resume();
      res.on('end', hiddenLoop);
    });
    req.on('error', () => {
      // The server is closing; stop this loop.
      hiddenRunning--;
    });
  };
  function setHiddenLoad(target: number): void {
    while (hiddenRunning < target) {
      hiddenRunning++;
      hiddenLoop();
    }
    // Loops above the target end themselves after their current request.
  }

  const shutdown = (): void => {
    if (stopping) return;
    stopping = true;
    tracker.close();
    selfAgent.destroy();
    for (const c of wss.clients) c.terminate();
    server.close(() => process.exit(0));
    // In-flight requests get one service time plus a margin, then connections are cut.
    setTimeout(() => server.closeAllConnections(), config.serviceMs + 500).unref();
    server.closeIdleConnections();
  };
  process.on('SIGTERM', shutdown);
  process.on('SIGINT', shutdown);
  if (args.exitWithParent) {
    // The parent holds our stdin pipe: when it goes away (even by SIGKILL), so do we.
    process.stdin.on('end', shutdown);
    process.stdin.on('error', shutdown);
    process.stdin.resume();
  }

  server.listen(args.port, args.host, () => {
    // Written once listening, so an agent watching it (--service-pid-file) follows a restart.
    if (args.pidFile) writeFileSync(args.pidFile, `${process.pid}\n`);
    const port = (server.address() as AddressInfo).port;
    process.stdout.write(
      `${JSON.stringify({ event: 'listening', id: args.id, port, pid: process.pid })}\n`,
    );
  });
  server.on('error', (err) => {
    process.stderr.write(`backend ${args.id}: ${err.message}\n`);
    process.exit(1);
  });
}

if (require.main === module) main();
