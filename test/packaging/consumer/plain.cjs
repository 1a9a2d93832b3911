// Plain CommonJS JavaScript, no TypeScript: require() each package as the
// README shows and use it.
'use strict';
const { loadBalance } = require('@loadwise/gateway-plugin');
const { trackRequests, createAgent } = require('@loadwise/health-agent');
const { createEncoder, createDecoder } = require('@loadwise/protocol');

const encoded = createEncoder({ backendId: 'cjs-1', prefix: 'cjs' }).metrics({
  intervalMs: 1000,
  state: 'online',
  host: { cpuUtilization: 0.5, memoryUtilization: 0.25, memoryAvailableBytes: 1 },
  health: { verdict: 'up' },
});
const decoded = createDecoder({ prefix: 'cjs' }).decode(encoded.topic, encoded.payload);
const tracker = trackRequests({ concurrencyLimit: 2 });
const agent = createAgent({ backendId: 'cjs-1', queue: { source: 'tracker', tracker } });
const lb = loadBalance({ backends: [{ id: 'cjs-1', url: 'http://127.0.0.1:9' }] });
agent
  .sample()
  .then(async (sample) => {
    tracker.close();
    await lb.close();
    process.stdout.write(
      `${JSON.stringify({
        decoded: decoded.ok ? decoded.message.host.cpuUtilization : decoded.code,
        sampleQueue: sample.queue,
        middleware: typeof lb === 'function' && typeof lb.upgrade === 'function',
      })}\n`,
    );
  })
  .catch((err) => {
    process.stderr.write(`${err.stack}\n`);
    process.exit(1);
  });
