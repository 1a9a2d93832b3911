/**
 * A gateway (Express + loadBalance, built from dist: `npm test` builds first)
 * and its backend in a process of their own, for odd-requests.test.ts: a
 * request that crashes the gateway shows as this process exiting, not as a
 * dead jest worker. The backend records every request line its parser reads.
 * IPC: sends { type: 'ready', port }; answers { type: 'report' } with the
 * gateway's metrics text, its warnings and the backend's request lines.
 */
const http = require('node:http');
const express = require('express');
const { loadBalance } = require('@loadwise/gateway-plugin');

const lines = [];
const warnings = [];

const backend = http.createServer((req, res) => {
  lines.push(`${req.method} ${req.url}`);
  let bytes = 0;
  req.on('data', (c) => (bytes += c.length));
  req.on('end', () => {
    res.setHeader('content-type', 'application/json');
    res.end(JSON.stringify({ line: `${req.method} ${req.url}`, bytes, headers: req.headers }));
  });
});

backend.listen(0, '127.0.0.1', () => {
  const lb = loadBalance({
    backends: [{ id: 'b', url: `http://127.0.0.1:${backend.address().port}/base` }],
    overload: false,
    healthCheck: false,
    clientBodyTimeoutMs: 300,
    metricsPath: '/_lb/metrics',
    // pino-style calls pass (fields, msg): keep the sentence.
    logger: {
      info: () => {},
      warn: (m, msg) => warnings.push(msg ?? String(m)),
      error: (m, msg) => warnings.push(msg ?? String(m)),
    },
  });
  const app = express();
  app.use(lb);
  // The server settings docs/gateway.md recommends ("Slow and hostile clients").
  const server = http.createServer({ connectionsCheckingInterval: 2000 }, app);
  server.headersTimeout = 10000;
  server.requestTimeout = 60000;
  server.maxHeadersCount = 100;
  server.listen(0, '127.0.0.1', () => {
    process.send({ type: 'ready', port: server.address().port });
  });
  process.on('message', async (m) => {
    if (m.type === 'report') {
      const metrics = await lb.balancer.metrics.registry.metrics();
      process.send({ type: 'report', metrics, warnings, lines });
    }
  });
  process.on('disconnect', () => process.exit(0));
});
