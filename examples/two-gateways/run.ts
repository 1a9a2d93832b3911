/**
 * Two gateways, one broker, a round-robin TCP front:
 *
 *   npm run build
 *   node examples/dist/two-gateways/run.js                 # front on :8080, embedded broker
 *   node examples/dist/two-gateways/run.js --port 9090 --broker mqtt://127.0.0.1:1883
 *
 * Without --broker, an embedded aedes broker in this process stands in for
 * the shared one. Ctrl-C stops everything.
 */
import { startEmbeddedBroker, type EmbeddedBroker } from '@loadwise/gateway-plugin';
import { startCluster, type Cluster } from './cluster';
import { integerArg, parseFlags, type Usage } from '../lib/args';
import { exitIfPortTaken } from '../lib/port';
import { redactUrl } from '@loadwise/protocol';

const OPTIONS = {
  port: { type: 'string', default: '8080' },
  broker: { type: 'string' },
  prefix: { type: 'string', default: 'loadwise' },
} as const;

const USAGE: Usage<typeof OPTIONS> = {
  usage:
    'node examples/dist/two-gateways/run.js [--port 8080] [--broker mqtt://host:1883] [--prefix loadwise]',
  flags: {
    port: ['<n>', 'the round-robin TCP front in front of both gateways (default 8080)'],
    broker: ['<url>', 'an MQTT broker to use instead of the embedded one'],
    prefix: ['<prefix>', 'the topic prefix (default loadwise)'],
  },
};

async function main(): Promise<void> {
  const { values } = parseFlags('two-gateways', OPTIONS, undefined, USAGE);
  const port = integerArg('two-gateways', 'port', values.port, 0, 65535);
  await exitIfPortTaken('two-gateways', port);
  // Ctrl-C from the first moment: while it starts, the start-up stops and cleans up what
  // it started (the run's key, pid files); the handlers came after it, and Node's default
  // ended the process with them left in /tmp.
  const starting = new AbortController();
  let stopping = false;
  // Set once it runs: stop() then closes it.
  const running: { close?: () => Promise<void> } = {};
  let embedded: EmbeddedBroker | undefined;
  const stop = (): void => {
    if (stopping) return;
    stopping = true;
    process.stdout.write('stopping...\n');
    if (!running.close) return starting.abort(new Error('stopped while starting'));
    void running
      .close()
      .then(() => embedded?.close())
      .then(() => process.exit(0));
  };
  process.on('SIGINT', stop);
  process.on('SIGTERM', stop);
  let cluster: Cluster;
  try {
    const brokerUrl = values.broker ?? (embedded = await startEmbeddedBroker()).url;
    cluster = await startCluster({
      brokerUrl,
      prefix: values.prefix,
      frontPort: port,
      signal: starting.signal,
    });
  } catch (err) {
    if (!stopping) throw err;
    await embedded?.close();
    process.exit(0);
  }
  running.close = cluster.close;
  const brokerUrl = values.broker ?? embedded!.url;
  const lines = [
    // Credentials in --broker are not printed (as the gateways' own log lines do).
    `broker   ${redactUrl(brokerUrl)}${embedded ? ' (embedded aedes)' : ''}, topic prefix ${values.prefix}`,
    ...cluster.backends.map(
      (b) => `backend  ${b.id} ${b.url} (agent pid ${cluster.agents.get(b.id)!.pid})`,
    ),
    ...cluster.gateways.map((g) => `gateway  ${g.id} ${g.url} (pid ${g.process.pid})`),
    `front    ${cluster.url} -> ${cluster.gateways.map((g) => g.id).join(', ')}, round robin per connection`,
    '',
    `  curl -si ${cluster.url}/hello | grep -i '^x-'     # x-loadwise-gateway: which gateway; x-served-by: which backend`,
    ...cluster.gateways.map(
      (g) => `  npx loadwise status --url ${g.url}/_lb/status --watch   # ${g.id}'s view`,
    ),
    `  npx loadwise-agent drain --pid ${cluster.agents.get(cluster.backends[0]!.id)!.pid}   # both gateways stop using ${cluster.backends[0]!.id}`,
    '',
  ];
  process.stdout.write(`${lines.join('\n')}\n`);
}

main().catch((err: unknown) => {
  // Taken between the check and the front's listen: one line, as for the check.
  const e = err as NodeJS.ErrnoException;
  process.stderr.write(
    `two-gateways: ${e.code === 'EADDRINUSE' ? e.message : (e.stack ?? String(err))}\n`,
  );
  process.exit(1);
});
