/**
 * A backend in a process of its own, for loop-stall-latency.test.ts: it answers
 * while the test process (the gateway) stands still. GET /warm is answered in
 * 20 ms; GET /during is held until the parent sends SIGUSR2 (a signal: it
 * arrives while the parent's loop is blocked, an IPC message might not leave),
 * then answered 20 ms later. IPC: sends { type: 'ready', port }, then
 * { type: 'held', count } as each /during arrives. Exits with its parent.
 */
const http = require('node:http');
const { setTimeout } = require('node:timers');

const SERVICE_MS = 20;
const held = [];
let released = false;

const answer = (res) => setTimeout(() => res.end('ok'), SERVICE_MS);

const server = http.createServer((req, res) => {
  if (req.url !== '/during' || released) return answer(res);
  held.push(res);
  process.send({ type: 'held', count: held.length });
});

process.on('SIGUSR2', () => {
  released = true;
  for (const res of held.splice(0)) answer(res);
});
process.on('disconnect', () => process.exit(0));

server.listen(0, '127.0.0.1', () => process.send({ type: 'ready', port: server.address().port }));
