/**
 * For cluster-embedded-broker.test.ts: a primary forks one worker, which builds
 * a balancer with an embedded broker and with a broker URL, and starts an
 * embedded broker itself (from dist), and sends back what each gave: the
 * error's code or 'built'. The primary prints it.
 */
const cluster = require('node:cluster');
if (cluster.isPrimary) {
  const worker = cluster.fork();
  worker.on('message', (m) => {
    process.stdout.write(JSON.stringify(m));
    worker.kill();
  });
} else {
  const { loadBalance, startEmbeddedBroker } = require('@loadwise/gateway-plugin');
  const backends = [{ id: 'b1', url: 'http://127.0.0.1:9' }];
  const tryIt = async (broker) => {
    try {
      const lb = loadBalance({ backends, broker });
      await lb.close();
      return 'built';
    } catch (err) {
      return err.code;
    }
  };
  (async () => {
    const embedded = await tryIt({ embedded: true });
    // A broker URL is what a worker is given instead.
    const url = await tryIt('mqtt://127.0.0.1:9');
    let started;
    try {
      await (await startEmbeddedBroker()).close();
      started = 'built';
    } catch (err) {
      started = err.code;
    }
    process.send({ embedded, url, started });
  })();
}
