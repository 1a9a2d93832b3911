/**
 * The README's "Use it in your gateway" gateway (built from dist: `npm test`
 * builds first) for readme-shutdown.test.ts: an Express app with its own
 * middleware, the balancer on '/api', WebSockets through routeUpgrades, and
 * the README's SIGTERM handler, taken from README.md itself and run as it is
 * written (no process.exit after it: the process must end by itself). An
 * embedded broker stands in for broker.internal, so the broker connection and
 * the broker both have to be released for the process to end.
 * argv: <backend url>. Prints {"event":"listening","port"} once it listens,
 * and every balancer event as {"event":"balancer","name"} (none is expected
 * once close() resolved).
 */
const fs = require('node:fs');
const http = require('node:http');
const path = require('node:path');
const express = require('express');
const { loadBalance, routeUpgrades } = require('@loadwise/gateway-plugin');

const lb = loadBalance({
  backends: [{ id: 'api-1', url: process.argv[2] }],
  broker: { embedded: true },
  statusPath: '/_lb/status',
  statusToken: 'readme-ops-token',
});
for (const name of ['backend-down', 'backend-ejected', 'broker-lost', 'broker-connected']) {
  lb.balancer.on(name, () => console.log(JSON.stringify({ event: 'balancer', name })));
}

const myAuth = (_req, _res, next) => next();
const app = express();
app.use(myAuth);
app.use('/api', lb);
const server = http.createServer(app);
server.on('upgrade', routeUpgrades(app));

const readme = fs.readFileSync(path.resolve(__dirname, '../../README.md'), 'utf8');
const recipe = /^process\.on\('SIGTERM', async \(\) => \{\n[\s\S]*?\n\}\);$/m.exec(readme);
if (!recipe) throw new Error("README.md has no process.on('SIGTERM', async () => { ... }); block");
new Function('server', 'lb', recipe[0])(server, lb);

// As the README: listen once lb.ready() has resolved (broker connected, warm-up done).
void lb.ready().then(() =>
  server.listen(0, '127.0.0.1', () => {
    console.log(JSON.stringify({ event: 'listening', port: server.address().port }));
  }),
);
