/**
 * A gateway for gateway-resources.test.ts, run under `prlimit --nofile`: one backend
 * (argv[2]), no health checks, no warm-up. Reads commands on stdin: `exhaust` opens
 * /dev/null until the process has no descriptor left (as an idle-connection flood leaves
 * it), `free` closes them. Prints {"event":"listening","port"}, {"event":"exhausted"},
 * {"event":"freed"} and every ejection and restore as {"event":"balancer","name"}.
 */
const fs = require('node:fs');
const http = require('node:http');
const { createInterface } = require('node:readline');
const express = require('express');
const { loadBalance } = require('@loadwise/gateway-plugin');

const print = (o) => console.log(JSON.stringify(o));
const lb = loadBalance({
  backends: [{ id: 'b', url: process.argv[2] }],
  healthCheck: false,
  warmUp: false,
  logger: { info() {}, warn() {}, error() {} },
});
for (const name of ['backend-ejected', 'backend-restored']) {
  lb.balancer.on(name, () => print({ event: 'balancer', name }));
}
const app = express();
app.use(lb);
const server = http.createServer(app);
const held = [];
createInterface({ input: process.stdin }).on('line', (line) => {
  if (line === 'exhaust') {
    try {
      for (;;) held.push(fs.openSync('/dev/null', 'r'));
    } catch {
      print({ event: 'exhausted', held: held.length });
    }
  } else if (line === 'free') {
    for (const fd of held.splice(0)) fs.closeSync(fd);
    print({ event: 'freed' });
  } else if (line === 'stop') {
    server.close();
    server.closeAllConnections();
    void lb.close({ graceMs: 0 });
    process.stdin.destroy();
  }
});
server.listen(0, '127.0.0.1', () => print({ event: 'listening', port: server.address().port }));
